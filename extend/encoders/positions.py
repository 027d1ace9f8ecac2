"""Extending an encoder's learned absolute position table (LongEmbed, Zhu et al. 2024), in one of two layouts.

With L original positions and factor s (target length N = s * L), the new table has N rows.

`interpolate`: row s*i is old row i exactly (i = 0..L-1), rows between two mapped rows are linear
interpolations of their neighbours, and the s-1 rows after s*(L-1) continue the last segment linearly
(extrapolation: a clamp would give the last s positions one identical vector, which attention cannot tell
apart).

`recurrent`: row p is old row p mod L, the table repeated s times. Rows 0..L-1 are the original table, so
any input of at most L tokens reads exactly what the original model read, in a stock load; beyond L the
positions start over (LongEmbed's recurrent positions, as a table). The rows past L are the ones a
fine-tune can train while the first L stay frozen (`original_rows`).

Two ways to read an interpolated table:
- consecutive ids (what a stock transformers / sentence-transformers load does): position p reads row p,
  i.e. old position p / s. This is position interpolation; it is how the export is used.
- mapped ids (`mapped_position_ids`): position p reads row p * s, which is old row p. For inputs of at
  most L tokens this reproduces the original model exactly; it needs position_ids passed explicitly, with an
  attention_mask (without one, transformers reads ids that do not step by 1 as packed sequences).

Families are registered by `model_type`; RoBERTa-style models keep `padding_idx + 1` leading rows that no
token position uses (their ids start after the padding index), which stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModel, PretrainedConfig, PreTrainedModel

from extend.config import ConfigError
from extend.encoders.rotary import ROPE_FAMILIES
from extend.models.loading import NO_HUB_KERNELS


@dataclass(frozen=True)
class PositionTable:
    """Where a family keeps its learned table and how many leading rows are not token positions."""

    # Dotted path of the nn.Embedding inside the base (AutoModel) model.
    module: str
    # Rows before position 0 (RoBERTa/XLM-R: padding_idx + 1); read from the config by `offset_of`.
    offset_key: str | None = None

    def offset(self, config: PretrainedConfig) -> int:
        return 0 if self.offset_key is None else int(getattr(config, self.offset_key)) + 1


# model_type -> its table. Encoders with RoPE are not here: they take the decoder path's rope methods
# (extend/encoders/rotary.py).
FAMILIES: dict[str, PositionTable] = {
    "bert": PositionTable("embeddings.position_embeddings"),
    "roberta": PositionTable("embeddings.position_embeddings", offset_key="pad_token_id"),
    "xlm-roberta": PositionTable("embeddings.position_embeddings", offset_key="pad_token_id"),
}


def family_of(config: PretrainedConfig) -> PositionTable:
    """The registered table of this model type, or one error naming the type and what is supported."""
    table = FAMILIES.get(config.model_type)
    if table is None or getattr(config, "position_embedding_type", "absolute") != "absolute":
        kind = config.model_type if table is None else f"{config.model_type} with position_embedding_type="\
            f"{config.position_embedding_type}"
        raise ConfigError([f"encoder.model: model type '{kind}' has no learned absolute position table this "
                           f"project can extend; supported: {', '.join(sorted(FAMILIES))} (absolute positions), "
                           f"{', '.join(sorted(ROPE_FAMILIES))} (RoPE, through rope=METHOD)"])
    return table


def original_length(config: PretrainedConfig) -> int:
    """L: the token positions the base addresses (the table's rows minus RoBERTa's leading rows)."""
    return config.max_position_embeddings - family_of(config).offset(config)


def check_target(config: PretrainedConfig, target_length: int) -> int:
    """The integer factor s = target / L, or one error: the target must be a multiple of L above it."""
    old = original_length(config)
    if target_length <= old or target_length % old:
        raise ConfigError([f"encoder.target_length: {target_length} must be a multiple of the model's original "
                           f"length {old} and larger than it (e.g. {old * 4}); interpolation places old "
                           "position i at i * s for an integer s"])
    return target_length // old


def interpolate_table(table: torch.Tensor, factor: int) -> torch.Tensor:
    """(L, d) -> (s*L, d): row s*i = old row i, linear in between, the tail continues the last segment."""
    old, dim = table.shape
    if factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    work = table.detach().to(torch.float64)
    pos = torch.arange(old * factor, dtype=torch.float64, device=table.device) / factor  # old coordinate of every new row
    left = pos.floor().long().clamp(max=old - 2)  # the tail (pos > L-1) extrapolates from rows L-2, L-1
    frac = (pos - left).unsqueeze(1)
    new = work[left] + frac * (work[left + 1] - work[left])
    new[::factor] = work  # exact copies, not recomputed: the mapped rows must equal the originals bit for bit
    return new.to(table.dtype)


def recurrent_table(table: torch.Tensor, factor: int) -> torch.Tensor:
    """(L, d) -> (s*L, d): row p = old row p mod L."""
    if factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    return table.detach().repeat(factor, 1)


# encoder.table -> how the new rows are made from the old table.
LAYOUTS = {"interpolate": interpolate_table, "recurrent": recurrent_table}


def original_rows(base_config: PretrainedConfig, layout: str, factor: int) -> torch.Tensor:
    """Indices (into the extended table, leading rows included) of the rows that hold the original rows where
    the original model read them: recurrent rows 0..L-1 (what inputs of at most L tokens read), interpolate
    rows 0, s, 2s, ... (what the mapped-id mode reads). `base_config` is the unextended model's."""
    old, offset = original_length(base_config), family_of(base_config).offset(base_config)
    stride = factor if layout == "interpolate" else 1
    return offset + torch.arange(old) * stride


def extended_config(config: PretrainedConfig, target_length: int) -> PretrainedConfig:
    """A copy of the config that addresses `target_length` token positions."""
    new = config.__class__.from_dict(config.to_dict())
    new.max_position_embeddings = target_length + family_of(config).offset(config)
    return new


def extend_encoder(model: PreTrainedModel, target_length: int, layout: str = "interpolate") -> PreTrainedModel:
    """A new model of the same class whose position table is extended to `target_length` positions in
    `layout` (see the module docstring).

    The model is rebuilt from the extended config (so its `position_ids` / `token_type_ids` buffers have the
    new size) and the original weights are loaded into it; the original model is left untouched.
    """
    family = family_of(model.config)
    factor = check_target(model.config, target_length)
    offset = family.offset(model.config)
    state = model.state_dict()
    key = family.module + ".weight"
    old = state[key]
    state[key] = torch.cat([old[:offset], LAYOUTS[layout](old[offset:], factor)])
    config = extended_config(model.config, target_length)
    new = model.__class__(config)
    new.load_state_dict(state, strict=True)
    return new.to(old.dtype).eval()


def mapped_position_ids(config: PretrainedConfig, length: int, factor: int) -> torch.Tensor:
    """Position ids (1, length) that read the original rows of an extended table: offset + p * s."""
    return (family_of(config).offset(config) + torch.arange(length) * factor).unsqueeze(0)


def load_encoder(path: str, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The base encoder (AutoModel, no task head), in eval mode."""
    return AutoModel.from_pretrained(path, attn_implementation=attn_implementation, dtype=dtype, **NO_HUB_KERNELS).eval()
