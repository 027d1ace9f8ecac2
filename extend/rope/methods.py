"""Position methods' frequencies: one pure function per method (registered in registry.py).

Each function takes the rotary dimension d, the base b and the method's typed parameters and returns
`(inv_freq, attention_factor)`: the d/2 inverse frequencies theta_i (float32) and the factor applied to
cos and sin. Everything is computed in float64 and rounded once to float32, so the angles a model uses
are as exact as float32 allows even when the model itself runs in bf16.

Notation: i = 0..d/2-1, theta_i = b^(-2i/d), L = original (pretraining) length, s = factor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import torch


@dataclass(frozen=True)
class ScaleParams:
    """Parameters every method has: the extension factor s and the original length L."""

    factor: float
    original_max_position_embeddings: int

    @property
    def extended_length(self) -> int:
        return round(self.factor * self.original_max_position_embeddings)


@dataclass(frozen=True)
class YarnParams(ScaleParams):
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None


@dataclass(frozen=True)
class Llama3Params(ScaleParams):
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0


@dataclass(frozen=True)
class LongRopeParams(ScaleParams):
    short_factor: tuple[float, ...]
    long_factor: tuple[float, ...]
    attention_factor: float | None = None


@dataclass(frozen=True)
class AbfParams(ScaleParams):
    rope_theta: float


@dataclass(frozen=True)
class PowerParams(ScaleParams):
    power: float


@dataclass(frozen=True)
class TruncatedParams(ScaleParams):
    truncation_length: float


@dataclass(frozen=True)
class EntropyAbfParams(ScaleParams):
    rope_theta: float
    # L in max(1, ln(m+1) / ln L); None means the original length.
    log_scale_length: int | None = None
    # The first layers keep unscaled queries (the reference meant to exempt 2).
    exempt_layers: int = 2

    @property
    def effective_log_scale_length(self) -> int:
        return self.original_max_position_embeddings if self.log_scale_length is None else self.log_scale_length


@dataclass(frozen=True)
class LmInfiniteParams(ScaleParams):
    """LM-Infinite (Han et al., NAACL 2024): a query sees the first `global_tokens` and the last `local_window`
    tokens; keys beyond the window are seen at the distance `distance_limit`."""

    # n_global: the reference's drop-in default (its README: 10-100 give similar results).
    global_tokens: int = 10
    # L_local; None = the original length L (the paper's L_pretrain).
    local_window: int | None = None
    # The distance ceiling d; None = the original length L (the paper's choice).
    distance_limit: int | None = None

    @property
    def effective_local_window(self) -> int:
        return self.original_max_position_embeddings if self.local_window is None else self.local_window

    @property
    def effective_distance_limit(self) -> int:
        return self.original_max_position_embeddings if self.distance_limit is None else self.distance_limit


@dataclass(frozen=True)
class SelfExtendParams(ScaleParams):
    """SelfExtend (Jin et al., ICML 2024): neighbours within `neighbor_window` at exact relative positions,
    the rest at floor(m / G) - floor(n / G) + w - floor(w / G)."""

    # G; None = the smallest G whose reach (L - w) * G + w covers the extended length s * L (the paper's
    # rule for choosing G).
    group_size: int | None = None
    # w; None = L / 4 (the paper's 1024 for Llama-2's 4096).
    neighbor_window: int | None = None

    @property
    def effective_neighbor_window(self) -> int:
        if self.neighbor_window is not None:
            return self.neighbor_window
        return max(1, self.original_max_position_embeddings // 4)

    @property
    def effective_group_size(self) -> int:
        if self.group_size is not None:
            return self.group_size
        length, window = self.original_max_position_embeddings, self.effective_neighbor_window
        return max(1, math.ceil((self.extended_length - window) / max(1, length - window)))

    @property
    def reach(self) -> int:
        """The longest input whose largest grouped distance stays below L: (L - w) * G + w."""
        window = self.effective_neighbor_window
        return (self.original_max_position_embeddings - window) * self.effective_group_size + window


@dataclass(frozen=True)
class ClexParams(ScaleParams):
    """CLEX (Chen et al., ICLR 2024): frequencies from a neural ODE in t = length / L (extend/rope/clex.py)."""

    # Largest length ratio t trained (and the frequencies used beyond it); None = the factor.
    t_max: float | None = None
    # The ODE network's hidden width, in multiples of the rotary dimension.
    ode_hidden_factor: int = 1
    # The RK4 step in t.
    ode_step: float = 0.01

    @property
    def effective_t_max(self) -> float:
        return self.factor if self.t_max is None else self.t_max


def default_inv_freq(dim: int, base: float) -> torch.Tensor:
    """theta_i = b^(-2i/d) in float64 (Su et al., 2021)."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    return 1.0 / (base**exponents)


