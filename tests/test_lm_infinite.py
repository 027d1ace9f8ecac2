"""LM-Infinite (Han et al., NAACL 2024): the Λ-shaped mask and the distance ceiling, against a hand-written
per-(query, key) loop, on random q, k, v and on a tiny model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from extend.config import ModelConfig, RopeConfig
from extend.models import build_random, load_base_config, load_pretrained
from extend.rope import apply_rope, resolve_rope, rope_problems
from extend.rope.methods import default_inv_freq
from extend.rope.remapped import remapped_attention

BASE = ModelConfig(name_or_path="tiny-llama")  # 64 positions, 4 heads over 2 KV heads, head_dim 16


def config_for(**rope) -> object:
    base = load_base_config(BASE)
    return apply_rope(base, resolve_rope(RopeConfig(type="lm_infinite", **rope), base))


def rotated(x: torch.Tensor, position: int, theta: float) -> torch.Tensor:
    """x (d,) rotated at `position`, one 2-D rotation per pair (x_p, x_{p + d/2}) by position * theta_p."""
    half = x.numel() // 2
    out = x.clone()
    for p in range(half):
        angle = position * theta ** (-2 * p / x.numel())
        c, s = math.cos(angle), math.sin(angle)
        out[p] = x[p] * c - x[p + half] * s
        out[p + half] = x[p + half] * c + x[p] * s
    return out


def reference(q, k, v, n_global: int, local: int, limit: int, theta: float, scale: float) -> torch.Tensor:
    """The paper's rule, pair by pair: query i sees key j (j <= i) when i - j < L_local or j < n_global,
    at relative distance i - j inside the window and at the ceiling d outside it."""
    heads, length, dim = q.shape
    group = heads // k.shape[0]
    out = torch.zeros(heads, length, v.shape[-1], dtype=torch.float64)
    for h in range(heads):
        for i in range(length):
            scores, values = [], []
            for j in range(i + 1):
                if not (i - j < local or j < n_global):
                    continue
                distance = i - j if i - j < local else limit
                # rotating q by the distance and leaving k at 0 gives the score of a pair that far apart
                scores.append(float(rotated(q[h, i].double(), distance, theta) @ k[h // group, j].double()) * scale)
                values.append(v[h // group, j].double())
            weights = torch.softmax(torch.tensor(scores, dtype=torch.float64), 0)
            out[h, i] = sum(w * val for w, val in zip(weights, values))
    return out


# None: every query in one chunk; 5: chunks of 5 queries, each scoring only the keys up to its last query.
@pytest.mark.parametrize("queries_per_chunk", [None, 5])
def test_attention_matches_the_per_pair_reference(monkeypatch, queries_per_chunk):
    config = config_for(factor=4, original_max_position_embeddings=8, global_tokens=3, local_window=6,
                        distance_limit=5)
    module = SimpleNamespace(config=config, training=False)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, 24, 16, generator=gen) for n in (4, 2, 2))
    if queries_per_chunk:
        monkeypatch.setattr("extend.rope.remapped.CHUNK_ELEMENTS", queries_per_chunk * q.shape[1] * k.shape[2])
    out, _ = remapped_attention(module, q, k, v, None, scaling=0.25)
    want = reference(q[0], k[0], v[0], n_global=3, local=6, limit=5, theta=10000.0, scale=0.25)
    assert torch.allclose(out[0].transpose(0, 1).double(), want, atol=2e-5)
    # and it is not plain RoPE attention: a wrong mask or distance would also fail the comparison above
    plain = reference(q[0], k[0], v[0], n_global=0, local=24, limit=0, theta=10000.0, scale=0.25)
    assert (out[0].transpose(0, 1).double() - plain).abs().max() > 1e-2


def test_chunked_queries_give_the_same_result(monkeypatch):
    config = config_for(factor=4, original_max_position_embeddings=8, global_tokens=2, local_window=4)
    module = SimpleNamespace(config=config, training=False)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, n, 20, 16, generator=gen) for n in (4, 2, 2))
    whole, _ = remapped_attention(module, q, k, v, None)
    monkeypatch.setattr("extend.rope.remapped.CHUNK_ELEMENTS", 3 * 4 * 2 * 20)  # 3 queries per chunk
    chunked, _ = remapped_attention(module, q, k, v, None)
    assert torch.allclose(whole, chunked, atol=1e-6)  # matmuls of other shapes round differently


def pair(**rope):
    """Plain RoPE and LM-Infinite on the same weights."""
    plain = build_random(load_base_config(BASE), seed=2).eval()
    infinite = build_random(config_for(**rope), seed=2).eval()
    infinite.load_state_dict(plain.state_dict())
    return plain, infinite


@torch.no_grad()
def test_a_window_over_the_whole_input_is_plain_rope():
    plain, infinite = pair(factor=4)  # L_local = d = 64 >= the 48 tokens below
    ids = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(plain(ids, use_cache=False).logits, infinite(ids, use_cache=False).logits, atol=1e-5)


@torch.no_grad()
def test_a_short_window_changes_the_model_and_the_cache_agrees():
    plain, infinite = pair(factor=4, local_window=8, distance_limit=8, global_tokens=2)
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(4))
    full = infinite(ids, use_cache=False).logits
    assert (full[:, 8:] - plain(ids, use_cache=False).logits[:, 8:]).abs().amax() > 1e-3
    assert torch.allclose(full[:, :8], plain(ids, use_cache=False).logits[:, :8], atol=1e-5)  # inside the window
    # decoding token by token from a cache scores the last tokens as the full forward does
    prefix = infinite(ids[:, :35], use_cache=True)
    cache, steps = prefix.past_key_values, []
    for t in range(35, 40):
        step = infinite(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
        cache = step.past_key_values
        steps.append(step.logits)
    assert torch.allclose(torch.cat(steps, 1), full[:, 35:], atol=1e-4)


def test_export_needs_extend_and_says_so(tmp_path):
    config = config_for(factor=4)
    assert config.rope_parameters == {"rope_type": "lm_infinite", "rope_theta": 10000.0, "global_tokens": 10,
                                      "local_window": 64, "distance_limit": 64, "original_max_position_embeddings": 64}
    assert config.max_position_embeddings == 256
    model = build_random(config, seed=0)
    model.save_pretrained(tmp_path)
    # a stock build (its own attention) is refused at construction, naming the loader that works
    with pytest.raises(ValueError, match="load_pretrained"):
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path), attn_implementation="sdpa")
    reloaded = load_pretrained(tmp_path)
    ids = torch.arange(20)[None]
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model.eval()(ids).logits)


def test_default_frequencies_are_the_base():
    base = load_base_config(BASE)
    resolved = resolve_rope(RopeConfig(type="lm_infinite", factor=4), base)
    assert torch.equal(resolved.inv_freq()[0], default_inv_freq(16, 10000.0).float())


@pytest.mark.parametrize("rope, wanted", [
    ({"global_tokens": -1}, "rope.global_tokens=-1 must be >= 0"),
    ({"local_window": 0}, "rope.local_window=0 must be > 0"),
    ({"distance_limit": -3}, "rope.distance_limit=-3 must be > 0"),
    ({"local_window": 65}, "rope.local_window=65 exceeds the original length 64"),
    ({"distance_limit": 100}, "rope.distance_limit=100 exceeds the original length 64"),
    ({"group_size": 4}, "rope.group_size is not a parameter of lm_infinite"),
])
def test_bad_parameters_give_one_clear_line_each(rope, wanted):
    problems = rope_problems(RopeConfig(type="lm_infinite", factor=4, **rope), load_base_config(BASE))
    assert len(problems) == 1 and problems[0].startswith(wanted), problems
