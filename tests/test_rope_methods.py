"""Each method against its formula written out independently, and against transformers' own code."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from extend.config import RopeConfig
from extend.rope import METHODS, apply_rope, resolve_rope
from extend.rope.methods import (
    AbfParams,
    ClexParams,
    EntropyAbfParams,
    Llama3Params,
    LongRopeParams,
    PowerParams,
    ScaleParams,
    TruncatedParams,
    YarnParams,
)

GRID = [(16, 10000.0, 2.0, 64), (64, 10000.0, 8.0, 4096), (128, 500000.0, 4.0, 8192), (128, 10000.0, 16.0, 2048)]


def theta(d: int, b: float) -> list[float]:
    return [b ** (-2 * i / d) for i in range(d // 2)]


def close(ours: torch.Tensor, expected: list[float], rel: float = 1e-6) -> None:
    for i, (o, e) in enumerate(zip(ours.tolist(), expected)):
        assert math.isclose(o, e, rel_tol=rel, abs_tol=1e-30), f"dim {i}: {o} != {e}"
    assert len(ours) == len(expected)


def test_hand_computed_values():
    # d=4, b=10000: theta = [1, 0.01]
    inv, att = METHODS["linear"].inv_freq(4, 1e4, ScaleParams(2.0, 16))
    close(inv, [0.5, 0.005])
    inv, _ = METHODS["ntk"].inv_freq(4, 1e4, ScaleParams(4.0, 16))  # b' = 1e4 * 4^2
    close(inv, [1.0, 1 / math.sqrt(1.6e5)])
    inv, _ = METHODS["abf"].inv_freq(4, 1e4, AbfParams(4.0, 16, rope_theta=1e6))
    close(inv, [1.0, 0.001])
    inv, _ = METHODS["power"].inv_freq(4, 1e4, PowerParams(4.0, 16, power=2.0))  # (1 - 2i/d)^2 = [1, 1/4]
    close(inv, [1.0, 0.0025])
    assert att == 1.0


@pytest.mark.parametrize("d,b,s,L", GRID)
def test_scale_methods_match_their_formulas(d, b, s, L):
    t = theta(d, b)
    p = ScaleParams(s, L)
    close(METHODS["linear"].inv_freq(d, b, p)[0], [x / s for x in t])
    b_ntk = b * s ** (d / (d - 2))
    close(METHODS["ntk"].inv_freq(d, b, p)[0], theta(d, b_ntk))
    for n in (L // 2, L, 3 * L, round(s * L)):
        b_dyn = b * ((s * max(n, L) / L) - (s - 1)) ** (d / (d - 2))
        close(METHODS["dynamic"].inv_freq(d, b, p, seq_len=n)[0], theta(d, b_dyn))
    close(METHODS["abf"].inv_freq(d, b, AbfParams(s, L, rope_theta=b * 50))[0], theta(d, b * 50))
    close(METHODS["entropy_abf"].inv_freq(d, b, EntropyAbfParams(s, L, rope_theta=b * 50))[0], theta(d, b * 50))
    close(METHODS["power"].inv_freq(d, b, PowerParams(s, L, power=0.5))[0], [x * (1 - 2 * i / d) ** 0.5 for i, x in enumerate(t)])


@pytest.mark.parametrize("d,b,s,L", GRID)
def test_yarn_formula(d, b, s, L):
    def dim_of(rotations):  # the dim index whose wavelength fits `rotations` times into L
        return d * math.log(L / (rotations * 2 * math.pi)) / (2 * math.log(b))

    low, high = max(math.floor(dim_of(32)), 0), min(math.ceil(dim_of(1)), d - 1)
    expected = []
    for i, x in enumerate(theta(d, b)):
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)
        keep = 1 - ramp
        expected.append(x / s * (1 - keep) + x * keep)
    inv, att = METHODS["yarn"].inv_freq(d, b, YarnParams(s, L))
    close(inv, expected)
    assert att == pytest.approx(0.1 * math.log(s) + 1, rel=1e-12)


@pytest.mark.parametrize("d,b,s,L", GRID)
def test_llama3_formula(d, b, s, L):
    expected = []
    for x in theta(d, b):
        wavelength = 2 * math.pi / x
        if wavelength < L / 4:
            expected.append(x)
        elif wavelength > L / 1:
            expected.append(x / s)
        else:
            smooth = (L / wavelength - 1) / (4 - 1)
            expected.append((1 - smooth) * x / s + smooth * x)
    close(METHODS["llama3"].inv_freq(d, b, Llama3Params(s, L))[0], expected)


@pytest.mark.parametrize("d,b,s,L", GRID)
def test_longrope_formula(d, b, s, L):
    short = [1 + i / d for i in range(d // 2)]
    long = [1 + 3 * i / d for i in range(d // 2)]
    p = LongRopeParams(s, L, short_factor=tuple(short), long_factor=tuple(long))
    inv, att = METHODS["longrope"].inv_freq(d, b, p, seq_len=L)
    close(inv, [x / f for x, f in zip(theta(d, b), short)])
    inv, _ = METHODS["longrope"].inv_freq(d, b, p, seq_len=L + 1)
    close(inv, [x / f for x, f in zip(theta(d, b), long)])
    assert att == pytest.approx(math.sqrt(1 + math.log(s) / math.log(L)))


@pytest.mark.parametrize("d,b,s,L", GRID)
def test_truncated_formula(d, b, s, L):
    T = L / 8
    cutoff = 2 * math.pi / T
    expected = [x if x >= cutoff else (2 * math.pi / (16 * T) if x >= cutoff / 8 else 0.0) for x in theta(d, b)]
    inv, _ = METHODS["truncated"].inv_freq(d, b, TruncatedParams(s, L, truncation_length=T))
    close(inv, expected)
    assert (inv == 0).any() or min(theta(d, b)) >= cutoff / 8  # the zero band exists for these bases


def test_outputs_are_float32():
    for name, method in METHODS.items():
        params = {
            "longrope": LongRopeParams(2.0, 64, (1.0,) * 8, (1.0,) * 8),
            "abf": AbfParams(2.0, 64, 1e5),
            "entropy_abf": EntropyAbfParams(2.0, 64, 1e5),
            "power": PowerParams(2.0, 64, 1.0),
            "truncated": TruncatedParams(2.0, 64, 8.0),
            "yarn": YarnParams(2.0, 64),
            "llama3": Llama3Params(2.0, 64),
            "clex": ClexParams(2.0, 64),
        }.get(name, ScaleParams(2.0, 64))
        inv, att = method.inv_freq(16, 1e4, params)
        assert inv.dtype == torch.float32 and inv.shape == (8,) and isinstance(att, float), name


# --- parity with transformers' implementation of the natively supported types -------------------------

NATIVE = {
    "linear": {"factor": 4},
    "dynamic": {"factor": 4},
    "yarn": {"factor": 8},
    "llama3": {"factor": 8, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
    "longrope": {"factor": 4, "short_factor": [1 + i / 64 for i in range(32)], "long_factor": [1 + i / 16 for i in range(32)]},
}


@pytest.mark.parametrize("rope_type", sorted(NATIVE))
@pytest.mark.parametrize("theta_base,head_dim,length", [(10000.0, 64, 2048), (500000.0, 64, 8192)])
def test_parity_with_transformers(rope_type, theta_base, head_dim, length):
    base = LlamaConfig(
        hidden_size=head_dim * 4, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2,
        intermediate_size=64, vocab_size=32, max_position_embeddings=length,
        rope_parameters={"rope_type": "default", "rope_theta": theta_base},
    )
    resolved = resolve_rope(RopeConfig(type=rope_type, **NATIVE[rope_type]), base)
    config = apply_rope(base, resolved)
    init = ROPE_INIT_FUNCTIONS[rope_type]
    seq_lens = [None, length, 3 * length] if resolved.method.dynamic else [None]
    for seq_len in seq_lens:
        theirs, their_att = init(config, torch.device("cpu"), seq_len=seq_len)
        ours, our_att = resolved.inv_freq(seq_len=seq_len)
        rel = ((ours.double() - theirs.double()).abs() / theirs.double().abs()).max().item()
        assert rel <= 1e-6, (rope_type, seq_len, rel)
        assert our_att == pytest.approx(their_att, rel=1e-6)