def _f32(inv_freq: torch.Tensor, attention_factor: float) -> tuple[torch.Tensor, float]:
    return inv_freq.to(torch.float32), float(attention_factor)


def linear_inv_freq(dim: int, base: float, p: ScaleParams, seq_len: int | None = None):
    """Position interpolation (Chen et al., 2023): theta_i / s."""
    return _f32(default_inv_freq(dim, base) / p.factor, 1.0)


def ntk_base(dim: int, base: float, factor: float) -> float:
    """NTK-aware base (bloc97, 2023): b' = b * s^(d/(d-2))."""
    return base * factor ** (dim / (dim - 2))


def ntk_inv_freq(dim: int, base: float, p: ScaleParams, seq_len: int | None = None):
    """Static NTK-aware scaling: the default frequencies of the larger base b'."""
    return _f32(default_inv_freq(dim, ntk_base(dim, base, p.factor)), 1.0)


def dynamic_inv_freq(dim: int, base: float, p: ScaleParams, seq_len: int | None = None):
    """Dynamic NTK (emozilla, 2023): for n = max(seq_len, L), b' = b * ((s*n/L) - (s-1))^(d/(d-2))."""
    length = p.original_max_position_embeddings
    n = max(seq_len or length, length)
    scaled_base = base * ((p.factor * n / length) - (p.factor - 1)) ** (dim / (dim - 2))
    return _f32(default_inv_freq(dim, scaled_base), 1.0)


def yarn_correction_dim(num_rotations: float, dim: int, base: float, length: int) -> float:
    """The dimension whose wavelength fits `num_rotations` times into L: d*ln(L/(2*pi*r)) / (2*ln b)."""
    return dim * math.log(length / (num_rotations * 2 * math.pi)) / (2 * math.log(base))


def yarn_attention_factor(factor: float) -> float:
    """YaRN's temperature: 0.1 * ln(s) + 1 (Peng et al., 2023, eq. 22)."""
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


def yarn_inv_freq(dim: int, base: float, p: YarnParams, seq_len: int | None = None):
    """YaRN (Peng et al., 2023): interpolate dims with long wavelengths, keep short ones, ramp between.

    inv_freq_i = (theta_i / s) * (1 - gamma_i) + theta_i * gamma_i, with gamma_i = 1 for dims that turn
    more than beta_fast times within L, 0 below beta_slow turns, linear in between.
    """
    length = p.original_max_position_embeddings
    low = math.floor(yarn_correction_dim(p.beta_fast, dim, base, length))
    high = math.ceil(yarn_correction_dim(p.beta_slow, dim, base, length))
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    gamma = 1.0 - ramp  # 1 = extrapolate (keep theta_i), 0 = interpolate (theta_i / s)
    theta = default_inv_freq(dim, base)
    inv_freq = (theta / p.factor) * (1 - gamma) + theta * gamma
    attention = p.attention_factor if p.attention_factor is not None else yarn_attention_factor(p.factor)
    return _f32(inv_freq, attention)


