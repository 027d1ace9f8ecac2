"""Attention that stays inside packed documents without a block-diagonal mask, for training.

A packed row holds several documents whose position ids restart at 0. transformers keeps them apart by
building a (rows, 1, T, T) mask from the position ids, which sends SDPA to its explicit-mask path: memory
and time quadratic in the row length on CPU (and on GPUs without FlashAttention's varlen kernel); at 8k a
4-head layer materialises a gigabyte of attention weights. `extend_packed_sdpa` instead splits every row at
its restarts and calls SDPA once per document with `is_causal=True`, the fused path, so memory grows with
the longest document rather than with the square of the row.

It is registered in transformers' AttentionInterface (with the mask function of FlashAttention, which
builds no mask when there is no padding) and used only by the training loop on rows without padding masks;
exports keep their own attention implementation. Where the quadratic part is small (attention weights of
at most MASKED_BYTES for the whole batch, e.g. short rows with many tiny documents, where one call per
document would cost more in calls than it saves), it makes one SDPA call with the block-diagonal mask.

Documents come from explicit `document_ids` (rows, T) that the training loop passes down to attention (the
dataset's seq_lens, extend/training/batches.py); without them a document starts wherever the position id is
0. transformers' own masks instead start a new document wherever consecutive position ids differ by anything
but 1, which splits PoSE rows (extend/data/pose.py) at every skip: for attention implementations other than
this one, `attention_inputs` builds the mask from the document ids through the implementation's own mask
function whenever a row's ids skip inside a document.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, and_masks, causal_mask_function, flash_attention_mask,
    packed_sequence_mask_function,
)

PACKED_SDPA = "extend_packed_sdpa"
# Up to this many bytes of float32 attention weights (rows x heads x T x T) one masked SDPA call is used.
MASKED_BYTES = 16 * 2**20


def documents_from_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """Document index of every token when only positions are known: a document starts where the id is 0."""
    return (position_ids == 0).cumsum(dim=-1)


def document_spans(document_ids: torch.Tensor) -> list[tuple[int, int]]:
    """[start, stop) of each document in one row of document ids (a new document wherever the id changes)."""
    starts = [0] + ((document_ids[1:] != document_ids[:-1]).nonzero().flatten() + 1).tolist()
    return list(zip(starts, starts[1:] + [document_ids.shape[0]]))


def block_causal_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """(rows, 1, T, T) boolean mask: True where a token may attend (same document, not in the future)."""
    same = document_ids[:, :, None] == document_ids[:, None, :]
    length = document_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=document_ids.device).tril()
    return (same & causal)[:, None]


def packed_sdpa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None = None,
                          document_ids: torch.Tensor | None = None, **kwargs):
    """Causal SDPA per document of each packed row. query/key/value: (rows, heads, T, head_dim)."""
    if attention_mask is not None or query.shape[2] != key.shape[2]:
        raise ValueError(f"{PACKED_SDPA} is for training on packed rows (no padding mask, no cache); load the model "
                         "with attn_implementation='sdpa' for inference")
    kwargs.pop("is_causal", None)
    if document_ids is None:
        if position_ids is None:
            return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)
        document_ids = documents_from_positions(position_ids)
    length = query.shape[2]
    document_ids = document_ids.expand(query.shape[0], -1)
    if query.shape[0] * query.shape[1] * length * length * 4 <= MASKED_BYTES:
        return sdpa_attention_forward(module, query, key, value, block_causal_mask(document_ids), **kwargs)
    rows = []
    for b in range(query.shape[0]):
        pieces = [
            sdpa_attention_forward(module, query[b : b + 1, :, s:e], key[b : b + 1, :, s:e], value[b : b + 1, :, s:e],
                                   None, is_causal=True, **kwargs)[0]
            for s, e in document_spans(document_ids[b])
        ]
        rows.append(torch.cat(pieces, dim=1))  # sdpa_attention_forward returns (1, T, heads, head_dim)
    return torch.cat(rows, dim=0), None


# Training attention functions that take the loop's `document_ids` themselves (S²-Attn adds its own).
READS_DOCUMENT_IDS: set[str] = {PACKED_SDPA}

AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
AttentionMaskInterface.register(PACKED_SDPA, flash_attention_mask)


def restore_attention(model: PreTrainedModel) -> None:
    """Back to plain SDPA (before saving or evaluating a model trained with per-document attention)."""
    if model.config._attn_implementation == PACKED_SDPA:
        model.set_attn_implementation("sdpa")


def use_packed_attention(model: PreTrainedModel) -> bool:
    """Switch a model that runs plain SDPA to per-document SDPA; True if it did. Others (eager, FlashAttention,
    entropy-aware ABF's kernels) are left as they are."""
    if model.config._attn_implementation != "sdpa":
        return False
    model.set_attn_implementation(PACKED_SDPA)
    return True


def skips_inside_documents(position_ids: torch.Tensor, document_ids: torch.Tensor) -> bool:
    """True when some id inside a document does not follow its predecessor by exactly 1 (PoSE rows), which is
    where transformers' packed-sequence detection would split a document."""
    same = document_ids[:, 1:] == document_ids[:, :-1]
    return bool(((position_ids[:, 1:] - position_ids[:, :-1] != 1) & same).any())


def attention_inputs(model: PreTrainedModel, position_ids: torch.Tensor, document_ids: torch.Tensor,
                     dtype: torch.dtype) -> dict:
    """Extra keyword arguments for the decoder's forward that keep attention inside `document_ids`:
    the ids themselves for per-document SDPA; for other implementations, a mask from the implementation's
    own mask function when position ids skip inside a document (else nothing: transformers' inference from
    position ids is exact)."""
    implementation = model.config._attn_implementation
    if implementation in READS_DOCUMENT_IDS:
        return {"document_ids": document_ids}
    if not skips_inside_documents(position_ids, document_ids):
        return {}
    rows, length = document_ids.shape
    mask = ALL_MASK_ATTENTION_FUNCTIONS[implementation](
        batch_size=rows, q_length=length, kv_length=length,
        mask_function=and_masks(causal_mask_function, packed_sequence_mask_function(document_ids)),
        attention_mask=None, allow_is_causal_skip=False, dtype=dtype, config=model.config, device=document_ids.device,
    )
    return {} if mask is None else {"attention_mask": mask}
