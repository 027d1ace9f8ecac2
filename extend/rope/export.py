"""The portable form of each method: what a checkpoint's config.json says, and the length tools read.

Each method is written in the most portable form stock loaders understand:
- native transformers types where one exists (linear, dynamic, yarn, llama3, longrope);
- a plain `rope_theta` where the method is only a new base (abf, and ntk, whose base b*s^(d/(d-2))
  gives exactly the same frequencies);
- `longrope` with short_factor = long_factor = theta_i / theta'_i and an explicit attention factor for
  any static per-dimension rescaling (power, truncated); a zero frequency gets a huge finite factor;
- `entropy_abf`, which no stock loader can express, as a custom rope type that only `import extend`
  registers: loading it without extend fails at model construction instead of running silently;
- `lm_infinite` and `self_extend` the same way: their relative positions differ per (query, key) pair, which
  no rope type of a stock loader can express (extend/rope/remapped.py).

Lengths: transformers' dynamic scaling and vLLM's length rule both treat `max_position_embeddings` as
the *original* length for linear and dynamic (vLLM multiplies it by `factor`), while yarn, llama3,
longrope and plain bases carry the extended length there. `served_lengths` re-implements both readers'
rules so tests can prove that every export arrives at the extended length, not s times it.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from extend.rope.methods import (
    AbfParams,
    EntropyAbfParams,
    LmInfiniteParams,
    SelfExtendParams,
    Llama3Params,
    LongRopeParams,
    ScaleParams,
    YarnParams,
    default_inv_freq,
    ntk_base,
)

# A zero frequency cannot be written as a finite longrope factor theta_i / 0; this one makes the
# angle at a million positions smaller than 1e-20 rad, which is zero to float32 cos and sin.
ZERO_FREQUENCY_FACTOR = 1e30
ENTROPY_ROPE_TYPE = "entropy_abf"
LM_INFINITE_ROPE_TYPE = "lm_infinite"
SELF_EXTEND_ROPE_TYPE = "self_extend"
# config.json rope types that only `import extend` registers: a stock loader cannot build such a model.
EXTEND_ONLY_ROPE_TYPES = (ENTROPY_ROPE_TYPE, LM_INFINITE_ROPE_TYPE, SELF_EXTEND_ROPE_TYPE)
# Key under which a saved config.json records how its positions were changed.
PROVENANCE_KEY = "extend_position_method"
# The attention type a method rescales in configs with RoPE parameters per type (ModernBERT, Gemma 3).
DEFAULT_ATTENTION_TYPE = "full_attention"


def scaled_rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """The one set of RoPE parameters that carries the method. A config with parameters per attention
    type (every value a dict) has the method in the type its provenance names (default full_attention)."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope and all(isinstance(v, dict) for v in rope.values()):
        attention_type = (config.get(PROVENANCE_KEY) or {}).get("attention_type") or DEFAULT_ATTENTION_TYPE
        return rope.get(attention_type) or {}
    return rope


def linear_export(dim: int, base: float, p: ScaleParams) -> tuple[dict[str, Any], int]:
    return {"rope_type": "linear", "factor": p.factor, "rope_theta": base}, p.original_max_position_embeddings


def dynamic_export(dim: int, base: float, p: ScaleParams) -> tuple[dict[str, Any], int]:
    return {"rope_type": "dynamic", "factor": p.factor, "rope_theta": base}, p.original_max_position_embeddings


def ntk_export(dim: int, base: float, p: ScaleParams) -> tuple[dict[str, Any], int]:
    return {"rope_type": "default", "rope_theta": ntk_base(dim, base, p.factor)}, p.extended_length


def abf_export(dim: int, base: float, p: AbfParams) -> tuple[dict[str, Any], int]:
    return {"rope_type": "default", "rope_theta": p.rope_theta}, p.extended_length


def yarn_export(dim: int, base: float, p: YarnParams) -> tuple[dict[str, Any], int]:
    rope = {
        "rope_type": "yarn",
        "factor": p.factor,
        "original_max_position_embeddings": p.original_max_position_embeddings,
        "beta_fast": p.beta_fast,
        "beta_slow": p.beta_slow,
        "rope_theta": base,
    }
    if p.attention_factor is not None:
        rope["attention_factor"] = p.attention_factor
    return rope, p.extended_length


def llama3_export(dim: int, base: float, p: Llama3Params) -> tuple[dict[str, Any], int]:
    rope = {
        "rope_type": "llama3",
        "factor": p.factor,
        "low_freq_factor": p.low_freq_factor,
        "high_freq_factor": p.high_freq_factor,
        "original_max_position_embeddings": p.original_max_position_embeddings,
        "rope_theta": base,
    }
    return rope, p.extended_length


