"""Operations on a built model's rotary modules, through their config (never by replacing methods).

- `restore_float32_rope`: transformers computes cos/sin in float32 from the `inv_freq` buffer, but
  `model.to(torch.bfloat16)` casts that buffer too, and a bf16 inv_freq puts positions thousands of tokens
  apart on the same angle. Loading with `dtype=` keeps it float32; this repairs a model cast afterwards.
- `set_rope_theta`: a new base for the curriculum stage at hand (EasyContext raises it stage by stage).
- `set_attention_scaling`: a training-time scale on cos and sin (PoSE's `window` temperature); the config,
  and so the export, keeps the module's own.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS


def rotary_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor) and hasattr(m, "rope_type")]


def _recompute(module: nn.Module) -> None:
    """Frequencies from the module's config, in float32, on the buffer's device."""
    device = module.inv_freq.device
    init = module.compute_default_rope_parameters if module.rope_type == "default" else ROPE_INIT_FUNCTIONS[module.rope_type]
    inv_freq, module.attention_scaling = init(module.config, device=device)
    module.inv_freq = inv_freq.to(device=device, dtype=torch.float32)
    module.original_inv_freq = module.inv_freq.clone()


def restore_float32_rope(model: nn.Module) -> int:
    """Recompute in float32 the frequencies of every rotary module that was cast; returns how many."""
    cast = [m for m in rotary_modules(model) if m.inv_freq.dtype != torch.float32]
    for module in cast:
        _recompute(module)
    return len(cast)


def set_rope_theta(model: nn.Module, theta: float) -> None:
    """Give every rotary module the base `theta` (the model's config follows, so an export carries it)."""
    modules = rotary_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no rotary module whose base could be set")
    for module in modules:
        module.config.rope_parameters["rope_theta"] = float(theta)
        _recompute(module)


def set_attention_scaling(model: nn.Module, scale: float | None) -> None:
    """Scale every rotary module's cos and sin by `scale` (None: the module's own, from its config)."""
    modules = rotary_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no rotary module whose attention scaling could be set")
    for module in modules:
        if scale is None:
            _recompute(module)
        else:
            module.attention_scaling = float(scale)
