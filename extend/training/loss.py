"""Causal-LM loss that never materialises full-sequence logits.

16k tokens x a 128k vocabulary is 4 GB of bf16 logits (8 GB in float32 for the softmax). Here the hidden
states are projected and scored one chunk of tokens at a time, each chunk under activation checkpointing,
so only one chunk's logits exist at once, in the forward pass and again in the backward pass.

The loss is returned as a sum with its token count, so the caller can normalise by the tokens of the whole
optimizer step: batch 1 x accumulation 4 then equals batch 4 x accumulation 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def shifted_targets(labels: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
    """Targets for positions 0..T-2: the next label, ignored where the next token starts a new document
    (position id 0), so no prediction crosses a packed document boundary."""
    targets = labels[:, 1:].clone()
    if position_ids is not None:
        targets[position_ids[:, 1:] == 0] = IGNORE_INDEX
    return targets


def _chunk_loss(hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
    logits = lm_head(hidden).float()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def causal_lm_loss_sum(
    hidden: torch.Tensor,
    lm_head: nn.Module,
    labels: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, int]:
    """(sum of next-token cross-entropies, number of scored tokens) for hidden states (B, T, H).

    chunk_size <= 0 computes all logits at once (the reference the chunked path is tested against).
    """
    targets = shifted_targets(labels, position_ids).reshape(-1)
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    keep = targets != IGNORE_INDEX
    n_tokens = int(keep.sum())
    hidden, targets = hidden[keep], targets[keep]
    if n_tokens == 0:
        return hidden.sum() * 0.0, 0
    if chunk_size <= 0 or n_tokens <= chunk_size:
        return _chunk_loss(hidden, targets, lm_head), n_tokens
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, n_tokens, chunk_size):
        stop = start + chunk_size
        total = total + checkpoint(_chunk_loss, hidden[start:stop], targets[start:stop], lm_head, use_reentrant=False)
    return total, n_tokens
