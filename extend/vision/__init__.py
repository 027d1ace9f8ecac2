"""Vision-language models (InternVL): RoPE scaling on the language model through extend.rope, V2PE
positions for image tokens (Ge et al. 2024), a short fine-tune on a synthetic image-text task, export."""

from extend.vision.generate import generate_v2pe
from extend.vision.model import FAMILIES, PRESETS, extended_config, resolve_text_rope
from extend.vision.v2pe import v2pe_position_ids

__all__ = ["FAMILIES", "PRESETS", "extended_config", "generate_v2pe", "resolve_text_rope", "v2pe_position_ids"]
