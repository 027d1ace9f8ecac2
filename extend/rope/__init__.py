"""Position methods: one registry entry per method (its frequencies, portable export and validation), and
how a method reaches a model config."""

from extend.rope.apply import (
    ModelGeometry,
    ResolvedRope,
    apply_rope,
    config_served_lengths,
    resolve_rope,
    rope_problems,
)
from extend.rope.export import served_lengths
from extend.rope.registry import METHODS, PositionMethod, RopeMethod, methods_reading

__all__ = [
    "METHODS",
    "ModelGeometry",
    "PositionMethod",
    "ResolvedRope",
    "RopeMethod",
    "apply_rope",
    "config_served_lengths",
    "methods_reading",
    "resolve_rope",
    "rope_problems",
    "served_lengths",
]
