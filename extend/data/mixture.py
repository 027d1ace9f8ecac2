"""Which documents a stage draws from each source: mixture weights and length upsampling.

Semantics (reported in the manifest):
- `weight` is a sampling proportion of tokens: source s supplies weight_s / sum(weights) of each stage's
  tokens, whatever its size. How often its documents repeat follows from that: the repeat factor
  (tokens drawn / unique tokens) is reported per source, not configured.
- `upsample` reshapes lengths inside a source: a document is drawn with probability proportional to its
  length bucket's factor (with replacement), so long documents appear more often while the source's
  token share stays its weight. This is the per-source length upsampling of Llama 2 Long / EasyContext.
"""

from __future__ import annotations

import zlib

import numpy as np

from extend.data.tokenize import TokenizedSource


def doc_factors(lengths: np.ndarray, upsample: dict[int, float]) -> np.ndarray:
    """Each document's upsampling factor: that of the largest bucket start <= its length (1 below all)."""
    factors = np.ones(len(lengths), dtype=np.float64)
    for min_length in sorted(upsample):
        factors[lengths >= min_length] = upsample[min_length]
    return factors


def token_quotas(weights: dict[str, float], total: int) -> dict[str, int]:
    """Split `total` tokens by weight, exactly (largest remainder), in the given order."""
    wsum = sum(weights.values())
    exact = {name: total * w / wsum for name, w in weights.items()}
    quotas = {name: int(x) for name, x in exact.items()}
    by_remainder = sorted(weights, key=lambda n: (-(exact[n] - quotas[n]), list(weights).index(n)))
    for name in by_remainder[: total - sum(quotas.values())]:
        quotas[name] += 1
    return quotas


def source_rng(seed: int, stage: int, name: str) -> np.random.Generator:
    """Draws of one source in one stage depend on the seed, the stage and the source's name only, so adding
    a source leaves the others' draws unchanged."""
    return np.random.default_rng([seed, stage, zlib.crc32(name.encode())])


def draw_documents(lengths: np.ndarray, factors: np.ndarray, quota: int, rng: np.random.Generator) -> np.ndarray:
    """Document indices drawn with probability proportional to `factors` until they hold >= quota tokens."""
    p = factors / factors.sum()
    mean_length = float((p * lengths).sum())
    drawn, got = [], 0
    while got < quota:
        # Draw in blocks a little larger than expected; only the prefix reaching the quota is kept.
        block = rng.choice(len(lengths), size=int((quota - got) / mean_length * 1.1) + 8, p=p)
        cumulative = got + np.cumsum(lengths[block])
        stop = int(np.searchsorted(cumulative, quota))
        drawn.append(block[: stop + 1])
        got = int(cumulative[min(stop, len(block) - 1)])
    return np.concatenate(drawn) if drawn else np.zeros(0, dtype=np.int64)


def draw_stage(sources: dict[str, TokenizedSource], weights: dict[str, float], upsample: dict[str, dict[int, float]],
               total_tokens: int, max_atomic_length: int, seed: int, stage: int) -> list[tuple[int, int]]:
    """(source index, document index) of every document the stage draws, in a seeded random order.

    Atomic documents (conversations, task items) longer than `max_atomic_length` are never drawn: they could
    not be packed without splitting them.
    """
    names = list(sources)
    quotas = token_quotas({n: weights[n] for n in names if weights[n] > 0}, total_tokens)
    order = []
    for s, name in enumerate(names):
        if name not in quotas or quotas[name] == 0:
            continue
        src = sources[name]
        lengths = src.lengths
        factors = doc_factors(lengths, upsample[name])
        if src.atomic:
            factors[lengths > max_atomic_length] = 0.0
        if not factors.any():
            raise ValueError(f"data.sources.{name}: no document fits in a row of {max_atomic_length} tokens "
                             f"(shortest has {int(lengths.min())}); raise the stage length or shorten the documents")
        docs = draw_documents(lengths, factors, quotas[name], source_rng(seed, stage, name))
        order.extend((s, int(d)) for d in docs)
    permutation = np.random.default_rng([seed, stage]).permutation(len(order))
    return [order[i] for i in permutation]
