"""Keep RoPE angles in float32 when a model runs in bf16 or fp16.

transformers computes cos/sin in float32 from the `inv_freq` buffer, but `model.to(torch.bfloat16)`
casts that buffer too, and a bf16 inv_freq puts positions thousands of tokens apart on the same angle.
Loading with `dtype=` keeps it float32; this repairs a model that was cast afterwards.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS


def rotary_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor) and hasattr(m, "rope_type")]


def restore_float32_rope(model: nn.Module) -> int:
    """Recompute every rotary module's frequencies in float32; returns how many were repaired."""
    repaired = 0
    for module in rotary_modules(model):
        if module.inv_freq.dtype == torch.float32:
            continue
        device = module.inv_freq.device
        init = getattr(module, "compute_default_rope_parameters", None)
        if module.rope_type != "default":
            init = ROPE_INIT_FUNCTIONS[module.rope_type]
        inv_freq, _ = init(module.config, device)
        module.inv_freq = inv_freq.to(device=device, dtype=torch.float32)
        module.original_inv_freq = module.inv_freq.clone()
        repaired += 1
    return repaired
