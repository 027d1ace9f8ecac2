"""Tiny, offline stand-ins for evaluation tests: a BPE tokenizer that splits digits, a tiny random
checkpoint folder, and a model that answers by copying from its prompt."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationMixin, LlamaConfig, PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerFast
from transformers.modeling_outputs import CausalLMOutput

from extend.models import build_random
from extend.tasks import synthetic


class _WordCounter:
    """Counts whitespace words: enough to size the corpus the test tokenizer is trained on."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[str]:
        return text.split()


def training_corpus() -> list[str]:
    items = []
    for task in synthetic.TASKS:
        items += synthetic.generate(task, _WordCounter(), [120], 3, seed=99, depths=[0.5])
    return [i.prompt + i.answer for i in items]


def make_tokenizer(eos: bool = True) -> PreTrainedTokenizerFast:
    """A ~300-token BPE over the synthetic tasks' text; digits are single tokens, spaces survive decoding."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(prepend_scheme="never"), pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Metaspace(prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=list(string.printable), show_progress=False)
    tok.train_from_iterator(training_corpus(), trainer)
    special = {"bos_token": "<s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    if eos:
        special["eos_token"] = "</s>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def tiny_config(vocab_size: int, max_positions: int = 256) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                       tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def save_tiny_checkpoint(path: Path, tokenizer: PreTrainedTokenizerFast, max_positions: int = 256) -> Path:
    model = build_random(tiny_config(len(tokenizer), max_positions), seed=0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class CopierConfig(PreTrainedConfig):
    model_type = "extend_test_copier"

    def __init__(self, vocab_size: int = 300, max_position_embeddings: int = 4096, **kwargs):
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        super().__init__(**kwargs)


class Copier(PreTrainedModel, GenerationMixin):
    """A perfect copier, the ideal a long-context model approaches: at every step it finds the longest
    earlier occurrence of the text's ending and predicts the token that followed it (an induction head
    with unbounded context). It reads its whole input each step, so it runs without a KV cache."""

    config_class = CopierConfig
    main_input_name = "input_ids"

    def __init__(self, config: CopierConfig):
        super().__init__(config)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a parameter, so .device and .parameters() work
        self.generation_config.use_cache = False
        self.post_init()

    @staticmethod
    def _next(tokens: list[int]) -> int | None:
        best, best_len = None, 0
        n = len(tokens)
        for end in range(n - 1):  # candidate: tokens[..end] matches the suffix; predict tokens[end + 1]
            k = 0
            while k <= end and tokens[end - k] == tokens[n - 1 - k]:
                k += 1
            if k > best_len:
                best, best_len = tokens[end + 1], k
        return best

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> CausalLMOutput:
        logits = torch.zeros(*input_ids.shape, self.config.vocab_size)
        for row in range(input_ids.shape[0]):
            ids = input_ids[row]
            if attention_mask is not None:
                ids = ids[attention_mask[row].bool()]
            nxt = self._next(ids.tolist())
            if nxt is not None:
                logits[row, -1, nxt] = 10.0
        return CausalLMOutput(logits=logits + self.anchor)


def compose_cfg(*overrides: str):
    """The composed config exactly as `python -m extend.eval` would build it (typed)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from extend.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return OmegaConf.to_object(compose("config", overrides=list(overrides)))
