"""Model families: presets, loading, and what a position method needs from a model."""

from extend.models.loading import attention_for, build_random, load_base_config, load_pretrained
from extend.models.presets import PRESETS

__all__ = ["PRESETS", "attention_for", "build_random", "load_base_config", "load_pretrained"]
