"""Causal-LM loss that never materialises full-sequence logits.

16k tokens x a 128k vocabulary is 4 GB of bf16 logits (8 GB in float32 for the softmax). Here the hidden
states are projected and scored one chunk of tokens at a time, so only one chunk's logits ever exist.

Where the output layer is a plain linear layer (the usual case), each chunk's gradients with respect to the
hidden states and the layer's weight are computed right away in the forward pass, from the softmax it
already has (grad of logits = softmax - one-hot), and handed to autograd in the backward pass: the logits
are computed once, as in an unchunked loss. Otherwise (a wrapped or sharded output layer: peft, ZeRO-3)
each chunk runs under activation checkpointing, which computes its logits a second time in the backward.

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


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum of cross-entropy(hidden @ weight.T (+ bias), targets), chunk by chunk, gradients in the forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size: int):
        total = hidden.new_zeros((), dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if weight.requires_grad else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and bias.requires_grad else None
        for start in range(0, hidden.shape[0], chunk_size):
            h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
            logits = F.linear(h, weight, bias).float()
            log_probs = logits.log_softmax(dim=-1)
            total += -log_probs.gather(1, t[:, None]).sum()
            grad_logits = log_probs.exp_()
            grad_logits[torch.arange(t.shape[0], device=t.device), t] -= 1.0
            grad_hidden[start : start + chunk_size] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += grad_logits.T @ h.float()
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        return (
            grad_hidden * grad_output.to(grad_hidden.dtype),
            None if grad_weight is None else (grad_weight * grad_output).to(weight_dtype),
            None if grad_bias is None else (grad_bias * grad_output).to(bias_dtype),
            None,
            None,
        )


def _is_plain_linear(module: nn.Module) -> bool:
    """A torch Linear whose weight is here whole (not a peft wrapper, not a ZeRO-3 partition)."""
    return type(module) is nn.Linear and not hasattr(module.weight, "ds_id")


def next_token_targets(labels: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
    """(B, T) targets aligned with the inputs: position t scores labels[t + 1], the last position nothing.

    Shifting before a row is cut into sequence-parallel shards keeps the target of each shard's last token
    (the first label of the next shard), which shifting inside each shard would lose."""
    ignored = torch.full_like(labels[:, :1], IGNORE_INDEX)
    return torch.cat([shifted_targets(labels, position_ids), ignored], dim=1)


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
    return target_loss_sum(hidden, lm_head, next_token_targets(labels, position_ids), chunk_size)


def target_loss_sum(hidden: torch.Tensor, lm_head: nn.Module, targets: torch.Tensor,
                    chunk_size: int = 1024) -> tuple[torch.Tensor, int]:
    """(sum of cross-entropies, scored tokens) of hidden states (B, T, H) against already aligned targets
    (B, T) (next_token_targets, or a sequence shard of them); IGNORE_INDEX positions are not scored."""
    targets = targets.reshape(-1)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    keep = targets != IGNORE_INDEX
    n_tokens = int(keep.sum())
    hidden, targets = hidden[keep], targets[keep]
    if n_tokens == 0:
        return hidden.sum() * 0.0, 0
    if chunk_size <= 0 or n_tokens <= chunk_size:
        return _chunk_loss(hidden, targets, lm_head), n_tokens
    if _is_plain_linear(lm_head):
        return _ChunkedLinearCrossEntropy.apply(hidden, lm_head.weight, lm_head.bias, targets, chunk_size), n_tokens
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, n_tokens, chunk_size):
        stop = start + chunk_size
        total = total + checkpoint(_chunk_loss, hidden[start:stop], targets[start:stop], lm_head, use_reentrant=False)
    return total, n_tokens
