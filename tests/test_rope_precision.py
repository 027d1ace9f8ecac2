"""RoPE angles stay float32 when the model runs in bf16."""

from __future__ import annotations

import torch

from extend.config import ModelConfig, RopeConfig
from extend.models import build_random, load_base_config, restore_float32_rope
from extend.rope import apply_rope, resolve_rope


def yarn_config():
    base = load_base_config(ModelConfig(name_or_path="tiny-llama"))
    return apply_rope(base, resolve_rope(RopeConfig(type="yarn", factor=8), base))


def test_bf16_model_keeps_float32_frequencies_and_angles():
    config = yarn_config()
    fp32 = build_random(config)
    bf16 = build_random(config, dtype=torch.bfloat16)
    assert bf16.model.embed_tokens.weight.dtype == torch.bfloat16
    assert bf16.model.rotary_emb.inv_freq.dtype == torch.float32
    positions = torch.arange(0, 512)[None]
    cos32, _ = fp32.model.rotary_emb(torch.zeros(1, dtype=torch.float32), positions)
    cos16, _ = bf16.model.rotary_emb(torch.zeros(1, dtype=torch.bfloat16), positions)
    # Angles formed in float32, then only the result rounded to bf16.
    assert torch.equal(cos16, cos32.to(torch.bfloat16))


def test_casting_afterwards_is_repaired():
    model = build_random(yarn_config()).to(torch.bfloat16)
    assert model.model.rotary_emb.inv_freq.dtype == torch.bfloat16  # the trap: .to() casts buffers
    assert restore_float32_rope(model) == 1
    reference = build_random(yarn_config())
    assert torch.equal(model.model.rotary_emb.inv_freq, reference.model.rotary_emb.inv_freq)
    assert restore_float32_rope(model) == 0


def test_set_rope_theta_recomputes_every_rotary_module():
    from extend.models import set_rope_theta
    from extend.rope.methods import default_inv_freq

    model = build_random(load_base_config(ModelConfig(name_or_path="tiny-llama")))
    set_rope_theta(model, 20000.0)
    assert model.config.rope_parameters["rope_theta"] == 20000.0
    expected = default_inv_freq(16, 20000.0).float()
    assert torch.allclose(model.model.rotary_emb.inv_freq, expected, rtol=1e-6)
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
