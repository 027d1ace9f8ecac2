"""Perplexity vs length: sliding windows over held-out long documents.

For a window length L and stride S (default S = L), windows start at 0, S, 2S, ... inside each document
long enough for one; the first window of a document scores its L-1 predictions, every later one only
the last min(S, L-1) tokens, those the previous window did not reach, so no token is scored twice and
each gets as much context as the window gives (with S = L, a window's first token goes unscored).
With eval.perplexity.tokens_per_document every length scores exactly the same tokens instead: the first N
tokens of each document, all of them (see make_windows' cover_end).
Perplexity at L = exp(total negative log-likelihood / scored tokens). Logits are computed in chunks from
the decoder's hidden states, so a 16k window never materialises 16k x vocab logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from extend.config import ConfigError, EvalConfig
from extend.eval.registry import register
from extend.eval.texts import load_documents
from extend.models.placement import input_device

# Positions turned into logits at once: bounds memory to CHUNK x vocab floats.
LOGIT_CHUNK = 1024


@dataclass(frozen=True)
class Window:
    input_ids: list[int]
    # Predictions of targets at index >= first_target (within the window) are scored.
    first_target: int


def make_windows(documents: list[list[int]], length: int, stride: int, max_windows: int | None,
                 cover_end: bool = False) -> list[Window]:
    """Windows of `length` at `stride` from each document's start. With `cover_end`, windows overlap by at
    least one token (so no window's first token goes unscored) and a document's tail that no window reached
    gets one more window, right-aligned with the document's end, scoring only that tail: then every token
    but each document's first is scored exactly once, at any length."""
    if cover_end:
        stride = min(stride, length - 1)
    windows: list[Window] = []
    for doc in documents:
        last = 0  # the last token index scored so far in this document
        for start in range(0, len(doc) - length + 1, stride):
            # A window's first token has no prediction inside the window, whatever the stride.
            first_target = 1 if start == 0 else max(1, length - stride)
            windows.append(Window(doc[start:start + length], first_target))
            last = start + length - 1
            if len(windows) == max_windows:
                return windows
        if cover_end and last and last < len(doc) - 1:
            windows.append(Window(doc[len(doc) - length:], length - (len(doc) - 1 - last)))
            if len(windows) == max_windows:
                return windows
    return windows


@torch.inference_mode()
def window_nll(model: PreTrainedModel, batch: torch.Tensor, first_target: list[int]) -> tuple[float, int]:
    """Summed negative log-likelihood (float64) and number of scored targets for same-length windows."""
    hidden = model.get_decoder()(input_ids=batch, use_cache=False).last_hidden_state
    head = model.get_output_embeddings()
    total, count = 0.0, 0
    for row, first in enumerate(first_target):
        # Position p predicts token p + 1; targets first..L-1 come from positions first-1..L-2.
        for a in range(first - 1, batch.shape[1] - 1, LOGIT_CHUNK):
            b = min(a + LOGIT_CHUNK, batch.shape[1] - 1)
            logits = head(hidden[row, a:b]).float()
            # On a model spread over GPUs the head may sit on another device than the inputs.
            targets = batch[row, a + 1:b + 1].to(logits.device)
            total += F.cross_entropy(logits, targets, reduction="sum").double().item()
            count += b - a
    return total, count


class PerplexityTask:
    name = "perplexity"
    metric = "perplexity"

    def prepare(self, tokenizer: PreTrainedTokenizerBase, cfg: EvalConfig) -> dict[int, list[Window]]:
        pcfg = cfg.perplexity
        docs = [tokenizer.encode(text, add_special_tokens=False) for text in load_documents(pcfg)]
        max_windows = min(pcfg.max_windows, cfg.limit) if cfg.limit is not None else pcfg.max_windows
        same_tokens = pcfg.tokens_per_document
        if same_tokens is not None:
            docs = [d[:same_tokens] for d in docs if len(d) >= same_tokens]
            if not docs:
                raise ConfigError([f"eval.perplexity.tokens_per_document={same_tokens}: no document from "
                                   f"eval.perplexity.source={pcfg.source} is that long; lower it"])
        problems, windows = [], {}
        for length in cfg.lengths:
            stride = pcfg.stride or length
            if not 0 < stride <= length:
                problems.append(f"eval.perplexity.stride={pcfg.stride} must be in [1, {length}] for length {length}")
                continue
            if same_tokens is not None and length > same_tokens:
                problems.append(f"eval.perplexity.tokens_per_document={same_tokens} is below eval length {length}; "
                                "raise it to at least the longest length")
                continue
            windows[length] = make_windows(docs, length, stride, max_windows, cover_end=same_tokens is not None)
            if same_tokens is not None and cfg.limit is None and len(windows[length]) == max_windows \
                    and len(make_windows(docs, length, stride, None, cover_end=True)) > max_windows:
                problems.append(f"perplexity at length {length} needs more windows than eval.perplexity.max_windows="
                                f"{pcfg.max_windows} to score the same tokens as the other lengths; raise it or lower "
                                "eval.perplexity.tokens_per_document / max_documents")
                continue
            if not windows[length]:
                longest = max((len(d) for d in docs), default=0)
                problems.append(
                    f"perplexity at length {length}: no document from eval.perplexity.source={pcfg.source} is that "
                    f"long (longest: {longest} tokens); use longer documents or shorter eval.lengths")
        if problems:
            raise ConfigError(problems)
        return windows

    def longest(self, prepared: dict[int, list[Window]]) -> int:
        return max(prepared)

    def run(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prepared: dict[int, list[Window]],
            cfg: EvalConfig, served_length: int) -> dict[str, Any]:
        device = input_device(model)
        by_length = {}
        for length, windows in tqdm(prepared.items(), desc="perplexity", leave=False):
            total, count = 0.0, 0
            for i in range(0, len(windows), cfg.batch_size):
                chunk = windows[i:i + cfg.batch_size]
                batch = torch.tensor([w.input_ids for w in chunk], device=device)
                nll, n = window_nll(model, batch, [w.first_target for w in chunk])
                total, count = total + nll, count + n
            by_length[str(length)] = {"value": math.exp(total / count), "nll": total / count, "tokens": count,
                                      "windows": len(windows), "length": length}
        return {"metric": self.metric, "by_length": by_length}


register(PerplexityTask())
