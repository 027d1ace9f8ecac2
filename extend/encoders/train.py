"""Contrastive fine-tuning of an extended encoder on long pairs (InfoNCE with in-batch negatives).

All text comes from the standard-library files the evaluation never reads (`stdlib_training_files`). The
pairs of one batch share a haystack of up to `length` tokens; each document is that haystack with one other
line of the corpus inserted at a random line boundary, and its query is that line (see `make_batch`).
Every other document of the batch is a negative that differs only in the inserted line, so the model learns
to keep a short passage from anywhere in a long input, the skill passkey and needle retrieval measure,
without seeing their templates. Each step uses one length, cycling through `lengths`, so short inputs keep working
while long ones are learned.

Only parameters whose names contain one of `trainable` are updated (e.g. the position table alone); the
rest are frozen so that a few minutes of CPU training cannot move what the base learned elsewhere.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from extend.encoders.encode import Reader, forward
from extend.encoders.tasks import haystack_lines, line_window, token_ids, with_specials
from extend.training.steps import Schedule, StepLoss, Trainable, fit


@dataclass
class Pair:
    query: list[int]
    doc: list[int]


def make_batch(tokenizer, lines: list[str], length: int, size: int, rng: random.Random, min_query_tokens: int,
               prefixes: tuple[str, str] = ("", "")) -> list[Pair]:
    """`size` pairs that share one haystack: document i is the haystack with line i inserted at its own
    random line boundary, query i is line i. The documents differ only in that line, so a query can find its
    document only if the embedding keeps a short passage from anywhere in a long input (hard negatives)."""
    query_prefix, doc_prefix = token_ids(tokenizer, prefixes[0]), token_ids(tokenizer, prefixes[1])
    needles: list[list[int]] = []
    while len(needles) < size:
        ids = token_ids(tokenizer, lines[rng.randrange(len(lines))])
        if min_query_tokens <= len(ids) <= 48 and ids not in needles:
            needles.append(ids)
    budget = length - len(with_specials(tokenizer, [])) - len(doc_prefix) - max(map(len, needles))
    hay_lines = line_window(tokenizer, lines, rng.randrange(len(lines)), budget)
    bounds = [0]
    for ids in hay_lines:
        bounds.append(bounds[-1] + len(ids))
    hay = [t for ids in hay_lines for t in ids][:budget]
    bounds = [b for b in bounds if b <= budget]
    pairs = []
    for needle in needles:
        cut = rng.choice(bounds)
        pairs.append(Pair(with_specials(tokenizer, query_prefix + needle),
                          with_specials(tokenizer, doc_prefix + hay[:cut] + needle + hay[cut:])))
    return pairs


@dataclass
class KeepShort:
    """A second loss that holds the embeddings of short inputs (at most `length` tokens) where the original
    model put them: `weight` x mean cosine distance between the trained model's and `teacher`'s embedding of
    the same text. The texts are windows of the training lines (never the evaluation sets)."""

    teacher: PreTrainedModel
    reader: Reader
    weight: float
    length: int


def short_texts(tokenizer, lines: list[str], count: int, max_tokens: int, rng: random.Random,
                prefixes: tuple[str, str]) -> list[list[int]]:
    """`count` windows of consecutive lines, each cut to a random length of 8..max_tokens tokens (specials
    included), alternately with the query and the passage prefix."""
    texts = []
    for i in range(count):
        prefix = token_ids(tokenizer, prefixes[i % 2])
        budget = rng.randint(8, max_tokens) - len(with_specials(tokenizer, [])) - len(prefix)
        window = [t for ids in line_window(tokenizer, lines, rng.randrange(len(lines)), budget) for t in ids]
        texts.append(with_specials(tokenizer, prefix + window[:max(budget, 1)]))
    return texts


def info_nce(queries: torch.Tensor, docs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of each query against all documents of the batch; its own document is the target."""
    logits = queries @ docs.T / temperature
    return F.cross_entropy(logits, torch.arange(len(queries), device=logits.device))


def fine_tune(model: PreTrainedModel, tokenizer, reader: Reader, *, steps: int, batch_size: int,
              lengths: list[int], learning_rate: float, temperature: float, trainable: list[str],
              min_query_tokens: int, seed: int, pooling: str, prefixes: tuple[str, str] = ("", ""),
              log_every: int = 10, frozen_rows: dict[str, torch.Tensor] | None = None,
              keep_short: KeepShort | None = None) -> list[dict]:
    """Train `model` in place; returns one log record per step (step, length, loss, keep: the short-input
    distance when `keep_short` is given, seconds). `frozen_rows`: see `Trainable`."""
    rng = random.Random(seed)
    lines = haystack_lines("training")
    pad_id = tokenizer.pad_token_id

    def embed(texts: list[list[int]], encoder: PreTrainedModel = model, read: Reader = reader) -> torch.Tensor:
        return forward(encoder, texts, read, pad_id, pooling, normalize=True)

    def batch(length: int) -> list[Pair]:
        return make_batch(tokenizer, lines, length, batch_size, rng, min_query_tokens, prefixes)

    def loss(pairs: list[Pair]) -> StepLoss:
        contrastive = info_nce(embed([p.query for p in pairs]), embed([p.doc for p in pairs]), temperature)
        if keep_short is None:
            return StepLoss(contrastive, {"loss": round(contrastive.item(), 4)})
        texts = short_texts(tokenizer, lines, batch_size, keep_short.length, rng, prefixes)
        with torch.no_grad():
            target = embed(texts, keep_short.teacher, keep_short.reader)
        drift = (1 - (embed(texts) * target).sum(-1)).mean()
        return StepLoss(contrastive + keep_short.weight * drift,
                        {"loss": round(contrastive.item(), 4), "keep": round(drift.item(), 5)})

    # Eval mode on purpose (train_mode=False): dropout makes CPU attention fall back to a kernel ~6x slower,
    # and a few hundred steps on a few tensors gain nothing from it.
    return fit(model, Trainable(trainable, "encoder.train.trainable", "'position_embeddings'", frozen_rows),
               Schedule("length", lengths), batch, loss, steps=steps, learning_rate=learning_rate, seed=seed,
               train_mode=False, log_every=log_every)
