"""Resolve a `rope` config against a model config, and write the method into the config before the model
is built (transformers computes `inv_freq` in the rotary module's __init__, so changing the config of a
built model silently does nothing)."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedConfig

from extend.config import ConfigError, RopeConfig
from extend.rope.export import DEFAULT_ATTENTION_TYPE, PROVENANCE_KEY, served_lengths
from extend.rope.registry import METHODS, PARAMETER_HINTS, PositionMethod, methods_reading


@dataclass(frozen=True)
class ModelGeometry:
    """What a position method needs to know about the model it is applied to."""

    head_dim: int
    rotary_dim: int
    num_layers: int
    rope_theta: float
    rope_type: str
    max_position_embeddings: int | None

    @classmethod
    def of(cls, config: PreTrainedConfig, attention_type: str | None = None) -> ModelGeometry:
        """The geometry a method rescales: the model's one set of RoPE parameters, or the set of
        `attention_type` where the config keeps one per type. A checkpoint this project extended records its
        pretrained base and length (PROVENANCE_KEY), so extending it again (YaRN's 64k -> 128k) starts from those."""
        rope = dict(getattr(config, "rope_parameters", None) or {})
        if attention_type is not None:
            rope = dict(rope.get(attention_type) or {})
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        partial = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None)) or 1.0
        rope_theta = float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        max_position = getattr(config, "max_position_embeddings", None)
        provenance = getattr(config, PROVENANCE_KEY, None)
        if provenance and provenance.get("attention_type") == attention_type:
            rope_theta, rope_type = float(provenance["base_rope_theta"]), "default"
            max_position = int(provenance["original_max_position_embeddings"])
        return cls(head_dim, int(head_dim * partial), config.num_hidden_layers, rope_theta, rope_type, max_position)


@dataclass(frozen=True)
class ResolvedRope:
    """A validated method bound to a model: its parameters, the base it rescales and the rotary dim."""

    method: PositionMethod
    params: Any
    base: float
    rotary_dim: int
    # The attention type rescaled where the config keeps RoPE parameters per type; None: the one set.
    attention_type: str | None = None

    @property
    def original_length(self) -> int:
        return self.params.original_max_position_embeddings

    @property
    def extended_length(self) -> int:
        return self.params.extended_length

    def inv_freq(self, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
        return self.method.inv_freq(self.rotary_dim, self.base, self.params, seq_len=seq_len)

    def hf_fields(self) -> tuple[dict[str, Any], int]:
        """(rope_parameters, max_position_embeddings) as config.json will carry them."""
        return self.method.export(self.rotary_dim, self.base, self.params)

    def provenance(self) -> dict[str, Any]:
        fields = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self.params).items()}
        scope = {"attention_type": self.attention_type} if self.attention_type else {}
        return {"type": self.method.name, "base_rope_theta": self.base, **scope, **fields}


def _as_rope_config(rope_cfg: RopeConfig | DictConfig | dict) -> RopeConfig:
    if isinstance(rope_cfg, RopeConfig):
        return rope_cfg
    if isinstance(rope_cfg, DictConfig):
        rope_cfg = OmegaConf.to_container(rope_cfg, resolve=True)
    unknown = set(rope_cfg) - {f.name for f in dataclasses.fields(RopeConfig)}
    if unknown:
        raise ConfigError([f"rope.{k} is not a rope setting; see conf/rope/*.yaml for the keys" for k in sorted(unknown)])
    return RopeConfig(**rope_cfg)


def rope_attention_types(config: PreTrainedConfig) -> list[str]:
    """The attention types of a config whose rope_parameters are keyed by type ([] for one shared set)."""
    rope = getattr(config, "rope_parameters", None) or {}
    return sorted(rope) if rope and all(isinstance(v, dict) for v in rope.values()) else []


