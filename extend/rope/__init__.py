"""Position methods: pure frequency functions, their portable export, and how they reach a model."""

from extend.rope.apply import ModelGeometry, ResolvedRope, apply_rope, config_served_lengths, resolve_rope
from extend.rope.export import served_lengths
from extend.rope.methods import METHODS, RopeMethod

__all__ = [
    "METHODS",
    "ModelGeometry",
    "ResolvedRope",
    "RopeMethod",
    "apply_rope",
    "config_served_lengths",
    "resolve_rope",
    "served_lengths",
]
