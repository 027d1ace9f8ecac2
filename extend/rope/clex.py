"""CLEX: continuous length extrapolation (Chen et al., ICLR 2024).

The log inverse frequencies z(t) = ln theta'(t) are a continuous function of the length ratio t = length / L,
the solution of a neural ODE started at the base, z(1) = ln theta:

    dz/dt = f(z, t) = tanh((z + ln nu(t)) W_up) W_down + d ln nu(t) / dt,

where nu(t) are NTK-aware frequencies for the factor alpha = 2t - 1, nu_i(t) = b^(-2i/d) alpha^(-2i/(d-2)),
whose log-derivative is -(2i/(d-2)) * 2 / alpha. W_up (d/2 x h*d) starts Kaiming-uniform and W_down (h*d x d/2)
at zero (the reference's ODELinear), so the untrained ODE follows ln nu exactly: CLEX before training is NTK
scaling with alpha = 2t - 1, and z(1) is the base whatever the weights.

The solver is a fixed-step classical Runge-Kutta (RK4) of our own (`integrate`): the reference uses
torchdiffeq's `rk4` with a fixed step too, and our ~15 lines add no dependency, run in float64, and give the
same steps at every call (n = ceil((t - 1) / step) equal steps from 1 to t), which keeps training bit-exact
on resume and t = 1 exactly the base (zero steps).

Training samples t at every forward and spreads the row's positions over t*L (positions scaled by t*L / T
for a row of T tokens): the reference trains at the original length (T = L), samples integer t in
[1, t_max] and takes a random sorted subset of T of the t*L integer positions, which spans the same range
with gaps of at least one. Rows longer than L are themselves at the ratio T / L, so t is drawn uniformly in
[min(max(1, T / L), t_max), t_max] and positions are never compressed (the scale is at least 1): compressing
a row's positions into a shorter span would train the model on fractional distances that inference, with
integer positions, never shows it. At inference t = clamp(n / L, 1, t_max) for a sequence of n positions
(the reference rounds n / L up to an integer); beyond t_max the frequencies stay those of t_max.

In a model, the ODE is a submodule `clex` of each rotary module, whose output (cos, sin) a forward hook
recomputes from the ODE's frequencies, so the ODE's parameters train with the rest (`train_ode` keeps them
trainable under any adapter). A checkpoint's config carries the stock-loadable form (longrope factors at
the export's factor, `export_clex`) and the trained weights under the provenance key, from which
`import extend` loaders rebuild the continuous form (`attach_clex`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from extend.rope.export import PROVENANCE_KEY, ZERO_FREQUENCY_FACTOR
from extend.rope.methods import ClexParams, default_inv_freq

CLEX = "clex"
# Provenance fields holding the trained ODE weights (lists of rows).
UP, DOWN = "ode_up", "ode_down"


class NtkPath:
    """ln nu(t) = a + c ln alpha and d ln nu / dt = 2c / alpha, alpha = 2t - 1 (1 below t = 1, as the
    reference), with a_i = -(2i/d) ln b and c_i = -2i/(d-2); float64."""

    def __init__(self, dim: int, base: float, device: torch.device | None = None):
        index = torch.arange(0, dim, 2, dtype=torch.float64, device=device)
        self.a = -(index / dim) * math.log(base)
        self.c = -(index / (dim - 2))

    def __call__(self, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = max(2 * t - 1, 1.0)
        return self.a + self.c * math.log(alpha), self.c * (2 / alpha)


def integrate(derivative: Callable[[float, torch.Tensor], torch.Tensor], z0: torch.Tensor, t: float,
              step: float) -> torch.Tensor:
    """z(t) of dz/dt = derivative(t, z), z(1) = z0: classical RK4 in ceil((t - 1) / step) equal steps."""
    n = max(math.ceil((t - 1) / step - 1e-9), 0)
    z, h = z0, (t - 1) / max(n, 1)
    for k in range(n):
        s = 1 + k * h
        k1 = derivative(s, z)
        k2 = derivative(s + h / 2, z + h / 2 * k1)
        k3 = derivative(s + h / 2, z + h / 2 * k2)
        k4 = derivative(s + h, z + h * k3)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return z


def clex_time(p: ClexParams, seq_len: int | None) -> float:
    """The t a length stands for: clamp(seq_len / L, 1, t_max); the export's factor (capped) without one."""
    t = p.factor if seq_len is None else seq_len / p.original_max_position_embeddings
    return min(max(t, 1.0), p.effective_t_max)


def initial_inv_freq(dim: int, base: float, p: ClexParams, seq_len: int | None = None):
    """The untrained ODE's frequencies (W_down = 0) at the t of `seq_len` (registry entry; float32, 1.0)."""
    log_theta, path = torch.log(default_inv_freq(dim, base)), NtkPath(dim, base)
    z = integrate(lambda s, z: path(s)[1], log_theta, clex_time(p, seq_len), p.ode_step)
    return torch.exp(z).to(torch.float32), 1.0


