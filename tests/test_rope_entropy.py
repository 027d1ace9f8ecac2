"""Entropy-aware ABF: queries scaled by max(1, ln(m+1)/ln L) from the first non-exempt layer on."""

from __future__ import annotations

import math

import pytest
import torch

from extend.config import ModelConfig, RopeConfig
from extend.models import build_random, load_base_config
from extend.rope import apply_rope, resolve_rope
from extend.rope.methods import entropy_query_scale

LOG_LENGTH = 16


def test_query_scale_values():
    scale = entropy_query_scale(torch.tensor([0, 14, 15, 16, 255, 4095]), LOG_LENGTH)
    expected = [1.0, 1.0, 1.0, math.log(17) / math.log(16), math.log(256) / math.log(16), math.log(4096) / math.log(16)]
    assert scale.tolist() == pytest.approx(expected, rel=1e-6)


def pair(exempt_layers: int):
    """The same weights with plain ABF and with entropy-aware ABF."""
    base = load_base_config(ModelConfig(name_or_path="tiny-llama"))
    models = []
    for rope in (
        RopeConfig(type="abf", factor=4, rope_theta=5e5),
        RopeConfig(type="entropy_abf", factor=4, rope_theta=5e5, exempt_layers=exempt_layers, log_scale_length=LOG_LENGTH),
    ):
        models.append(build_random(apply_rope(base, resolve_rope(rope, base)), seed=3).eval())
    models[1].load_state_dict(models[0].state_dict())
    return models


@torch.no_grad()
def test_scaling_starts_after_log_scale_length():
    abf, entropy = pair(exempt_layers=1)
    ids = torch.randint(0, 256, (1, 48), generator=torch.Generator().manual_seed(0))
    a, e = abf(ids, use_cache=False).logits, entropy(ids, use_cache=False).logits
    # Positions m with m + 1 <= L have scale 1, and causal attention keeps them independent of later ones.
    assert torch.allclose(a[:, :LOG_LENGTH], e[:, :LOG_LENGTH], atol=1e-6)
    assert (a[:, LOG_LENGTH:] - e[:, LOG_LENGTH:]).abs().amax(-1).min() > 1e-5  # 1e-7 noise below L, >= 8e-5 above


@torch.no_grad()
def test_scaled_layers_match_a_hand_scaled_query():
    """Scaling queries equals scaling the attention logits row by row: compare with eager math."""
    _, entropy = pair(exempt_layers=1)
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(1))
    captured = {}
    layer = entropy.model.layers[1].self_attn

    def keep_output(module, args, out):
        captured["out"] = out[0]

    def keep_input(module, args, kwargs):
        captured["hidden"] = kwargs.get("hidden_states", args[0] if args else None)

    hook = layer.register_forward_hook(keep_output)
    pre = entropy.model.layers[1].register_forward_pre_hook(keep_input, with_kwargs=True)
    entropy(ids, use_cache=False)
    hook.remove()
    pre.remove()

    hidden = entropy.model.layers[1].input_layernorm(captured["hidden"])
    b, t, _ = hidden.shape
    heads, kv_heads, d = 4, 2, 16
    q = layer.q_proj(hidden).view(b, t, heads, d).transpose(1, 2)
    k = layer.k_proj(hidden).view(b, t, kv_heads, d).transpose(1, 2)
    v = layer.v_proj(hidden).view(b, t, kv_heads, d).transpose(1, 2)
    positions = torch.arange(t)[None]
    cos, sin = entropy.model.rotary_emb(hidden, positions)
    rot = lambda x: torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)  # noqa: E731
    q = q * cos[:, None] + rot(q) * sin[:, None]
    k = k * cos[:, None] + rot(k) * sin[:, None]
    k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    scores = scores * entropy_query_scale(positions, LOG_LENGTH)[:, None, :, None]
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, heads * d)
    assert torch.allclose(layer.o_proj(out), captured["out"], atol=1e-5)


@torch.no_grad()
def test_packed_documents_are_scaled_by_their_own_positions():
    _, entropy = pair(exempt_layers=0)
    doc_a = torch.randint(0, 256, (1, 30), generator=torch.Generator().manual_seed(2))
    doc_b = torch.randint(0, 256, (1, 34), generator=torch.Generator().manual_seed(3))
    packed = torch.cat([doc_a, doc_b], 1)
    position_ids = torch.cat([torch.arange(30), torch.arange(34)])[None]
    logits = entropy(packed, position_ids=position_ids, use_cache=False).logits
    alone = entropy(doc_b, use_cache=False).logits
    assert torch.allclose(logits[:, 30:], alone, atol=1e-5)


def test_no_silent_fallback_to_plain_attention():
    base = load_base_config(ModelConfig(name_or_path="tiny-llama"))
    rope = RopeConfig(type="entropy_abf", factor=4, rope_theta=5e5, exempt_layers=1)
    config = apply_rope(base, resolve_rope(rope, base))
    from transformers import AutoModelForCausalLM

    with pytest.raises(ValueError, match="extend_entropy_sdpa"):
        AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        build_random(config, attn_implementation="eager")
