"""How an encoder reaches the target length, decided from its config before any weights load: a learned
absolute position table is extended in the layout encoder.table names (positions.py), a RoPE encoder takes
a position method (rotary.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModel, PretrainedConfig, PreTrainedModel

from extend.config import ConfigError, EncoderConfig, RopeConfig
from extend.encoders.positions import LAYOUTS, check_target, extend_encoder, family_of, original_length, original_rows
from extend.encoders.rotary import describe, load_rope_encoder, resolve_encoder_rope, uses_rope
from extend.rope import ResolvedRope


@dataclass(frozen=True)
class Extension:
    """The plan for one encoder: its original length L, the target, and (for RoPE) the bound method."""

    original_length: int
    target_length: int
    # The training-free variant's name in the report ("interpolated" / "recurrent", or the RoPE method's).
    variant: str
    description: str
    rope: ResolvedRope | None = None
    # encoder.table for a learned table: interpolate or recurrent.
    layout: str = "interpolate"

    @property
    def factor(self) -> float:
        return self.target_length / self.original_length

    def build(self, base: PreTrainedModel, path: str, attn_implementation: str) -> PreTrainedModel:
        """The training-free extended model, on the base's device and dtype; the base is left untouched."""
        if self.rope is None:
            return extend_encoder(base, self.target_length, self.layout).to(base.device)
        return load_rope_encoder(path, base.config, self.rope, base.dtype, attn_implementation).to(base.device)

    def frozen_rows(self, base_config: PretrainedConfig) -> dict[str, torch.Tensor]:
        """encoder.train.freeze_original_rows: the rows of the extended table that hold the original rows, by
        parameter name (a RoPE encoder has no table: nothing). `base_config` is the unextended model's."""
        if self.rope is not None:
            return {}
        name = family_of(base_config).module + ".weight"
        return {name: original_rows(base_config, self.layout, round(self.factor))}

    def note(self) -> dict:
        """What extend_encoder.json records about the positions of the export."""
        common = {"original_length": self.original_length, "target_length": self.target_length,
                  "factor": round(self.factor, 6)}
        if self.rope is None:
            return {"method": f"learned position table, {self.layout} layout (extend.encoders.positions)",
                    **common, "position_ids": "consecutive (stock)"}
        return {"method": f"RoPE {self.rope.method.name} (extend.rope; config.json rope_parameters and "
                          "extend_position_method hold it)", **common, "attention_type": self.rope.attention_type}


def plan_extension(enc: EncoderConfig, rope: RopeConfig, config: PretrainedConfig) -> Extension:
    """The extension for this model, or one ConfigError naming the key and the fix."""
    if uses_rope(config):
        for key, value, default in (("table", enc.table, "interpolate"),
                                    ("train.freeze_original_rows", enc.train.freeze_original_rows, False)):
            if value != default:
                raise ConfigError([f"encoder.{key}={value}: applies to a learned position table; {config.model_type} "
                                   f"encoders use RoPE (rope=METHOD): remove it"])
        resolved = resolve_encoder_rope(rope, config, enc.target_length)
        return Extension(resolved.original_length, enc.target_length, resolved.method.name, describe(resolved),
                         resolved)
    if enc.table not in LAYOUTS:
        raise ConfigError([f"encoder.table={enc.table!r}: choose one of {', '.join(LAYOUTS)}"])
    family_of(config)  # one error for a model type with neither a table nor RoPE
    if rope != RopeConfig():
        raise ConfigError([f"rope.type={rope.type}: {config.model_type} encoders have a learned position table, "
                           "extended to encoder.target_length as encoder.table says; remove the rope settings"])
    factor = check_target(config, enc.target_length)
    if enc.table == "interpolate":
        return Extension(original_length(config), enc.target_length, "interpolated",
                         f"position table interpolated x{factor} to {enc.target_length}, no training")
    return Extension(original_length(config), enc.target_length, "recurrent",
                     f"position table repeated x{factor} to {enc.target_length} (row p = original row p mod "
                     f"{original_length(config)}), no training", layout="recurrent")


def trainable_problems(enc: EncoderConfig, config: PretrainedConfig) -> list[str]:
    """encoder.train.trainable checked against the model's parameter names, read from a weightless (meta)
    build, so a pattern that matches nothing fails before the evaluation, not after it."""
    if not enc.train.steps:
        return []
    with torch.device("meta"):
        names = [n for n, _ in AutoModel.from_config(config).named_parameters()]
    if any(p in n for p in enc.train.trainable for n in names):
        return []
    parts = sorted({n.split(".")[0] for n in names})
    return [f"encoder.train.trainable: {enc.train.trainable} matches no parameter of {config.model_type}; use parts "
            f"of names such as {', '.join(parts)}"]
