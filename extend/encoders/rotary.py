"""Encoders with RoPE: ModernBERT, and decoder-based embedders (E5-Mistral, gte-Qwen2, Qwen3-Embedding).

Their positions are a rotation, not a table, so they take the decoder path's position methods (extend.rope):
rope.factor is encoder.target_length / the original length, the method is written into the config before
the model is built, and the original weights load unchanged (RoPE has none). ModernBERT keeps RoPE
parameters per attention type; only its full_attention (global) layers are rescaled, as its sliding-window
layers never see a distance beyond their 128-token window.
"""

from __future__ import annotations

import copy

import torch
from transformers import AutoModel, PretrainedConfig, PreTrainedModel

from extend.config import ConfigError, RopeConfig
from extend.models.loading import NO_HUB_KERNELS
from extend.rope import METHODS, ResolvedRope, apply_rope, resolve_rope

# model_type -> what it is. Each is loaded with AutoModel and read from last_hidden_state.
ROPE_FAMILIES = {
    "modernbert": "ModernBERT, bidirectional (e.g. nomic-ai/modernbert-embed-base)",
    "llama": "decoder-based embedder",
    "mistral": "decoder-based embedder (e.g. intfloat/e5-mistral-7b-instruct)",
    "qwen2": "decoder-based embedder (e.g. Alibaba-NLP/gte-Qwen2-1.5B-instruct)",
    "qwen3": "decoder-based embedder (e.g. Qwen/Qwen3-Embedding-0.6B)",
}


def uses_rope(config: PretrainedConfig) -> bool:
    return config.model_type in ROPE_FAMILIES


def rope_original_length(rope: RopeConfig, config: PretrainedConfig) -> int:
    """L: the length the base was trained at (rope.original_max_position_embeddings, else the config's).
    Set it where the config overstates it: E5-Mistral's config says 32768, it was trained at 4096."""
    return rope.original_max_position_embeddings or config.max_position_embeddings


def resolve_encoder_rope(rope: RopeConfig, config: PretrainedConfig, target_length: int) -> ResolvedRope:
    """The method bound to this encoder with rope.factor = target / L, or one ConfigError with every problem."""
    old = rope_original_length(rope, config)
    if target_length <= old:
        raise ConfigError([f"encoder.target_length: {target_length} must be larger than the model's original length "
                           f"{old} (e.g. {old * 4})"])
    if rope.type == "none":
        raise ConfigError([f"rope.type is none, but {config.model_type} encoders reach encoder.target_length="
                           f"{target_length} through a position method: add rope=yarn (or linear, ntk, dynamic, ...)"])
    if rope.type in METHODS and METHODS[rope.type].inference_only:
        raise ConfigError([f"rope.type={rope.type} is a training-free method for causal decoders (its remapped "
                           "attention assumes keys before the query); encoders train and attend both ways: use yarn, "
                           "linear, ntk or dynamic"])
    factor = target_length / old
    if rope.factor not in (1.0, factor):
        raise ConfigError([f"rope.factor={rope.factor:g} disagrees with encoder.target_length={target_length} (original "
                           f"{old}): set rope.factor={factor:g}, or rope.factor=1 to derive it from the target length"])
    bound = copy.copy(rope)
    bound.factor = factor
    return resolve_rope(bound, config)


def load_rope_encoder(path: str, config: PretrainedConfig, resolved: ResolvedRope, dtype: torch.dtype,
                      attn_implementation: str = "sdpa") -> PreTrainedModel:
    """The checkpoint's weights under the config carrying the method (AutoModel, no task head), in eval mode.
    Loaded, not copied from a model in memory: a 7B embedder is not initialised twice."""
    return AutoModel.from_pretrained(path, config=apply_rope(config, resolved), dtype=dtype,
                                     attn_implementation=attn_implementation, **NO_HUB_KERNELS).eval()


def describe(resolved: ResolvedRope) -> str:
    scope = f" on its {resolved.attention_type} layers" if resolved.attention_type else ""
    return (f"RoPE {resolved.method.name} x{resolved.params.factor:g}{scope} "
            f"({resolved.original_length} -> {resolved.extended_length}), no training")
