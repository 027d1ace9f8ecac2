"""The position methods, one entry each: the name a config's `rope.type` uses, its typed parameters, its
frequencies (methods.py), its portable export (export.py) and its validation (below).

This is the only place that tells methods apart by name: code elsewhere looks a method up here and reads
its entry (`METHODS[name].scales_queries`, `methods_reading("rope_theta")`), never compares names. A new
method is one frequency function, one export function, one check and one line in METHODS.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from extend.rope import clex, export, methods
from extend.rope.methods import (
    AbfParams,
    ClexParams,
    EntropyAbfParams,
    Llama3Params,
    LmInfiniteParams,
    LongRopeParams,
    PowerParams,
    SelfExtendParams,
    ScaleParams,
    TruncatedParams,
    YarnParams,
)

if TYPE_CHECKING:
    from extend.rope.apply import ModelGeometry

# (rotary dim, base, params, seq_len=None) -> (inv_freq float32, attention factor).
InvFreqFn = Callable[..., tuple[torch.Tensor, float]]
# (rotary dim, base, params) -> (config.json rope_parameters, max_position_embeddings).
ExportFn = Callable[..., tuple[dict[str, Any], int]]
# (params, model geometry or None when no model is known yet) -> one line per problem, each naming rope.<key>.
CheckFn = Callable[[Any, "ModelGeometry | None"], list[str]]
# (params, extended length) -> extra lines for `extend inspect`.
NotesFn = Callable[[Any, int], list[str]]


def _no_notes(params: Any, extended_length: int) -> list[str]:
    return []


@dataclass(frozen=True)
class PositionMethod:
    """A registered position method."""

    name: str
    params: type
    inv_freq: InvFreqFn
    export: ExportFn
    check: CheckFn
    summary: str
    # The frequencies depend on the running sequence length.
    dynamic: bool = False
    # Part of the method lives in attention (a query scale in every layer past rope.exempt_layers), so it
    # needs extend's attention functions and cannot be confined to one attention type.
    scales_queries: bool = False
    notes: NotesFn = _no_notes
    # A training-free inference method whose relative positions are remapped per (query, key) pair in
    # attention (extend/rope/remapped.py): it needs extend's attention function, is evaluated, never trained,
    # and cannot be confined to one attention type.
    inference_only: bool = False
    # The attention temperature (the scale on cos and sin) the method sets for a length ratio s, for a method
    # whose temperature follows the length; curriculum.pose_temperature=window trains PoSE stages with it at
    # the rows' real length.
    temperature: Callable[[float], float] | None = None

    def reads(self, key: str) -> bool:
        """Whether `rope.<key>` is one of this method's parameters."""
        return key in self.param_names

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.params))


# What a method parameter means, for problems that name it (a required one missing, a value out of range).
PARAMETER_HINTS = {
    "rope_theta": "the new base, e.g. 500000",
    "power": "the exponent k of (1 - 2i/d)^k, e.g. 0.25",
    "truncation_length": "T in tokens, e.g. the original length / 8",
    "short_factor": "head_dim / 2 per-dimension factors",
    "long_factor": "head_dim / 2 per-dimension factors",
    "t_max": "the largest length ratio trained, e.g. 8",
}

# Checks. `factor` and `original_max_position_embeddings` are checked for every method in apply.py; a
# check here sees the method's bound parameters (its own defaults included) and, when a model is known,
# the model's geometry.


def _positive(p: Any, *names_and_fixes: tuple[str, str]) -> list[str]:
    problems = []
    for name, fix in names_and_fixes:
        value = getattr(p, name)
        if value is not None and not value > 0:
            problems.append(f"rope.{name}={value} must be > 0: {fix}")
    return problems


def check_scale(p: ScaleParams, geometry: ModelGeometry | None) -> list[str]:
    """linear, ntk, dynamic: nothing beyond the factor and length every method has."""
    return []


def check_yarn(p: YarnParams, geometry: ModelGeometry | None) -> list[str]:
    problems = _positive(
        p,
        ("beta_fast", "set the rotations within L above which dims keep their frequency, e.g. 32"),
        ("beta_slow", "set the rotations within L below which dims are interpolated, e.g. 1"),
        ("attention_factor", "remove it to use 0.1 ln(s) + 1"),
    )
    if not problems and p.beta_fast <= p.beta_slow:
        problems.append(f"rope.beta_fast must be larger than rope.beta_slow (got {p.beta_fast} <= {p.beta_slow}): "
                        "raise rope.beta_fast or lower rope.beta_slow")
    return problems


def check_llama3(p: Llama3Params, geometry: ModelGeometry | None) -> list[str]:
    problems = _positive(p, ("low_freq_factor", "e.g. 1"), ("high_freq_factor", "e.g. 4"))
    if not problems and p.high_freq_factor <= p.low_freq_factor:
        problems.append(f"rope.high_freq_factor must be larger than rope.low_freq_factor (got {p.high_freq_factor} "
                        f"<= {p.low_freq_factor}): raise rope.high_freq_factor")
    return problems


