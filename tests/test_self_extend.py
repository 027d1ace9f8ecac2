"""SelfExtend (Jin et al., ICML 2024): exact positions for neighbours, floor-grouped ones beyond, against a
hand-written per-(query, key) loop, on random q, k, v and on a tiny model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from extend.config import ModelConfig, RopeConfig
from extend.models import build_random, load_base_config
from extend.rope import apply_rope, resolve_rope, rope_problems
from extend.rope.remapped import remapped_attention
from tests.test_lm_infinite import rotated

BASE = ModelConfig(name_or_path="tiny-llama")  # 64 positions, 4 heads over 2 KV heads, head_dim 16


def config_for(**rope) -> object:
    base = load_base_config(BASE)
    return apply_rope(base, resolve_rope(RopeConfig(type="self_extend", **rope), base))


def relative_position(i: int, j: int, group: int, window: int) -> int:
    """The paper's eq. 3: i - j for neighbours (i - j < w), else (i // G + w - w // G) - j // G."""
    return i - j if i - j < window else (i // group + window - window // group) - j // group


def reference(q, k, v, group: int, window: int, theta: float, scale: float) -> torch.Tensor:
    heads, length, _ = q.shape
    per_kv = heads // k.shape[0]
    out = torch.zeros(heads, length, v.shape[-1], dtype=torch.float64)
    for h in range(heads):
        for i in range(length):
            scores = torch.tensor([float(rotated(q[h, i].double(), relative_position(i, j, group, window), theta)
                                         @ k[h // per_kv, j].double()) * scale for j in range(i + 1)], dtype=torch.float64)
            out[h, i] = torch.softmax(scores, 0) @ v[h // per_kv, : i + 1].double()
    return out


def test_grouped_positions_follow_the_paper():
    # w = 4, G = 3, query 20: floor(20 / 3) + 4 - floor(4 / 3) = 9, minus floor(j / 3) beyond the window
    assert [relative_position(20, j, 3, 4) for j in (20, 17, 16, 15, 12, 0)] == [0, 3, 9 - 5, 9 - 5, 9 - 4, 9]


# None: every query in one chunk; 5: chunks of 5 queries, each scoring only the keys up to its last query.
@pytest.mark.parametrize("queries_per_chunk", [None, 5])
def test_attention_matches_the_per_pair_reference(monkeypatch, queries_per_chunk):
    config = config_for(factor=2, original_max_position_embeddings=12, group_size=3, neighbor_window=4)  # reach 28
    module = SimpleNamespace(config=config, training=False)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, 24, 16, generator=gen) for n in (4, 2, 2))
    if queries_per_chunk:
        monkeypatch.setattr("extend.rope.remapped.CHUNK_ELEMENTS", queries_per_chunk * q.shape[1] * k.shape[2])
    out, _ = remapped_attention(module, q, k, v, None, scaling=0.25)
    got = out[0].transpose(0, 1).double()
    assert torch.allclose(got, reference(q[0], k[0], v[0], group=3, window=4, theta=10000.0, scale=0.25), atol=2e-5)
    assert (got - reference(q[0], k[0], v[0], group=1, window=4, theta=10000.0, scale=0.25)).abs().max() > 1e-2


def pair(**rope):
    """Plain RoPE and SelfExtend on the same weights."""
    plain = build_random(load_base_config(BASE), seed=2).eval()
    extended = build_random(config_for(**rope), seed=2).eval()
    extended.load_state_dict(plain.state_dict())
    return plain, extended


@torch.no_grad()
@pytest.mark.parametrize("rope", [{"neighbor_window": 48}, {"group_size": 1, "neighbor_window": 8}],
                         ids=["window over the input", "group size 1"])
def test_plain_rope_where_no_position_is_grouped(rope):
    """A window >= the input keeps every pair exact; G = 1 groups nothing (floor(n / 1) = n)."""
    plain, extended = pair(factor=1, **rope) if rope.get("group_size") == 1 else pair(factor=2, **rope)
    ids = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(plain(ids, use_cache=False).logits, extended(ids, use_cache=False).logits, atol=1e-5)


@torch.no_grad()
def test_grouping_changes_the_model_and_the_cache_agrees():
    plain, extended = pair(factor=4)  # w = 16, G = 5
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(4))
    full = extended(ids, use_cache=False).logits
    assert (full[:, 16:] - plain(ids, use_cache=False).logits[:, 16:]).abs().amax() > 1e-3
    assert torch.allclose(full[:, :16], plain(ids, use_cache=False).logits[:, :16], atol=1e-5)
    prefix = extended(ids[:, :35], use_cache=True)
    cache, steps = prefix.past_key_values, []
    for t in range(35, 40):
        step = extended(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
        cache = step.past_key_values
        steps.append(step.logits)
    assert torch.allclose(torch.cat(steps, 1), full[:, 35:], atol=1e-4)


def test_defaults_cover_the_extended_length():
    """w = L / 4 and the smallest G with (L - w) G + w >= s L: L = 64, s = 8 -> w = 16, G = 11 (48 * 11 + 16 = 544)."""
    config = config_for(factor=8)
    assert config.rope_parameters == {"rope_type": "self_extend", "rope_theta": 10000.0, "group_size": 11,
                                      "neighbor_window": 16, "original_max_position_embeddings": 64}
    assert config.max_position_embeddings == 512


@pytest.mark.parametrize("rope, wanted", [
    ({"group_size": 0}, "rope.group_size=0 must be >= 1"),
    ({"neighbor_window": 0}, "rope.neighbor_window=0 must be > 0"),
    ({"neighbor_window": 64}, "rope.neighbor_window=64 must be below the original length 64"),
    ({"group_size": 2}, "rope.group_size=2 with rope.neighbor_window=16 reaches (L - w) * G + w = 112 tokens"),
    ({"local_window": 4}, "rope.local_window is not a parameter of self_extend"),
])
def test_bad_parameters_give_one_clear_line_each(rope, wanted):
    problems = rope_problems(RopeConfig(type="self_extend", factor=4, **rope), load_base_config(BASE))
    assert len(problems) == 1 and problems[0].startswith(wanted), problems
