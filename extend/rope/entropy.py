"""Entropy-aware ABF through transformers' extension points, never by reassigning library methods.

Two registrations, both done by `import extend`:
- the rope type `entropy_abf` in ROPE_INIT_FUNCTIONS: ABF frequencies of the raised base. It refuses to
  build a model whose attention does not apply the query scaling, so such a checkpoint never runs with
  half of its method missing;
- attention functions `extend_entropy_<kernel>` (sdpa, flash_attention_2) in transformers' AttentionInterface: they
  scale each query at position m by max(1, ln(m+1) / ln L) in every layer from `exempt_layers` on (keys
  unscaled), then call the stock kernel. Positions come from `position_ids`, so packed documents, whose
  positions restart, are scaled by their position inside their own document.

Stock transformers without `import extend` has no `entropy_abf` rope type and fails while building the
model; `extend.models.load_pretrained` picks the right attention function automatically.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, PreTrainedConfig
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from extend.rope.export import ENTROPY_ROPE_TYPE
from extend.rope.methods import default_inv_freq, entropy_query_scale

ATTENTION_PREFIX = "extend_entropy_"
# Kernels with a shared implementation in transformers that the scaling can wrap.
BASE_KERNELS = ("sdpa", "flash_attention_2")


def entropy_attention_name(base_kernel: str) -> str:
    if base_kernel.startswith(ATTENTION_PREFIX):
        return base_kernel
    if base_kernel not in BASE_KERNELS:
        raise ValueError(
            f"model.attn_implementation={base_kernel!r} cannot carry entropy-aware query scaling; "
            f"use one of {', '.join(BASE_KERNELS)}"
        )
    return ATTENTION_PREFIX + base_kernel


def uses_entropy_abf(config: PreTrainedConfig) -> bool:
    rope = getattr(config, "rope_parameters", None) or {}
    return rope.get("rope_type") == ENTROPY_ROPE_TYPE


def _entropy_rope_init(config, device=None, seq_len=None, layer_type=None):
    """ROPE_INIT_FUNCTIONS entry: the raised base's frequencies, attention factor 1."""
    attn = getattr(config, "_attn_implementation", None) or ""
    if not attn.startswith(ATTENTION_PREFIX):
        raise ValueError(
            f"this checkpoint uses entropy-aware ABF (rope_type {ENTROPY_ROPE_TYPE!r}), whose query scaling lives "
            f"in attention, but the model was built with attn_implementation={attn!r}: load it with "
            "extend.models.load_pretrained(path), or pass attn_implementation='extend_entropy_sdpa'"
        )
    rope = config.rope_parameters
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dim = int(head_dim * rope.get("partial_rotary_factor", 1.0))
    inv_freq = default_inv_freq(dim, float(rope["rope_theta"])).to(torch.float32)
    return inv_freq.to(device) if device is not None else inv_freq, 1.0


def _make_attention(base_kernel: str):
    def entropy_attention(module, query, key, value, attention_mask, **kwargs):
        rope = module.config.rope_parameters
        if module.layer_idx >= rope["exempt_layers"]:
            position_ids = kwargs.get("position_ids")
            if position_ids is None:
                raise ValueError(
                    "entropy-aware attention needs position_ids, and this model did not pass them to attention"
                )
            scale = entropy_query_scale(position_ids, rope["log_scale_length"])  # (batch, seq)
            query = query * scale[:, None, :, None].to(query.dtype)
        return ALL_ATTENTION_FUNCTIONS[base_kernel](module, query, key, value, attention_mask, **kwargs)

    entropy_attention.__name__ = f"{ATTENTION_PREFIX}{base_kernel}"
    return entropy_attention


def register() -> None:
    """Idempotent: make `entropy_abf` and its attention functions known to transformers."""
    ROPE_INIT_FUNCTIONS[ENTROPY_ROPE_TYPE] = _entropy_rope_init
    for kernel in BASE_KERNELS:
        name = ATTENTION_PREFIX + kernel
        AttentionInterface.register(name, _make_attention(kernel))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[kernel])
