"""Model families: presets, loading, and what a position method needs from a model."""

from extend.models.export import extended_length, save_extended
from extend.models.loading import attention_for, build_random, load_base_config, load_base_model, load_pretrained
from extend.models.rotary import restore_float32_rope, set_attention_scaling, set_rope_theta
from extend.models.presets import PRESETS

__all__ = [
    "PRESETS",
    "attention_for",
    "build_random",
    "extended_length",
    "load_base_config",
    "load_base_model",
    "load_pretrained",
    "restore_float32_rope",
    "save_extended",
    "set_attention_scaling",
    "set_rope_theta",
]