def check_longrope(p: LongRopeParams, geometry: ModelGeometry | None) -> list[str]:
    problems = _positive(p, ("attention_factor", "remove it to use sqrt(1 + ln(s) / ln(L))"))
    for name in ("short_factor", "long_factor"):
        values = getattr(p, name)
        if geometry is not None and len(values) != geometry.rotary_dim // 2:
            problems.append(f"rope.{name} has {len(values)} values; this model needs rotary_dim / 2 = "
                            f"{geometry.rotary_dim // 2}: give one factor per frequency")
        if any(not v > 0 for v in values):
            problems.append(f"rope.{name} values must all be > 0: a factor divides a frequency")
    return problems


def check_abf(p: AbfParams, geometry: ModelGeometry | None) -> list[str]:
    return _positive(p, ("rope_theta", "set " + PARAMETER_HINTS["rope_theta"]))


def check_power(p: PowerParams, geometry: ModelGeometry | None) -> list[str]:
    if not p.power >= 0:
        return [f"rope.power={p.power} must be >= 0 (0 leaves the frequencies unchanged): "
                f"set {PARAMETER_HINTS['power']}"]
    return []


def check_truncated(p: TruncatedParams, geometry: ModelGeometry | None) -> list[str]:
    return _positive(p, ("truncation_length", "set " + PARAMETER_HINTS["truncation_length"]))


def check_entropy_abf(p: EntropyAbfParams, geometry: ModelGeometry | None) -> list[str]:
    problems = _positive(p, ("rope_theta", "set " + PARAMETER_HINTS["rope_theta"]))
    if geometry is not None and not 0 <= p.exempt_layers < geometry.num_layers:
        problems.append(
            f"rope.exempt_layers={p.exempt_layers} must be in [0, {geometry.num_layers}) for this "
            f"{geometry.num_layers}-layer model: at least one layer has to be scaled; lower rope.exempt_layers"
        )
    elif p.exempt_layers < 0:
        problems.append(f"rope.exempt_layers={p.exempt_layers} must be >= 0: the number of first layers left unscaled")
    if p.log_scale_length is not None and p.log_scale_length < 2:
        problems.append(f"rope.log_scale_length={p.log_scale_length} must be at least 2 (ln L > 0): remove it to "
                        "use the original length")
    return problems


def entropy_abf_notes(p: EntropyAbfParams, extended_length: int) -> list[str]:
    log_length = p.effective_log_scale_length
    at_end = max(1.0, math.log(extended_length) / math.log(log_length))
    return [
        f"  query scale max(1, ln(m+1) / ln {log_length}) in layers {p.exempt_layers} and up "
        f"(first {p.exempt_layers} exempt); at m = {extended_length - 1} it is {at_end:.4f}",
        "  loads only with `import extend` (extend.models.load_pretrained): the query scale lives in attention",
    ]


def _length_known(p: Any) -> bool:
    return p.original_max_position_embeddings is not None


def check_lm_infinite(p: LmInfiniteParams, geometry: ModelGeometry | None) -> list[str]:
    problems = []
    if p.global_tokens < 0:
        problems.append(f"rope.global_tokens={p.global_tokens} must be >= 0: the number of first tokens every query "
                        "sees (the paper's n_global, e.g. 10; 0 = a plain sliding window)")
    length = p.original_max_position_embeddings
    for name, meaning in (("local_window", "the last tokens each query sees (L_local)"),
                          ("distance_limit", "the distance keys beyond the window are seen at (d)")):
        value = getattr(p, name)
        if value is not None and value < 1:
            problems.append(f"rope.{name}={value} must be > 0: {meaning}; remove it to use the original length")
        elif value is not None and _length_known(p) and value > length:
            problems.append(f"rope.{name}={value} exceeds the original length {length}: the base never saw such "
                            f"distances; set at most {length} or remove it to use the original length")
    return problems


def check_self_extend(p: SelfExtendParams, geometry: ModelGeometry | None) -> list[str]:
    problems = []
    if p.group_size is not None and p.group_size < 1:
        problems.append(f"rope.group_size={p.group_size} must be >= 1: the G of floor(n / G) (1 = plain RoPE beyond "
                        "the window); remove it to derive G from rope.factor")
    if p.neighbor_window is not None and p.neighbor_window < 1:
        problems.append(f"rope.neighbor_window={p.neighbor_window} must be > 0: the neighbours kept at exact positions "
                        "(the paper's w); remove it to use the original length / 4")
    elif _length_known(p) and p.effective_neighbor_window >= p.original_max_position_embeddings:
        problems.append(f"rope.neighbor_window={p.effective_neighbor_window} must be below the original length "
                        f"{p.original_max_position_embeddings}: grouped positions start after it; lower it")
    elif not problems and _length_known(p) and p.reach < p.extended_length:
        problems.append(f"rope.group_size={p.effective_group_size} with rope.neighbor_window={p.effective_neighbor_window} "
                        f"reaches (L - w) * G + w = {p.reach} tokens, fewer than the extended length {p.extended_length}: "
                        "raise rope.group_size or remove it to derive it from rope.factor")
    return problems


