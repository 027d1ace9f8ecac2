"""Write a model whose positions were changed so that stock loaders read it at its extended length."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from extend.rope.export import served_lengths


def extended_length(config) -> int:
    """The context length the model's config addresses, as transformers reads it."""
    return served_lengths(config.to_dict(), None)["transformers"]


def save_extended(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, out_dir: str | Path) -> Path:
    """Save safetensors weights and config; the tokenizer's model_max_length becomes the extended length,
    which also caps vLLM's derived length at it (export.py explains the rules)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.model_max_length = extended_length(model.config)
        tokenizer.save_pretrained(out)
    return out