def _attention_type(
    cfg: RopeConfig, method: PositionMethod, model_config: PreTrainedConfig
) -> tuple[str | None, list[str]]:
    """(the attention type the method rescales or None for a config with one set of parameters, problems).

    Where RoPE parameters are kept per attention type (ModernBERT, Gemma 3), the method rescales one type,
    full_attention by default: sliding-window layers never see a distance beyond their window, so their
    positions need no extension, and they keep their own base."""
    types = rope_attention_types(model_config)
    if not types:
        if cfg.attention_type is not None:
            return None, [f"rope.attention_type={cfg.attention_type!r}: this model keeps one set of RoPE "
                          "parameters for every layer; remove rope.attention_type"]
        return None, []
    chosen = DEFAULT_ATTENTION_TYPE if cfg.attention_type is None else cfg.attention_type
    problems = []
    if chosen not in types:
        problems.append(f"rope.attention_type={chosen!r}: this model keeps RoPE parameters per attention type "
                        f"({', '.join(types)}); set rope.attention_type to one of them")
    if method.scales_queries:
        problems.append(f"rope.type={method.name} scales the queries of every layer past rope.exempt_layers, not one "
                        f"attention type; with RoPE parameters per attention type ({', '.join(types)}) use a method "
                        "that only changes frequencies (e.g. abf)")
    if method.inference_only:
        problems.append(f"rope.type={method.name} remaps relative positions in the attention of every layer, not one "
                        f"attention type; with RoPE parameters per attention type ({', '.join(types)}) use a method "
                        "that only changes frequencies (e.g. yarn)")
    return chosen, problems


def rope_problems(rope_cfg: RopeConfig | DictConfig | dict, model_config: PreTrainedConfig | None = None) -> list[str]:
    """Every problem of `rope_cfg`, one line each naming `rope.<key>` and the fix; [] when it is valid.

    With `model_config`, the method is checked against that model (its rotary dim, layer count, length and
    RoPE parameters); without it, only what the config alone decides (for a validation before any model
    config is read)."""
    try:
        return _bind(_as_rope_config(rope_cfg), model_config)[1]
    except ConfigError as err:
        return list(err.problems)


def resolve_rope(rope_cfg: RopeConfig | DictConfig | dict, model_config: PreTrainedConfig) -> ResolvedRope | None:
    """Validate `rope_cfg` for this model and bind it, reporting every problem at once (ConfigError).

    Returns None for `rope.type: none` (the model keeps its own positions).
    """
    resolved, problems = _bind(_as_rope_config(rope_cfg), model_config)
    if problems:
        raise ConfigError(problems)
    return resolved


def _bind(cfg: RopeConfig, model_config: PreTrainedConfig | None) -> tuple[ResolvedRope | None, list[str]]:
    """(the method bound to the model, problems). Without a model config nothing is bound: problems only."""
    problems: list[str] = []
    set_fields = {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(RopeConfig)
        if f.name not in ("type", "factor", "original_max_position_embeddings", "attention_type")
        and getattr(cfg, f.name) is not None
    }

    if cfg.type == "none":
        if set_fields or cfg.factor != 1.0 or cfg.attention_type is not None:
            named = sorted(set_fields) + (["attention_type"] if cfg.attention_type is not None else [])
            problems.append(f"rope.type is none but {named or ['factor']} is set: pick a method with rope=NAME "
                            "or remove those keys")
        return None, problems

    method = METHODS.get(cfg.type)
    if method is None:
        return None, [f"rope.type={cfg.type!r} is not a known position method; choose one of: none, "
                      f"{', '.join(METHODS)}"]

    geometry, attention_type = None, None
    if model_config is not None:
        attention_type, problems = _attention_type(cfg, method, model_config)
        if problems:
            return None, problems  # without a valid type there is no base or rotary dim to check the rest against
        geometry = ModelGeometry.of(model_config, attention_type)
        problems += _geometry_problems(geometry)

    length, scale_problems = _scale(cfg, geometry)
    problems += scale_problems
    for name in sorted(set(set_fields) - set(method.param_names)):
        problems.append(f"rope.{name} is not a parameter of {cfg.type} (read by: {', '.join(methods_reading(name))}); "
                        "remove it")

    kwargs: dict[str, Any] = {"factor": float(cfg.factor), "original_max_position_embeddings": length}
    kwargs |= {name: tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else value
               for name, value in set_fields.items() if method.reads(name)}
    missing = [f"rope.{f.name} is required for {cfg.type}: set it"
               + (f" ({PARAMETER_HINTS[f.name]})" if f.name in PARAMETER_HINTS else "")
               for f in dataclasses.fields(method.params) if f.default is dataclasses.MISSING and f.name not in kwargs]
    if missing:
        return None, problems + missing
    # Checked on the bound parameters, so the method's own defaults are held to the same rules. (Without a
    # model the length may still be unknown; no method's check reads it.)
    params = method.params(**kwargs)
    problems += method.check(params, geometry)
    if problems or geometry is None:
        return None, problems
    return ResolvedRope(method, params, geometry.rope_theta, geometry.rotary_dim, attention_type), []


