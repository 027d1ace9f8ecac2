"""Write a model whose positions were changed so that stock loaders read it at its extended length."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from extend.rope.export import served_lengths


def extended_length(config) -> int:
    """The context length the model's config addresses, as transformers reads it."""
    return served_lengths(config.to_dict(), None)["transformers"]


# Weights are written in safetensors shards of at most this size (with model.safetensors.index.json past
# one shard): the writer holds one shard's bytes at a time, so this bounds the host memory the save adds to
# the model's (transformers' default, 50GB, would add up to 50 GB).
SHARD_SIZE = "5GB"


def save_extended(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, out_dir: str | Path,
                  max_shard_size: int | str = SHARD_SIZE) -> Path:
    """Save safetensors weights (in shards of `max_shard_size`) and config; the tokenizer's model_max_length
    becomes the extended length, which also caps vLLM's derived length at it (export.py explains the rules)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True, max_shard_size=max_shard_size)
    if tokenizer is not None:
        tokenizer.model_max_length = extended_length(model.config)
        tokenizer.save_pretrained(out)
    return out