class ClexOde(nn.Module):
    """The ODE's network and what a model needs to use it (base, L, t_max, step)."""

    def __init__(self, dim: int, base: float, p: ClexParams):
        super().__init__()
        hidden = p.ode_hidden_factor * dim
        self.dim, self.base, self.params = dim, base, p
        self.up = nn.Parameter(torch.empty(dim // 2, hidden))
        self.down = nn.Parameter(torch.zeros(hidden, dim // 2))
        nn.init.kaiming_uniform_(self.up, a=math.sqrt(5))
        # Training draws t per forward; evaluation uses the input's length.
        self.sampling = False
        self.hook = None  # the rotary module's forward hook, removed at export
        self._cached: tuple[Any, torch.Tensor] | None = None

    def inv_freq(self, t: float) -> torch.Tensor:
        """float32 inverse frequencies at t, differentiable in the weights."""
        key = (t, self.up._version, self.down._version, self.up.data_ptr(), self.down.data_ptr())
        if not torch.is_grad_enabled() and self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        path, up, down = NtkPath(self.dim, self.base, self.up.device), self.up.double(), self.down.double()

        def derivative(s: float, z: torch.Tensor) -> torch.Tensor:
            log_nu, d_log_nu = path(s)
            return torch.tanh((z + log_nu) @ up) @ down + d_log_nu

        log_theta = torch.log(default_inv_freq(self.dim, self.base)).to(self.up.device)
        inv = torch.exp(integrate(derivative, log_theta, t, self.params.ode_step)).to(torch.float32)
        if not torch.is_grad_enabled():
            self._cached = (key, inv)
        return inv


def training_time(p: ClexParams, row_tokens: int, draw: float) -> float:
    """The t a training row of `row_tokens` positions trains at, for a uniform draw in [0, 1): uniform over
    [its own length ratio (at least 1, at most t_max), t_max]."""
    t_max = p.effective_t_max
    low = min(max(row_tokens / p.original_max_position_embeddings, 1.0), t_max)
    return low + (t_max - low) * draw


def _rotary_hook(module: nn.Module, args: tuple, kwargs: dict, output):
    """The rotary module's (cos, sin) from the ODE: t drawn in training, the input's length otherwise."""
    ode: ClexOde = module.clex
    x = args[0] if args else kwargs["x"]
    position_ids = args[1] if len(args) > 1 else kwargs["position_ids"]
    positions = position_ids.to(torch.float32)
    length = ode.params.original_max_position_embeddings
    if ode.sampling and torch.is_grad_enabled():
        t = training_time(ode.params, position_ids.shape[-1], torch.rand(()).item())
        positions = positions * max(t * length / position_ids.shape[-1], 1.0)
    else:
        t = min(max((position_ids.max().item() + 1) / length, 1.0), ode.params.effective_t_max)
    freqs = positions[..., None] * ode.inv_freq(t).to(x.device)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _rotary_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor) and hasattr(m, "rope_type")]


def clex_provenance(config) -> dict | None:
    provenance = getattr(config, PROVENANCE_KEY, None)
    return provenance if provenance and provenance.get("type") == CLEX else None


def params_of(provenance: dict) -> ClexParams:
    names = ("factor", "original_max_position_embeddings", "t_max", "ode_hidden_factor", "ode_step")
    return ClexParams(**{k: provenance[k] for k in names})


def attach_clex(model: nn.Module) -> list[ClexOde]:
    """Give every rotary module of a model whose config records CLEX its ODE (the trained weights where the
    config carries them, else a fresh one) and the hook that uses it; [] for other models."""
    provenance = clex_provenance(model.config)
    if provenance is None:
        return []
    p = params_of(provenance)
    odes = []
    for module in _rotary_modules(model):
        dim = module.inv_freq.shape[0] * 2
        ode = ClexOde(dim, float(provenance["base_rope_theta"]), p).to(module.inv_freq.device)
        if UP in provenance:
            with torch.no_grad():
                ode.up.copy_(torch.tensor(provenance[UP], dtype=torch.float32))
                ode.down.copy_(torch.tensor(provenance[DOWN], dtype=torch.float32))
        module.add_module(CLEX, ode)
        ode.hook = module.register_forward_hook(_rotary_hook, with_kwargs=True)
        odes.append(ode)
    return odes


def clex_odes(model: nn.Module) -> list[ClexOde]:
    return [m for m in model.modules() if isinstance(m, ClexOde)]


def train_ode(model: nn.Module) -> int:
    """Make the ODE weights trainable (whatever the adapter froze) and draw t per forward; how many ODEs."""
    odes = clex_odes(model)
    for ode in odes:
        ode.sampling = True
        ode.requires_grad_(True)
    return len(odes)


def export_clex(model: nn.Module, trained: nn.Module | None = None) -> bool:
    """Write the trained ODE (of `trained`, default `model`) into the model's config and take every ODE off the
    model (before saving): longrope factors theta_i / theta'_i(t) at the export's factor (what a stock loader
    reads), and the weights under the provenance key (what `import extend` rebuilds). False without CLEX."""
    odes = clex_odes(model if trained is None else trained)
    if not odes:
        return False
    ode = odes[0]
    with torch.no_grad():
        inv = ode.inv_freq(clex_time(ode.params, None)).double()
        up, down = ode.up.detach().float().tolist(), ode.down.detach().float().tolist()
    theta = default_inv_freq(ode.dim, ode.base)
    factors = [float(a / b) if b > 0 else ZERO_FREQUENCY_FACTOR for a, b in zip(theta.tolist(), inv.tolist())]
    rope = model.config.rope_parameters
    rope["short_factor"], rope["long_factor"] = factors, list(factors)
    getattr(model.config, PROVENANCE_KEY).update({UP: up, DOWN: down})
    for module in _rotary_modules(model):
        if hasattr(module, CLEX):
            module.clex.hook.remove()
            delattr(module, CLEX)
    return True
