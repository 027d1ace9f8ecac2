"""Sentence embeddings from a (possibly extended) encoder: mean, CLS or last-token pooling, L2-normalised.

all-MiniLM-L6-v2 and E5 both mean-pool the last hidden states over real tokens and normalise (their
sentence-transformers modules.json / 1_Pooling/config.json say so), so `mean` with `normalize` reproduces
`SentenceTransformer.encode` without depending on sentence-transformers. Decoder-based embedders
(E5-Mistral) read the hidden state of the last token, an EOS appended to every input: `last` with
`Reader.eos_id`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

POOLINGS = ("mean", "cls", "last")


@dataclass(frozen=True)
class Reader:
    """How a model reads its inputs: the longest input it sees (longer ones are cut at the end, keeping
    the closing special tokens), the EOS appended to every input for last-token pooling, and, for the
    mapped-id mode, the factor its position ids are multiplied by."""

    max_length: int
    # None: consecutive ids (stock behaviour); s: position p reads row offset + p*s (original rows).
    mapped_factor: int | None = None
    offset: int = 0
    # Closing special tokens the tokenizer puts after a text (BERT: [SEP] = 1; Llama-style: 0), kept when cutting.
    tail: int = 1
    # Appended after cutting (E5-Mistral's last-token pooling reads it); the input stays within max_length.
    eos_id: int | None = None

    def prepare(self, ids: list[int]) -> list[int]:
        """One tokenised input as the model reads it: cut to fit, then the EOS if there is one."""
        if self.eos_id is None:
            return truncate(ids, self.max_length, self.tail)
        return truncate(ids, self.max_length - 1, self.tail) + [self.eos_id]


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str, normalize: bool) -> torch.Tensor:
    """(B, T, d) hidden states -> (B, d) embeddings."""
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        out = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    elif pooling == "cls":
        out = hidden[:, 0]
    elif pooling == "last":  # right padding: the last real token sits at (number of real tokens - 1)
        out = hidden[torch.arange(len(hidden), device=hidden.device), mask.sum(1) - 1]
    else:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return F.normalize(out, dim=-1) if normalize else out


def truncate(ids: list[int], max_length: int, tail: int = 1) -> list[int]:
    """Cut a tokenised input (with its special tokens) to max_length, keeping the `tail` closing special tokens."""
    if len(ids) <= max_length:
        return ids
    return ids[: max_length - tail] + (ids[len(ids) - tail:] if tail else [])


def batch_tensors(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def forward(model: PreTrainedModel, rows: list[list[int]], reader: Reader, pad_id: int, pooling: str,
            normalize: bool) -> torch.Tensor:
    """Embeddings of one batch of token-id rows (gradients flow if enabled by the caller)."""
    rows = [reader.prepare(r) for r in rows]
    ids, mask = (t.to(model.device) for t in batch_tensors(rows, pad_id))
    kwargs = {}
    if reader.mapped_factor is not None:
        positions = torch.arange(ids.shape[1], device=model.device).unsqueeze(0)
        kwargs["position_ids"] = reader.offset + positions * reader.mapped_factor
    hidden = model(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state
    return pool(hidden, mask, pooling, normalize)


@torch.no_grad()
def embed(model: PreTrainedModel, rows: list[list[int]], reader: Reader, pad_id: int, pooling: str = "mean",
          normalize: bool = True, batch_size: int = 8) -> torch.Tensor:
    """Embeddings of many rows, batched by similar length (sorted) so little compute goes to padding."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    parts: dict[int, torch.Tensor] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        vecs = forward(model, [rows[i] for i in chunk], reader, pad_id, pooling, normalize)
        parts.update(zip(chunk, vecs.float().cpu()))
    return torch.stack([parts[i] for i in range(len(rows))])
