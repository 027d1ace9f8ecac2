"""AnchorAttention for training on packed rows (Wang et al., 2024, "When Precision Meets Position: BFloat16
Breaks Down RoPE in Long-Context Training").

In bf16, RoPE's relative property breaks down and the first token's error grows with length. AnchorAttention
makes the row's first token a shared anchor: every token of the row may attend to it, tokens of different
documents never see each other, and attention is causal. Positions are *not* restarted per document: the row
runs 0, 1, ..., T-1, so the anchor keeps position id 0 and documents are trained on the whole range of
rotary angles (the paper finds restarting positions helps but limits the angles learned; its reference,
AnchorContext's FlexAttention path, uses the window's positions 0..T-1 and a mask that lets every document see
the token at 0).

The anchor is the row's first token as data prep packed it (batch time, nothing inserted): the same prepared
rows serve `full`, `cross_document` and `anchor`, so a comparison trains on identical tokens and loss targets.
The reference inserts a dedicated BOS (or EOS) token as the anchor and scores no prediction from it.

Documents come only from the explicit `document_ids` (rows, T) the training loop passes down to attention
(the dataset's seq_lens, extend/training/batches.py), never from position ids: the decoder receives 0..T-1
(extend/models/training_attention.py). Where the attention weights of the whole batch are small (at most
MASKED_BYTES) it is one SDPA call under the anchor mask; otherwise one causal SDPA call per document, with the
anchor's query and key put in front of the document's (the anchor's own output is dropped), so the fused
causal path runs and no mask grows with the document.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

from extend.models.packed_attention import MASKED_BYTES, READS_DOCUMENT_IDS, document_spans

ANCHOR_SDPA = "extend_anchor_sdpa"


def anchor_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """(rows, 1, T, T) boolean mask, True where a token may attend: earlier or itself, and in its own
    document or the row's first token (the anchor)."""
    length = document_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=document_ids.device).tril()
    visible = document_ids[:, :, None] == document_ids[:, None, :]
    visible[:, :, 0] = True
    return (visible & causal)[:, None]


def _document_call(module, query, key, value, s: int, e: int, **kwargs) -> torch.Tensor:
    """One document [s, e) of one row, (1, e - s, heads, head_dim): causal over [anchor, document]; for s > 0
    the anchor's query rides along in front (so the square causal path applies) and its output is dropped."""
    if s == 0:
        index = slice(0, e)
        return sdpa_attention_forward(module, query[:, :, index], key[:, :, index], value[:, :, index], None,
                                      is_causal=True, **kwargs)[0]
    index = torch.cat([torch.zeros(1, dtype=torch.long, device=query.device),
                       torch.arange(s, e, device=query.device)])
    out = sdpa_attention_forward(module, query[:, :, index], key[:, :, index], value[:, :, index], None,
                                 is_causal=True, **kwargs)[0]
    return out[:, 1:]


def anchor_sdpa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, document_ids: torch.Tensor | None = None, **kwargs):
    """SDPA under the anchor mask. query/key/value: (rows, heads, T, head_dim); document_ids: (rows, T)."""
    if attention_mask is not None or query.shape[2] != key.shape[2] or document_ids is None:
        raise ValueError(f"{ANCHOR_SDPA} is for training on packed rows (no padding mask, no cache, the rows' "
                         "explicit document_ids); load the model with attn_implementation='sdpa' for inference")
    kwargs.pop("is_causal", None)
    kwargs.pop("position_ids", None)
    rows, length = query.shape[0], query.shape[2]
    document_ids = document_ids.expand(rows, length)
    if rows * query.shape[1] * length * length * 4 <= MASKED_BYTES:
        return sdpa_attention_forward(module, query, key, value, anchor_mask(document_ids), **kwargs)
    out = []
    for b in range(rows):
        row = slice(b, b + 1)
        out.append(torch.cat([_document_call(module, query[row], key[row], value[row], s, e, **kwargs)
                              for s, e in document_spans(document_ids[b])], dim=1))
    return torch.cat(out, dim=0), None


AttentionInterface.register(ANCHOR_SDPA, anchor_sdpa_attention)
AttentionMaskInterface.register(ANCHOR_SDPA, flash_attention_mask)  # no mask is built: rows carry no padding
READS_DOCUMENT_IDS.add(ANCHOR_SDPA)