def _scale(cfg: RopeConfig, geometry: ModelGeometry | None) -> tuple[int | None, list[str]]:
    """(the original length L, problems with rope.factor and L). L is the model's length unless set; None
    when neither is known."""
    problems = []
    if not math.isfinite(cfg.factor) or cfg.factor < 1:
        problems.append(f"rope.factor={cfg.factor} must be >= 1 (the extended length / the original length): "
                        "set rope.factor to target length / original length")
    length = cfg.original_max_position_embeddings
    if length is None and geometry is not None:
        length = geometry.max_position_embeddings
        if length is None:
            problems.append(
                "rope.original_max_position_embeddings is missing and the model config has no max_position_embeddings: "
                "set rope.original_max_position_embeddings to the length the base was trained at"
            )
    if length is not None and length < 2:
        problems.append(f"rope.original_max_position_embeddings={length} must be at least 2: set it to the length "
                        "the base was trained at, or remove it to use the model's max_position_embeddings")
    elif length is not None and cfg.factor >= 1 and abs(cfg.factor * length - round(cfg.factor * length)) > 1e-6:
        problems.append(
            f"rope.factor={cfg.factor} x original length {length} = {cfg.factor * length} is not a whole number of "
            "positions: choose a factor that gives an integer extended length"
        )
    return length, problems


def _geometry_problems(geometry: ModelGeometry) -> list[str]:
    problems = []
    if geometry.rotary_dim % 2:
        problems.append(
            f"the model's rotary dimension is {geometry.rotary_dim} (head_dim {geometry.head_dim}); RoPE needs an "
            "even dimension: fix head_dim / partial_rotary_factor in the model config"
        )
    if geometry.rope_type != "default":
        problems.append(
            f"the base model already uses rope_type={geometry.rope_type!r} and does not record the base it was "
            "extended from; stacking a second method is not supported: start from a base with default RoPE or set rope=none"
        )
    return problems


def apply_rope(model_config: PreTrainedConfig, resolved: ResolvedRope | None) -> PreTrainedConfig:
    """A copy of `model_config` carrying the method in its portable form (see export.py)."""
    config = copy.deepcopy(model_config)
    if resolved is None:
        return config
    rope_parameters, max_position = resolved.hf_fields()
    every_type = copy.deepcopy(getattr(model_config, "rope_parameters", None) or {})
    previous = every_type if resolved.attention_type is None else every_type[resolved.attention_type]
    if "partial_rotary_factor" in previous:
        rope_parameters["partial_rotary_factor"] = previous["partial_rotary_factor"]
    if resolved.attention_type is None:
        config.rope_parameters = rope_parameters
    else:  # only the rescaled type changes; the others keep their own parameters
        config.rope_parameters = {**every_type, resolved.attention_type: rope_parameters}
    config.max_position_embeddings = max_position
    setattr(config, PROVENANCE_KEY, resolved.provenance())
    return config


def config_served_lengths(config: PreTrainedConfig, tokenizer_max_length: int | None) -> dict[str, int]:
    """served_lengths() for an in-memory config, read exactly as its saved config.json would be."""
    return served_lengths(config.to_dict(), tokenizer_max_length)
