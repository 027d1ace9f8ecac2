"""Causal-LM loss that never materialises full-sequence logits.

16k tokens x a 128k vocabulary is 4 GB of bf16 logits (8 GB in float32 for the softmax). Here the hidden
states are projected and scored one chunk of tokens at a time, so only one chunk's logits ever exist.

Where the output layer is a plain linear layer (the usual case), each chunk's gradients with respect to the
hidden states and the layer's weight are computed right away in the forward pass, from the softmax it
already has (grad of logits = softmax - one-hot), and handed to autograd in the backward pass: the logits
are computed once, as in an unchunked loss. Otherwise (a wrapped or sharded output layer: peft, ZeRO-3)
each chunk runs under activation checkpointing, which computes its logits a second time in the backward;
there the cross-entropy turns the logits into their gradient as it scores them (`_SoftmaxCrossEntropy`), so
a chunk holds one logits-sized buffer in the backward instead of the three or four of `F.cross_entropy`
(logits, log-softmax, and their gradients).

The loss is returned as a sum with its token count, so the caller can normalise by the tokens of the whole
optimizer step: batch 1 x accumulation 4 then equals batch 4 x accumulation 1.

`train.loss` picks the implementation that scores the kept tokens, from the registry `LOSSES`: `chunked`
(the above), `plain` (all logits at once: the reference), `cce` (Apple's Cut Cross-Entropy: its Triton
kernel on CUDA, its `torch_compile` implementation elsewhere) and `liger` (Liger's fused linear
cross-entropy, CUDA only). `auto` takes the first one of `AUTO[device]` that is installed. The library
kernels need the output layer's weight whole (a plain nn.Linear without bias); where it is not (a peft
wrapper or a ZeRO-3 partition of the head) they fall back to the chunked path.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

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


def _score_in_place(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """sum of cross-entropy(scores (N, V) float32, targets (N,)); turns `scores` into its gradient (softmax -
    one-hot, zero on IGNORE_INDEX rows) in place, so scoring a chunk needs no second logits-sized buffer."""
    kept = targets != IGNORE_INDEX
    safe = targets.clamp(min=0)
    picked = scores.gather(1, safe[:, None]).squeeze(1)
    top = scores.amax(dim=-1)
    sums = scores.sub_(top[:, None]).exp_().sum(dim=-1)
    total = ((top + sums.log() - picked) * kept).sum()
    scores.div_(sums[:, None])
    scores[torch.arange(scores.shape[0], device=scores.device), safe] -= 1.0
    scores.mul_(kept[:, None])
    return total


class _SoftmaxCrossEntropy(torch.autograd.Function):
    """sum of cross-entropy(logits (N, V), targets (N,)). The forward turns the logits, in place where they are
    float32, into their gradient, the only logits-sized buffer the backward keeps; the backward scales it in
    place (so it runs once). Returns (loss, the overwritten logits: not to be read)."""

    @staticmethod
    def forward(ctx, logits, targets):
        ctx.set_materialize_grads(False)
        in_place = logits.dtype == torch.float32
        scores = logits if in_place else logits.float()
        total = _score_in_place(scores, targets)
        if in_place:
            ctx.mark_dirty(logits)
        ctx.save_for_backward(scores)
        ctx.dtype = logits.dtype
        return total, logits

    @staticmethod
    def backward(ctx, grad_output, _unused):
        (grad,) = ctx.saved_tensors
        if grad_output is None:
            return None, None
        return grad.mul_(grad_output).to(ctx.dtype), None


def _lean_chunk_loss(hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
    return _SoftmaxCrossEntropy.apply(lm_head(hidden), targets)[0]


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
            grad_logits = F.linear(h, weight, bias).float()
            total += _score_in_place(grad_logits, t)
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
            # Both products in the weight's dtype, as autograd would run them (bf16 on tensor cores, not a
            # float32 matmul several times slower); the weight's gradient then sums its chunks in float32.
            grad_logits = grad_logits.to(weight.dtype)
            grad_hidden[start : start + chunk_size] = (grad_logits @ weight).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += grad_logits.T @ h.to(weight.dtype)
            del grad_logits  # before the next chunk's logits exist
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


def _plain_loss(hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module, chunk_size: int) -> torch.Tensor:
    return _chunk_loss(hidden, targets, lm_head)


def _chunked_loss(hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module, chunk_size: int) -> torch.Tensor:
    n_tokens = hidden.shape[0]
    if chunk_size <= 0:
        return _chunk_loss(hidden, targets, lm_head)
    if _is_plain_linear(lm_head):
        return _ChunkedLinearCrossEntropy.apply(hidden, lm_head.weight, lm_head.bias, targets, chunk_size)
    if n_tokens <= chunk_size:
        return _lean_chunk_loss(hidden, targets, lm_head)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, n_tokens, chunk_size):
        stop = start + chunk_size
        total = total + checkpoint(_lean_chunk_loss, hidden[start:stop], targets[start:stop], lm_head,
                                   use_reentrant=False)
    return total


def _fused_head(lm_head: nn.Module) -> bool:
    """Whether a library kernel can take the head: its weight here whole, no bias (CCE takes none)."""
    return _is_plain_linear(lm_head) and lm_head.bias is None


def _cce_loss(hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module, chunk_size: int) -> torch.Tensor:
    if not _fused_head(lm_head):
        return _chunked_loss(hidden, targets, lm_head, chunk_size)
    from cut_cross_entropy import linear_cross_entropy

    # The Triton kernel on CUDA (with its default gradient filtering); elsewhere the compiled torch version.
    impl = "cce" if hidden.is_cuda else "torch_compile"
    weight = lm_head.weight.to(hidden.dtype)
    return linear_cross_entropy(hidden, weight, targets, ignore_index=IGNORE_INDEX, reduction="sum", impl=impl).float()


def _liger_loss(hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module, chunk_size: int) -> torch.Tensor:
    if not _fused_head(lm_head):
        return _chunked_loss(hidden, targets, lm_head, chunk_size)
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    weight = lm_head.weight.to(hidden.dtype)
    out = liger_fused_linear_cross_entropy(input=hidden, weight=weight, target=targets, ignore_index=IGNORE_INDEX,
                                           reduction="sum")
    return (out[0] if isinstance(out, tuple) else out).float()  # some versions return (loss, z_loss)


@dataclass(frozen=True)
class LossImpl:
    """One way to score the kept tokens: compute(hidden (N, H), targets (N,), lm_head, chunk_size) -> sum."""

    compute: Callable[[torch.Tensor, torch.Tensor, nn.Module, int], torch.Tensor]
    module: str | None = None  # the package it imports (None: torch only)
    pip: str | None = None  # what installs it
    devices: tuple[str, ...] | None = None  # device types it runs on (None: all)


LOSSES: dict[str, LossImpl] = {}


def register_loss(name: str, impl: LossImpl) -> None:
    LOSSES[name] = impl


register_loss("chunked", LossImpl(_chunked_loss))
register_loss("plain", LossImpl(_plain_loss))
register_loss("cce", LossImpl(_cce_loss, module="cut_cross_entropy", pip="cut-cross-entropy"))
register_loss("liger", LossImpl(_liger_loss, module="liger_kernel", pip="liger-kernel", devices=("cuda",)))

# What `auto` tries, first installed wins, per device type. On CPU the chunked loss: always installed, no
# compiler or per-shape compile step (CCE's torch_compile needs both), half the plain loss's memory
# (results/loss_kernels/); on CUDA the fused kernels, which never hold a chunk's logits: Liger first, as on
# an H200 in bf16 it ran 1.6-2.5x faster than CCE and stayed closer to the plain loss (CCE's default
# gradient filtering leaves about 1e-2 relative difference; results/gpu/).
AUTO: dict[str, tuple[str, ...]] = {"cuda": ("liger", "cce", "chunked"), "cpu": ("chunked",)}
AUTO_DEFAULT = ("chunked",)


def loss_problem(name: str, device: str) -> str | None:
    """Why train.loss=name cannot run on a device type ("cpu", "cuda"), in one line; None when it can."""
    if name == "auto":
        return None
    if name not in LOSSES:
        return f"train.loss={name!r} is unknown; choose auto or one of {', '.join(LOSSES)}"
    impl = LOSSES[name]
    if impl.devices is not None and device not in impl.devices:
        return f"train.loss={name} runs only on {', '.join(impl.devices)}; this run is on {device}: choose auto or chunked"
    if impl.module is not None and importlib.util.find_spec(impl.module) is None:
        return f"train.loss={name} needs the {impl.pip} package, which is not installed: pip install {impl.pip}"
    return None


def resolve_loss(name: str, device: str) -> str:
    """The implementation train.loss=name means on a device type: itself, or auto's first available one."""
    if name != "auto":
        return name
    return next(n for n in AUTO.get(device, AUTO_DEFAULT) if loss_problem(n, device) is None)


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
    loss: str = "chunked",
) -> tuple[torch.Tensor, int]:
    """(sum of next-token cross-entropies, number of scored tokens) for hidden states (B, T, H), scored by the
    implementation LOSSES[loss] (`auto` is resolved for the hidden states' device).

    chunk_size <= 0 computes all logits at once (the reference the chunked path is tested against).
    """
    return target_loss_sum(hidden, lm_head, next_token_targets(labels, position_ids), chunk_size, loss)


def target_loss_sum(hidden: torch.Tensor, lm_head: nn.Module, targets: torch.Tensor,
                    chunk_size: int = 1024, loss: str = "chunked") -> tuple[torch.Tensor, int]:
    """(sum of cross-entropies, scored tokens) of hidden states (B, T, H) against already aligned targets
    (B, T) (next_token_targets, or a sequence shard of them); IGNORE_INDEX positions are not scored."""
    targets = targets.reshape(-1)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    keep = targets != IGNORE_INDEX
    n_tokens = int(keep.sum())
    hidden, targets = hidden[keep], targets[keep]
    if n_tokens == 0:
        return hidden.sum() * 0.0, 0
    return LOSSES[resolve_loss(loss, hidden.device.type)].compute(hidden, targets, lm_head, chunk_size), n_tokens
