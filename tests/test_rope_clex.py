"""CLEX (rope.type=clex): the ODE's frequencies start at the base, move continuously with t, equal NTK scaling
with alpha = 2t - 1 before training; the rotary hook uses them; the ODE trains, resumes and exports."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

import extend  # noqa: F401  (registers the rope types)
from extend.config import RopeConfig
from extend.models import load_pretrained
from extend.models.loading import with_position_modules
from extend.rope import apply_rope, resolve_rope
from extend.rope.clex import ClexOde, clex_odes, export_clex, initial_inv_freq, train_ode
from extend.rope.methods import ClexParams, default_inv_freq, ntk_inv_freq, ScaleParams
from extend.train import train

from training_fixtures import dataset_dir, make_config, stock_reload_max_diff  # noqa: F401  (fixtures)

DIM, BASE, L = 32, 10000.0, 128
SHAPE = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=2, max_position_embeddings=32)


def trained_ode(seed: int = 0) -> ClexOde:
    """An ODE whose network is not zero (as after training), so its frequencies leave the NTK path."""
    torch.manual_seed(seed)
    ode = ClexOde(DIM, BASE, ClexParams(factor=8.0, original_max_position_embeddings=L, ode_step=0.05))
    with torch.no_grad():
        ode.down.normal_(0, 0.3)
    return ode


def test_at_t_1_the_frequencies_are_the_base_exactly():
    base = default_inv_freq(DIM, BASE).to(torch.float32)
    p = ClexParams(factor=8.0, original_max_position_embeddings=L)
    for seq_len in (1, L // 2, L):  # t = clamp(n / L, 1, t_max) = 1
        assert torch.equal(initial_inv_freq(DIM, BASE, p, seq_len=seq_len)[0], base)
    with torch.no_grad():
        assert torch.equal(trained_ode().inv_freq(1.0), base)


def test_untrained_ode_is_ntk_with_alpha_2t_minus_1():
    p = ClexParams(factor=8.0, original_max_position_embeddings=L, ode_step=0.05)  # RK4 error ~2e-7 at this step
    for t in (1.5, 3.0, 8.0):
        ours = initial_inv_freq(DIM, BASE, p, seq_len=round(t * L))[0].double()
        ntk = ntk_inv_freq(DIM, BASE, ScaleParams(2 * t - 1, L))[0].double()
        assert ((ours - ntk).abs() / ntk).max() < 1e-6, t
    # Past t_max the frequencies stay those of t_max.
    assert torch.equal(initial_inv_freq(DIM, BASE, p, seq_len=20 * L)[0], initial_inv_freq(DIM, BASE, p, seq_len=8 * L)[0])


def test_frequencies_move_continuously_in_t():
    ode = trained_ode()
    with torch.no_grad():
        for t in (1.0, 2.37, 5.0):
            here = ode.inv_freq(t).double()
            near = ode.inv_freq(t + 1e-4).double()
            far = ode.inv_freq(t + 0.5).double()
            assert ((near - here).abs() / here).max() < 1e-3, t  # small dt, small change
            assert ((far - here).abs() / here).max() > 1e-2, t  # and it does change
        # The trained network moves the frequencies off the NTK path.
        ntk = ntk_inv_freq(DIM, BASE, ScaleParams(7.0, L))[0].double()
        assert ((ode.inv_freq(4.0).double() - ntk).abs() / ntk).max() > 1e-2


def _clex_model(factor: float = 4.0):
    base = LlamaConfig(**SHAPE)
    config = apply_rope(base, resolve_rope(RopeConfig(type="clex", factor=factor, ode_step=0.05), base))
    torch.manual_seed(0)
    return config, with_position_modules(LlamaForCausalLM(config).eval())


def test_the_model_uses_the_ode_frequencies_of_its_input_length():
    config, model = _clex_model()
    assert config.rope_parameters["rope_type"] == "longrope" and len(clex_odes(model)) == 1
    stock = LlamaForCausalLM(config).eval()  # the stock form: longrope factors at t = 4
    stock.load_state_dict(model.state_dict(), strict=False)
    plain = LlamaForCausalLM(LlamaConfig(**SHAPE)).eval()
    plain.load_state_dict(stock.state_dict())
    ids = torch.randint(0, 300, (1, 4 * 32))
    with torch.no_grad():
        assert (model(ids, use_cache=False).logits - stock(ids, use_cache=False).logits).abs().max() < 1e-4
        short = ids[:, :32]  # t = 1: the base's own frequencies, not the export's
        assert (model(short, use_cache=False).logits - plain(short, use_cache=False).logits).abs().max() < 1e-5
        assert (stock(short, use_cache=False).logits - plain(short, use_cache=False).logits).abs().max() > 1e-3


def test_training_mode_draws_t_and_trains_the_ode():
    _, model = _clex_model()
    assert train_ode(model) == 1
    (ode,) = clex_odes(model)
    ids = torch.randint(0, 300, (2, 32))
    model(ids, use_cache=False).logits.square().mean().backward()
    assert ode.down.grad is not None and ode.down.grad.abs().sum() > 0
    # export_clex writes factors and weights into the config and leaves no ODE behind
    assert export_clex(model) and not clex_odes(model)
    assert "clex" not in "".join(model.state_dict())
    assert len(model.config.extend_position_method["ode_down"]) == ode.down.shape[0]


def test_training_draws_t_from_the_rows_own_ratio_and_never_compresses_positions():
    """A row of T tokens is already at t = T / L: t is drawn over [T / L, t_max] and positions are stretched
    (scale t L / T >= 1), never squeezed into fractional distances that inference never shows."""
    from extend.rope.clex import _rotary_hook, training_time

    p = ClexParams(factor=8.0, original_max_position_embeddings=L)
    assert training_time(p, L // 2, 0.0) == 1.0 and training_time(p, L, 0.5) == 4.5  # short rows: [1, 8]
    assert training_time(p, 4 * L, 0.0) == 4.0 and training_time(p, 4 * L, 0.5) == 6.0  # [4, 8]
    assert training_time(p, 16 * L, 0.3) == 8.0  # beyond t_max: t_max, positions as they are
    config, model = _clex_model()
    rotary = next(m for m in model.modules() if hasattr(m, "clex"))
    rotary.clex.sampling = True
    x = torch.zeros(1, 1)
    length = rotary.clex.params.original_max_position_embeddings
    for tokens in (length // 4, 2 * length, 16 * length):
        positions = torch.arange(tokens)[None]
        for seed in range(5):
            torch.manual_seed(seed)
            draw = torch.rand(()).item()
            torch.manual_seed(seed)
            cos, _ = _rotary_hook(rotary, (x, positions), {}, None)
            t = training_time(rotary.clex.params, tokens, draw)
            scale = max(t * length / tokens, 1.0)
            expected = (positions[..., None] * scale * rotary.clex.inv_freq(t)).cos()
            assert torch.allclose(cos[..., : expected.shape[-1]], expected.float(), atol=1e-5)
            assert scale >= 1.0


@pytest.mark.slow
def test_lora_run_trains_the_ode_and_the_export_reloads_both_ways(make_config, tmp_path):
    final = train(make_config("rope=clex", "rope.factor=2", "rope.t_max=4", "rope.ode_step=0.25"))
    config = json.loads((final / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "longrope"
    assert any(abs(v) > 0 for row in config["extend_position_method"]["ode_down"] for v in row), "the ODE did not train"
    checkpoint = load_file(final.parent / "checkpoints" / "step-000006" / "trainable.safetensors")
    assert any(".clex." in k for k in checkpoint)
    assert not any("clex" in k for k in load_file(final / "model.safetensors"))

    continuous = load_pretrained(final).eval()  # import extend: the trained ODE, t from the input's length
    assert len(clex_odes(continuous)) == 1
    ids = torch.randint(0, 4000, (1, 128), generator=torch.Generator().manual_seed(0))  # t = 2 = the factor
    with torch.no_grad():
        expected = continuous(ids, use_cache=False).logits
    assert stock_reload_max_diff(final, ids, expected, tmp_path, check="m.config.rope_parameters['rope_type'] == 'longrope'") < 1e-4


@pytest.mark.slow
def test_resume_with_clex_and_anchor_attention_is_bit_exact(make_config, tmp_path, capsys):
    """Both options at once (each adds state a resume must restore: the ODE weights, the RNG that draws t)."""
    options = ("rope=clex", "rope.factor=2", "rope.t_max=4", "rope.ode_step=0.25", "train.attention=anchor")
    reference = train(make_config(*options, f"output_dir={tmp_path / 'reference'}"))
    train(make_config(*options, "train.max_steps=3"))  # stops after step 3; its newest checkpoint is step 2
    capsys.readouterr()
    resumed = train(make_config(*options))
    assert "step-000002 (step 2)" in capsys.readouterr().out
    a, b = load_file(reference / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resuming at step 2"
    ode = [json.loads((f / "config.json").read_text())["extend_position_method"]["ode_down"] for f in (reference, resumed)]
    assert ode[0] == ode[1] and any(v for row in ode[0] for v in row)