def _longrope_fields(
    short: list[float], long: list[float], base: float, p: ScaleParams, attention: float | None
) -> dict[str, Any]:
    rope = {
        "rope_type": "longrope",
        "short_factor": short,
        "long_factor": long,
        "factor": p.factor,
        "original_max_position_embeddings": p.original_max_position_embeddings,
        "rope_theta": base,
    }
    if attention is not None:
        # transformers reads attention_factor; vLLM reads short_mscale / long_mscale.
        rope.update(attention_factor=attention, short_mscale=attention, long_mscale=attention)
    return rope


def longrope_export(dim: int, base: float, p: LongRopeParams) -> tuple[dict[str, Any], int]:
    rope = _longrope_fields(list(p.short_factor), list(p.long_factor), base, p, p.attention_factor)
    return rope, p.extended_length


def as_longrope_export(inv_freq_fn: Callable) -> Callable:
    """Export a static per-dimension rescaling as longrope factors theta_i / theta'_i."""

    def export(dim: int, base: float, p: ScaleParams) -> tuple[dict[str, Any], int]:
        theta = default_inv_freq(dim, base)
        scaled, attention = inv_freq_fn(dim, base, p)
        scaled = scaled.to(theta.dtype)
        factors = [
            float(t / s) if s > 0 else ZERO_FREQUENCY_FACTOR for t, s in zip(theta.tolist(), scaled.tolist())
        ]
        return _longrope_fields(factors, factors, base, p, attention), p.extended_length

    return export


def entropy_abf_export(dim: int, base: float, p: EntropyAbfParams) -> tuple[dict[str, Any], int]:
    rope = {
        "rope_type": ENTROPY_ROPE_TYPE,
        "rope_theta": p.rope_theta,
        "log_scale_length": p.effective_log_scale_length,
        "exempt_layers": p.exempt_layers,
        "original_max_position_embeddings": p.original_max_position_embeddings,
    }
    return rope, p.extended_length


def lm_infinite_export(dim: int, base: float, p: LmInfiniteParams) -> tuple[dict[str, Any], int]:
    rope = {
        "rope_type": LM_INFINITE_ROPE_TYPE,
        "rope_theta": base,
        "global_tokens": p.global_tokens,
        "local_window": p.effective_local_window,
        "distance_limit": p.effective_distance_limit,
        "original_max_position_embeddings": p.original_max_position_embeddings,
    }
    return rope, p.extended_length


def self_extend_export(dim: int, base: float, p: SelfExtendParams) -> tuple[dict[str, Any], int]:
    rope = {
        "rope_type": SELF_EXTEND_ROPE_TYPE,
        "rope_theta": base,
        "group_size": p.effective_group_size,
        "neighbor_window": p.effective_neighbor_window,
        "original_max_position_embeddings": p.original_max_position_embeddings,
    }
    return rope, p.extended_length


# transformers rope types (config.json's vocabulary, not rope.type's) whose `factor` multiplies
# max_position_embeddings into the served length.
FACTOR_OVER_MAX_POSITION = ("linear", "dynamic")


def served_lengths(config: dict[str, Any], tokenizer_max_length: int | None) -> dict[str, int]:
    """The context length each reader derives from a saved config.json and tokenizer.

    - transformers: `max_position_embeddings`, times `factor` for linear and dynamic, whose factor is
      defined over max_position_embeddings ("a factor of x handles x times the original length");
    - tokenizer: `model_max_length` (truncation and length warnings);
    - vLLM (`_get_and_verify_max_len`): the smallest length key of config.json (a `model_max_length`
      there wins outright), capped by the tokenizer's model_max_length, then times `factor` for every
      rope type but longrope and llama3, where yarn starts from original_max_position_embeddings;
      longrope defaults to a top-level original_max_position_embeddings when config.json has one.
    """
    rope = scaled_rope_parameters(config)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    max_position = config["max_position_embeddings"]

    transformers_length = max_position
    if rope_type in FACTOR_OVER_MAX_POSITION:
        transformers_length = max_position * rope["factor"]

    length_keys = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length")
    vllm = min(config[k] for k in length_keys if config.get(k) is not None)
    if config.get("model_max_length"):
        vllm = config["model_max_length"]
    if tokenizer_max_length is not None:
        vllm = min(vllm, tokenizer_max_length)
    if rope_type not in ("su", "longrope", "llama3"):
        factor = rope.get("factor", 1.0)
        if rope_type == "yarn":
            vllm = rope["original_max_position_embeddings"]
        vllm = vllm * factor
    if rope_type == "longrope" and config.get("original_max_position_embeddings"):
        # vLLM serves longrope models at a top-level original_max_position_embeddings by default.
        vllm = config["original_max_position_embeddings"]
    return {
        "transformers": int(math.floor(transformers_length)),
        "tokenizer": int(tokenizer_max_length) if tokenizer_max_length is not None else None,
        "vllm": int(vllm),
    }
