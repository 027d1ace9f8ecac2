"""Long-length memory options (extend/training/memory.py) compute what the plain model computes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from extend.config import ModelConfig
from extend.models.loading import build_random, load_base_config
from extend.models.tokenizer import load_tokenizer
from extend.train import train
from extend.training.memory import TiledMLP, activation_offload, tile_mlps, untile_mlps

from training_fixtures import dataset_dir, make_config  # noqa: F401  (fixtures)


@pytest.fixture
def model():
    config = load_base_config(ModelConfig(name_or_path="tiny-llama"), tokenizer=load_tokenizer("tiny"))
    return build_random(config, seed=0).float()


def loss_and_grads(model, ids: torch.Tensor, offload: bool = False) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with activation_offload(offload):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same(got, want) -> None:
    assert got[0] == pytest.approx(want[0], rel=1e-6)
    assert got[1].keys() == want[1].keys()
    for name, grad in want[1].items():
        assert torch.allclose(got[1][name], grad, rtol=1e-5, atol=1e-7), name


def test_tiled_mlp_matches_the_plain_mlp_and_keeps_parameter_names(model):
    ids = torch.randint(3, 250, (2, 160), generator=torch.Generator().manual_seed(0))  # 160 tokens, hidden 64: 3 slices
    names = [n for n, _ in model.named_parameters()]
    plain = loss_and_grads(model, ids)
    assert tile_mlps(model) == 2
    assert all(isinstance(layer.mlp, TiledMLP) for layer in model.model.layers)
    assert [n for n, _ in model.named_parameters()] == names  # checkpoints and exports see the plain names
    assert_same(loss_and_grads(model, ids), plain)
    untile_mlps(model)
    assert not any(isinstance(m, TiledMLP) for m in model.modules())
    assert_same(loss_and_grads(model, ids), plain)


def test_activation_offload_with_checkpointing_matches(model):
    ids = torch.randint(3, 250, (1, 128), generator=torch.Generator().manual_seed(1))
    plain = loss_and_grads(model, ids)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    assert_same(loss_and_grads(model, ids, offload=True), plain)


@pytest.mark.slow
def test_a_run_with_every_memory_option_trains_and_exports_like_a_plain_one(make_config, tmp_path):
    plain = train(make_config("adapter=full", "train.max_steps=2", f"output_dir={tmp_path / 'plain'}"))
    saving = train(make_config("adapter=full", "train.max_steps=2", f"output_dir={tmp_path / 'saving'}", "train.tiled_mlp=true",
                               "train.checkpoint_offload=true", "train.gradient_checkpointing=true"))
    losses = [json.loads((f / "run_card.json").read_text())["losses"] for f in (plain, saving)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    a, b = load_file(plain / "model.safetensors"), load_file(saving / "model.safetensors")
    assert a.keys() == b.keys()  # the export holds the plain MLP's weights under their own names
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name
