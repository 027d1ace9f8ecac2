"""Tiny model configs built in code: for tests, and for inspecting position methods offline.

They are randomly initialised; they say nothing about quality, only about shapes and positions.
"""

from __future__ import annotations

from typing import Callable

from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, PreTrainedConfig, Qwen2Config

_SHAPE = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)

# The architecture of the project's own tiny base (recipes/tiny_base.yaml pretrains it at 128 tokens):
# 4 layers, 4 heads of 32 dims, a tied 4096-token embedding; about 1.4M parameters.
TINY_BASE_SHAPE = dict(
    vocab_size=4096,
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=128,
    tie_word_embeddings=True,
)

PRESETS: dict[str, Callable[[], PreTrainedConfig]] = {
    "tiny-base-llama": lambda: LlamaConfig(**TINY_BASE_SHAPE, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "tiny-llama": lambda: LlamaConfig(**_SHAPE, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "tiny-qwen2": lambda: Qwen2Config(
        **_SHAPE, use_sliding_window=False, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}
    ),
    "tiny-mistral": lambda: MistralConfig(
        **_SHAPE, sliding_window=None, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}
    ),
    # RoPE parameters per attention type, as in Gemma 3: a local base for the sliding-window layer, a global
    # one for the full-attention layer (position methods rescale the global one).
    "tiny-gemma3": lambda: Gemma3TextConfig(
        **_SHAPE, head_dim=16, query_pre_attn_scalar=16, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
    ),
}
