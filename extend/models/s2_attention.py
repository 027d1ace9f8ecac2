"""Shifted sparse attention (S²-Attn, LongLoRA: Chen et al., ICLR 2024, section 3.2), for training only.

A row of T tokens is cut into T / G groups of G tokens and every head attends causally within its group.
Half of the heads (the second half, as in the authors' code) see the row shifted by G / 2 tokens, so their
groups straddle the others' group boundaries and information flows between neighbouring groups. Attention
costs T x G instead of T x T; inference then runs plain full attention on the same weights (the paper's
point: the model is trained for, and evaluated with, full attention).

Two choices beyond the paper's formula:
- Packed documents never see each other: inside a group, a token attends only to earlier tokens of its own
  document (`row_documents`), exactly as the plain packed attention does. Groups inside one document run as
  one batched causal SDPA call; groups holding a boundary as one masked call while the weights are small, else
  one causal call per piece (as extend/models/packed_attention.py), so no mask grows with the group size.
- The shifted half does not wrap around the row. Rolling the row by G / 2 (the authors' non-FlashAttention
  path) puts the row's last G / 2 tokens and its first G / 2 in one group, where the first tokens would
  attend to the row's end, i.e. to their future. Here the two halves of that group are kept apart as if they
  were different documents, so the shifted heads' groups are [0, G/2), [G/2, 3G/2), ..., [T - G/2, T): what
  the authors' FlashAttention path computes (its cu_seqlens start the shifted half at G / 2).
- With one group per row (G = T) nothing is shifted: S²-Attn is then full causal attention, the reference the
  paper compares group sizes with.

Only `use_training_attention` (extend/models/training_attention.py) switches a model to it; exports and
evaluation use full attention.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

from extend.models.packed_attention import MASKED_BYTES, READS_DOCUMENT_IDS

S2_SDPA = "extend_s2_sdpa"


def row_documents(position_ids: torch.Tensor) -> torch.Tensor:
    """(rows, T) document index of every token: a document starts where its position id is 0 (the packed
    rows. convention, used when the training loop passes no explicit `document_ids`)."""
    return (position_ids == 0).cumsum(dim=-1)


def group_size(length: int, groups: int) -> int:
    """G, the tokens per group, for a row of `length` tokens cut into `groups` groups."""
    if groups < 1 or length % groups:
        raise ValueError(f"S²-Attn cuts a row of {length} tokens into {groups} groups (1 / train.s2_group_fraction): "
                         "the row length must be a multiple of the group count")
    return length // groups


def grouped_causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, segments: torch.Tensor,
                             size: int, scaling: float | None, dropout: float) -> torch.Tensor:
    """Causal SDPA within consecutive groups of `size` tokens, a token attending only to its own segment.
    query/key/value: (rows, heads, T, head_dim) with as many key as query heads; segments: (rows, T)."""
    rows, heads, length, dim = query.shape
    n = length // size

    def grouped(x: torch.Tensor) -> torch.Tensor:  # (rows, heads, T, d) -> (rows * n, heads, size, d)
        return x.reshape(rows, heads, n, size, x.shape[-1]).transpose(1, 2).reshape(rows * n, heads, size, x.shape[-1])

    q, k, v = grouped(query), grouped(key), grouped(value)
    seg = segments.reshape(rows * n, size)
    sdpa = partial(nn.functional.scaled_dot_product_attention, dropout_p=dropout, scale=scaling)
    # Groups of one segment: one batched call on SDPA's fused causal path.
    mixed = (seg != seg[:, :1]).any(dim=-1)
    out = torch.empty_like(q)
    plain = (~mixed).nonzero().flatten()
    if plain.numel():
        out[plain] = sdpa(q[plain], k[plain], v[plain], is_causal=True)
    # Groups holding a boundary: one masked call while the weights are small (as packed_attention), else one
    # causal call per segment, so that nothing quadratic in the group size is built.
    cut = mixed.nonzero().flatten()
    if not cut.numel():
        pass
    elif cut.numel() * heads * size * size * 4 <= MASKED_BYTES:
        s = seg[cut]
        causal = torch.ones(size, size, dtype=torch.bool, device=q.device).tril()
        out[cut] = sdpa(q[cut], k[cut], v[cut], attn_mask=((s[:, :, None] == s[:, None, :]) & causal)[:, None])
    else:
        for g in cut.tolist():
            starts = [0, *((seg[g, 1:] != seg[g, :-1]).nonzero().flatten() + 1).tolist(), size]
            for a, b in zip(starts, starts[1:]):
                piece = (slice(g, g + 1), slice(None), slice(a, b))
                out[g, :, a:b] = sdpa(q[piece], k[piece], v[piece], is_causal=True)[0]
    return out.reshape(rows, n, heads, size, dim).transpose(1, 2).reshape(rows, heads, length, dim)


def s2_sdpa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None = None,
                      document_ids: torch.Tensor | None = None, *, groups: int,
                      dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """S²-Attn over rows of packed documents. query: (rows, heads, T, head_dim), key/value: (rows, kv_heads, T,
    head_dim); returns (rows, T, heads, head_dim) and no weights, like transformers' attention functions."""
    if attention_mask is not None or query.shape[2] != key.shape[2]:
        raise ValueError(f"{S2_SDPA} is for training on packed rows (no padding mask, no cache); load the model "
                         "with attn_implementation='sdpa' for inference")
    if kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None:
        raise ValueError(f"{S2_SDPA} supports neither logit soft-capping nor position biases: use train.attention=full")
    rows, heads, length, _ = query.shape
    size = group_size(length, groups)
    key, value = repeat_kv(key, heads // key.shape[1]), repeat_kv(value, heads // value.shape[1])
    if document_ids is not None:  # the training loop's explicit boundaries (exact under PoSE's skipped ids)
        documents = document_ids.expand(rows, length)
    elif position_ids is not None:
        documents = row_documents(position_ids).expand(rows, length)
    else:
        documents = torch.zeros(rows, length, dtype=torch.long, device=query.device)
    # One group per row (fraction 1) is full causal attention: every token already sees the whole row.
    half, shift = heads // 2, (size // 2 if groups > 1 else 0)
    plain = grouped_causal_attention(query[:, :half], key[:, :half], value[:, :half], documents, size, scaling, dropout)
    # The shifted heads: the row's first G/2 tokens become a segment of their own (-1 - document), so after
    # the roll they share a group with the row's end but never attend to it.
    wrapped = documents.clone()
    wrapped[:, :shift] = -1 - wrapped[:, :shift]

    def roll(x: torch.Tensor) -> torch.Tensor:
        return x.roll(-shift, dims=-2)

    shifted = grouped_causal_attention(roll(query[:, half:]), roll(key[:, half:]), roll(value[:, half:]),
                                       wrapped.roll(-shift, dims=-1), size, scaling, dropout).roll(shift, dims=-2)
    return torch.cat([plain, shifted], dim=1).transpose(1, 2).contiguous(), None


def register_s2(groups: int) -> str:
    """The AttentionInterface name of S²-Attn with `groups` groups per row (registered on first use; the
    group count is in the name so that models trained with different fractions never share a function)."""
    name = f"{S2_SDPA}_{groups}"
    AttentionInterface.register(name, partial(s2_sdpa_attention, groups=groups))
    AttentionMaskInterface.register(name, flash_attention_mask)  # no mask is built: rows carry no padding
    READS_DOCUMENT_IDS.add(name)
    return name