def llama3_inv_freq(dim: int, base: float, p: Llama3Params, seq_len: int | None = None):
    """Llama 3.1 scaling: wavelengths above L/low_freq_factor divided by s, below L/high_freq_factor
    kept, and a linear blend in wavelength-count space between the two bands."""
    length = p.original_max_position_embeddings
    theta = default_inv_freq(dim, base)
    wavelength = 2 * math.pi / theta
    smooth = (length / wavelength - p.low_freq_factor) / (p.high_freq_factor - p.low_freq_factor)
    blended = (1 - smooth) * theta / p.factor + smooth * theta
    inv_freq = torch.where(wavelength > length / p.low_freq_factor, theta / p.factor, blended)
    inv_freq = torch.where(wavelength < length / p.high_freq_factor, theta, inv_freq)
    return _f32(inv_freq, 1.0)


def longrope_attention_factor(factor: float, length: int) -> float:
    """LongRoPE's scale: sqrt(1 + ln(s) / ln(L)) (Ding et al., 2024)."""
    return 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(length))


def longrope_inv_freq(dim: int, base: float, p: LongRopeParams, seq_len: int | None = None):
    """LongRoPE (Ding et al., 2024): theta_i / lambda_i with searched per-dimension factors lambda;
    the long set applies once the sequence is longer than L, the short set otherwise."""
    length = p.original_max_position_embeddings
    factors = p.long_factor if seq_len is not None and seq_len > length else p.short_factor
    inv_freq = default_inv_freq(dim, base) / torch.tensor(factors, dtype=torch.float64)
    attention = p.attention_factor
    if attention is None:
        attention = longrope_attention_factor(p.factor, length)
    return _f32(inv_freq, attention)


def abf_inv_freq(dim: int, base: float, p: AbfParams, seq_len: int | None = None):
    """Adjusted base frequency (Xiong et al., 2023): the default frequencies of a larger base."""
    return _f32(default_inv_freq(dim, p.rope_theta), 1.0)


def power_inv_freq(dim: int, base: float, p: PowerParams, seq_len: int | None = None):
    """Giraffe's power basis (Pal et al., 2023): theta_i * (1 - 2i/d)^k."""
    shrink = (1 - torch.arange(0, dim, 2, dtype=torch.float64) / dim) ** p.power
    return _f32(default_inv_freq(dim, base) * shrink, 1.0)


def truncated_inv_freq(dim: int, base: float, p: TruncatedParams, seq_len: int | None = None):
    """Giraffe's truncated basis (Pal et al., 2023), with T the truncation length:
    b = 2*pi/T, a = b/8, rho = 2*pi/(16T); keep theta_i >= b, set a <= theta_i < b to rho, zero theta_i < a.
    """
    theta = default_inv_freq(dim, base)
    cutoff = 2 * math.pi / p.truncation_length
    lower, rho = cutoff / 8, 2 * math.pi / (16 * p.truncation_length)
    inv_freq = torch.where(theta >= cutoff, theta, torch.where(theta >= lower, rho, 0.0))
    return _f32(inv_freq, 1.0)


def entropy_abf_inv_freq(dim: int, base: float, p: EntropyAbfParams, seq_len: int | None = None):
    """Entropy-aware ABF (Zhang et al., 2024): ABF frequencies; the query scaling lives in attention."""
    return _f32(default_inv_freq(dim, p.rope_theta), 1.0)


def entropy_query_scale(position_ids: torch.Tensor, log_scale_length: int) -> torch.Tensor:
    """Per-position query scale max(1, ln(m+1) / ln L), in float32."""
    return (torch.log1p(position_ids.to(torch.float32)) / math.log(log_scale_length)).clamp(min=1.0)


def unchanged_inv_freq(dim: int, base: float, p: ScaleParams, seq_len: int | None = None):
    """LM-Infinite and SelfExtend keep the base's frequencies: they change which relative position a
    (query, key) pair is rotated at, in attention (extend/rope/remapped.py)."""
    return _f32(default_inv_freq(dim, base), 1.0)

