"""`train.attention`: which attention the training loop runs, one entry per option.

Each entry maps the train config to the name of an attention function registered in transformers'
AttentionInterface (None: leave the model's own kernel) and declares what the decoder sees of a packed row:
its stored positions or 0..T-1 across the row, and whether the row's documents are kept apart (the explicit
document ids reach attention through `attention_inputs`, extend/models/packed_attention.py). Exports and
evaluation always run full attention: `restore_attention` puts plain SDPA back before anything is saved. The
loss never scores a prediction across a document boundary, whatever the option, so every option trains on
the same targets.

    full            per-document SDPA on packed rows (train.packed_attention), or the model's kernel; each
                    document on its own stored positions
    s2              LongLoRA's shifted sparse attention, groups of train.s2_group_fraction x the row length
    cross_document  the row as one causal sequence at positions 0..T-1: documents see each other
    anchor          AnchorAttention (extend/models/anchor_attention.py): positions 0..T-1, documents apart,
                    the row's first token visible to every document
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from transformers import PreTrainedModel

from extend.config import TrainConfig
from extend.models.anchor_attention import ANCHOR_SDPA
from extend.models.packed_attention import PACKED_SDPA, attention_inputs
from extend.models.s2_attention import S2_SDPA, register_s2

# Kernels S²-Attn and AnchorAttention may stand in for: they compute plain softmax attention, as their SDPA
# does. Others (entropy-aware ABF's query-scaling kernels) change what attention computes and would be
# silently dropped.
PLAIN_KERNELS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")


@dataclass(frozen=True)
class TrainingAttention:
    # The AttentionInterface name to train with, registered on first use (None: the model's own kernel).
    kernel: Callable[[TrainConfig], str | None]
    # The model kernels it replaces; `strict`: any other is an error rather than left running.
    replaces: tuple[str, ...]
    strict: bool
    # The decoder's positions: False, the row's stored ones (each document from 0, PoSE's skips kept); True,
    # 0..T-1 across the row (validation refuses PoSE spans, whose skipped positions would be lost).
    row_positions: bool
    # Whether attention keeps the row's documents apart (by the row's explicit document ids).
    isolates_documents: bool
    # What is wrong with training rows of this length, or None.
    length_problem: Callable[[TrainConfig, int], str | None] = lambda train, length: None

    def kernel_problem(self, kernel: str) -> str | None:
        """Why this option cannot train a model that runs `kernel`, or None."""
        if self.strict and kernel not in self.replaces:
            return (f"computes plain softmax attention and cannot stand in for the model's {kernel!r} kernel; "
                    "use train.attention=full")
        return None


def _s2(train: TrainConfig) -> str:
    return register_s2(groups_per_row(train.s2_group_fraction))


def _s2_length(train: TrainConfig, length: int) -> str | None:
    n = groups_per_row(train.s2_group_fraction)
    if n and length % n:
        return (f"is not a multiple of {n} (S²-Attn's groups per row, 1 / train.s2_group_fraction): choose a length "
                f"divisible by {n} or another train.s2_group_fraction")
    return None


TRAINING_ATTENTION: dict[str, TrainingAttention] = {
    # Eager, FlashAttention and entropy-aware ABF's kernels keep running as they are.
    "full": TrainingAttention(lambda t: PACKED_SDPA if t.packed_attention else None, ("sdpa",), strict=False,
                              row_positions=False, isolates_documents=True),
    "s2": TrainingAttention(_s2, PLAIN_KERNELS, strict=True, row_positions=False, isolates_documents=True,
                            length_problem=_s2_length),
    # The model's own kernel on one causal sequence: any kernel, entropy-aware ABF's included, computes it.
    "cross_document": TrainingAttention(lambda t: None, (), strict=False, row_positions=True,
                                        isolates_documents=False),
    "anchor": TrainingAttention(lambda t: ANCHOR_SDPA, PLAIN_KERNELS, strict=True, row_positions=True,
                                isolates_documents=True),
}


def groups_per_row(fraction: float) -> int:
    """1 / train.s2_group_fraction, the whole number of groups a row is cut into (0 when it is not whole)."""
    groups = round(1 / fraction) if fraction > 0 else 0
    return groups if groups >= 1 and abs(groups * fraction - 1) < 1e-9 else 0


def use_training_attention(model: PreTrainedModel, train: TrainConfig) -> bool:
    """Switch `model` to the training attention `train.attention` names; True if it switched."""
    option, kernel = TRAINING_ATTENTION[train.attention], model.config._attn_implementation
    problem = option.kernel_problem(kernel)
    if problem:
        raise ValueError(f"train.attention={train.attention} {problem}")
    if kernel not in option.replaces:
        return False
    name = option.kernel(train)
    if name is None:
        return False
    model.set_attn_implementation(name)
    return True


def decoder_inputs(option: str, model: PreTrainedModel, position_ids: torch.Tensor, document_ids: torch.Tensor,
                   dtype: torch.dtype) -> dict:
    """The decoder's keyword arguments for packed rows under `option`: position_ids (the stored ones or 0..T-1)
    and what keeps documents apart (`attention_inputs`: the explicit document ids, or a mask, or nothing)."""
    chosen = TRAINING_ATTENTION[option]
    if chosen.row_positions:
        rows, length = position_ids.shape
        position_ids = torch.arange(length, device=position_ids.device).expand(rows, length)
    if not chosen.isolates_documents:
        return {"position_ids": position_ids}
    return {"position_ids": position_ids, **attention_inputs(model, position_ids, document_ids, dtype)}


def restore_attention(model: PreTrainedModel) -> None:
    """Back to plain SDPA (before saving or evaluating a model trained with a training attention). config.json
    records no kernel: whoever loads the export chooses its own."""
    name = model.config._attn_implementation
    if name in (PACKED_SDPA, ANCHOR_SDPA) or name.startswith(f"{S2_SDPA}_"):
        model.set_attn_implementation("sdpa")