def lm_infinite_notes(p: LmInfiniteParams, extended_length: int) -> list[str]:
    return [
        f"  each query sees the first {p.global_tokens} and the last {p.effective_local_window} tokens; keys beyond "
        f"the window at distance {p.effective_distance_limit}",
        "  loads only with `import extend` (extend.models.load_pretrained): the positions live in attention; "
        "a stock loader fails at model construction (unknown rope type)",
    ]


def self_extend_notes(p: SelfExtendParams, extended_length: int) -> list[str]:
    return [
        f"  neighbours within {p.effective_neighbor_window} tokens at exact positions, the rest grouped by "
        f"{p.effective_group_size}; reach (L - w) * G + w = {p.reach} tokens",
        "  loads only with `import extend` (extend.models.load_pretrained): the positions live in attention; "
        "a stock loader fails at model construction (unknown rope type)",
    ]


def check_clex(p: ClexParams, geometry: ModelGeometry | None) -> list[str]:
    problems = []
    if not p.effective_t_max > 1:
        problems.append(f"rope.t_max={p.effective_t_max} must be > 1 (the largest length ratio trained; it defaults to "
                        "rope.factor): set rope.t_max or a rope.factor above 1")
    if p.ode_hidden_factor < 1:
        problems.append(f"rope.ode_hidden_factor={p.ode_hidden_factor} must be >= 1: the ODE network's width in "
                        "multiples of the rotary dimension, e.g. 1")
    if not 0 < p.ode_step <= 1:
        problems.append(f"rope.ode_step={p.ode_step} must lie in (0, 1]: the RK4 step in t, e.g. 0.01")
    return problems


def clex_notes(p: ClexParams, extended_length: int) -> list[str]:
    return [
        f"  frequencies from a neural ODE in t = length / {p.original_max_position_embeddings}, trained with t drawn "
        f"in [1, {p.effective_t_max:g}]; untrained it is NTK scaling with alpha = 2t - 1",
        "  stock loaders read longrope factors at the export's factor; `import extend` rebuilds the continuous form",
    ]


METHODS: dict[str, PositionMethod] = {
    m.name: m
    for m in (
        PositionMethod("linear", ScaleParams, methods.linear_inv_freq, export.linear_export, check_scale,
                       "position interpolation: theta_i / s"),
        PositionMethod("ntk", ScaleParams, methods.ntk_inv_freq, export.ntk_export, check_scale,
                       "NTK-aware: base b * s^(d/(d-2))"),
        PositionMethod("dynamic", ScaleParams, methods.dynamic_inv_freq, export.dynamic_export, check_scale,
                       "dynamic NTK: base grows with length", dynamic=True),
        PositionMethod("yarn", YarnParams, methods.yarn_inv_freq, export.yarn_export, check_yarn,
                       "YaRN: ramped interpolation + logit temperature", temperature=methods.yarn_attention_factor),
        PositionMethod("llama3", Llama3Params, methods.llama3_inv_freq, export.llama3_export, check_llama3,
                       "Llama 3.1 wavelength bands"),
        PositionMethod("longrope", LongRopeParams, methods.longrope_inv_freq, export.longrope_export, check_longrope,
                       "LongRoPE per-dimension factors", dynamic=True),
        PositionMethod("abf", AbfParams, methods.abf_inv_freq, export.abf_export, check_abf,
                       "adjusted base frequency: a larger base"),
        PositionMethod("power", PowerParams, methods.power_inv_freq, export.as_longrope_export(methods.power_inv_freq),
                       check_power, "Giraffe power basis: theta_i (1 - 2i/d)^k"),
        PositionMethod("truncated", TruncatedParams, methods.truncated_inv_freq,
                       export.as_longrope_export(methods.truncated_inv_freq), check_truncated,
                       "Giraffe truncated basis"),
        PositionMethod("entropy_abf", EntropyAbfParams, methods.entropy_abf_inv_freq, export.entropy_abf_export,
                       check_entropy_abf, "ABF + log-length query scaling", scales_queries=True,
                       notes=entropy_abf_notes),
        PositionMethod("lm_infinite", LmInfiniteParams, methods.unchanged_inv_freq, export.lm_infinite_export,
                       check_lm_infinite, "LM-Infinite: Λ-shaped attention + distance ceiling (training-free)",
                       notes=lm_infinite_notes, inference_only=True),
        PositionMethod("self_extend", SelfExtendParams, methods.unchanged_inv_freq, export.self_extend_export,
                       check_self_extend, "SelfExtend: exact neighbours + grouped distant positions (training-free)",
                       notes=self_extend_notes, inference_only=True),
        PositionMethod("clex", ClexParams, clex.initial_inv_freq, export.as_longrope_export(clex.initial_inv_freq),
                       check_clex, "CLEX: frequencies from a neural ODE in the length ratio", dynamic=True,
                       notes=clex_notes),
    )
}


# The name extend.rope exported before the registry held exports and checks too.
RopeMethod = PositionMethod


def methods_reading(key: str) -> list[str]:
    """The names of the methods that read `rope.<key>`, in registry order."""
    return [m.name for m in METHODS.values() if m.reads(key)]
