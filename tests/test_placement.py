"""Where evaluation and the publish reload put a model (extend/models/placement.py), tested on a machine without
a GPU: the choice is a pure function of the machine, so the machines here are made up (and torch's view of
this one is monkeypatched where the code reads it)."""

from __future__ import annotations

import pytest
import torch

from extend.config import ModelConfig, RopeConfig
from extend.eval.loading import Condition, build_model, placement_for
from extend.eval.runner import check_eval_config
from extend.config import EvalConfig
from extend.models.loading import build_random
from extend.models.placement import (
    FIT_FRACTION, Accelerators, Placement, accelerators, choose_placement, config_bytes, device_problems, input_device,
    weights_bytes,
)

from eval_helpers import tiny_config

GiB = 2**30
NONE = Accelerators()
ONE_80 = Accelerators(cuda_free=(80 * GiB,))
TWO_80 = Accelerators(cuda_free=(80 * GiB, 80 * GiB))
MAC = Accelerators(mps=True)


@pytest.mark.parametrize("knob, machine, size, device, device_map", [
    ("auto", NONE, 14 * GiB, "cpu", None),              # no accelerator: the CPU, loaded as today
    ("cpu", TWO_80, 14 * GiB, "cpu", None),             # asked for the CPU on a GPU machine
    ("auto", MAC, 14 * GiB, "mps", "mps"),
    ("auto", ONE_80, 14 * GiB, "cuda:0", "cuda:0"),     # a 7B model in bf16 fits one 80 GB GPU whole
    ("cuda", ONE_80, 14 * GiB, "cuda:0", "cuda:0"),
    ("auto", ONE_80, 140 * GiB, "cuda:0", "auto"),      # 70B in bf16 does not: accelerate offloads the rest
    ("auto", ONE_80, int(FIT_FRACTION * 80 * GiB) + 1, "cuda:0", "auto"),  # just past the headroom
    ("auto", ONE_80, int(FIT_FRACTION * 80 * GiB), "cuda:0", "cuda:0"),    # just inside it
    ("auto", ONE_80, None, "cuda:0", "auto"),           # size unknown: accelerate decides
    ("auto", TWO_80, 1 * GiB, "cuda:0", "auto"),        # several GPUs: spread, even a small model
    ("cuda:1", TWO_80, 140 * GiB, "cuda:1", "cuda:1"),  # an explicit GPU is taken as asked
    ("auto", Accelerators(cuda_free=(8 * GiB,), mps=True), 1 * GiB, "cuda:0", "cuda:0"),  # CUDA before MPS
])
def test_the_choice(knob, machine, size, device, device_map):
    placement = choose_placement(knob, machine, size)
    assert (placement.device, placement.device_map) == (device, device_map), placement.why
    assert placement.load_kwargs() == ({} if device_map is None else {"device_map": device_map})


@pytest.mark.parametrize("knob, cuda, mps, wanted", [
    ("cuda", 0, False, "eval.device=cuda: this machine has no CUDA device"),
    ("cuda:0", 0, False, "eval.device=cuda:0: this machine has no CUDA device"),
    ("cuda:2", 2, False, "eval.device=cuda:2: this machine has 2 CUDA device(s), cuda:0..cuda:1"),
    ("mps", 1, False, "eval.device=mps: torch.backends.mps is not available"),
    ("gpu", 1, False, "eval.device='gpu': choose auto, cpu, cuda, cuda:N or mps"),
    ("cuda:", 1, False, "eval.device='cuda:': choose auto"),
])
def test_a_device_the_machine_lacks_is_one_line(knob, cuda, mps, wanted):
    problems = device_problems("eval.device", knob, cuda, mps)
    assert len(problems) == 1 and problems[0].startswith(wanted), problems
    with pytest.raises(ValueError):
        choose_placement(knob, Accelerators(cuda_free=(GiB,) * cuda, mps=mps), GiB)


@pytest.mark.parametrize("knob, cuda", [("auto", 0), ("cpu", 0), ("cuda", 1), ("cuda:1", 2), ("auto", 4)])
def test_devices_the_machine_has_pass(knob, cuda):
    assert device_problems("eval.device", knob, cuda, False) == []


def fake_gpus(monkeypatch, free: list[int]) -> None:
    """torch reports len(free) CUDA devices with that much free memory (nothing is allocated on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(free))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(free))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (free[i], 2 * free[i]))


def test_this_machine_is_read_from_torch(monkeypatch):
    fake_gpus(monkeypatch, [3 * GiB, 5 * GiB])
    assert accelerators().cuda_free == (3 * GiB, 5 * GiB)
    assert device_problems("eval.device", "cuda:1") == []
    fake_gpus(monkeypatch, [])
    assert accelerators().cuda_free == ()
    assert check_eval_config(EvalConfig(device="cuda")) == [
        "eval.device=cuda: this machine has no CUDA device (torch.cuda.is_available() is False); use eval.device=auto "
        "or eval.device=cpu"]
    assert check_eval_config(EvalConfig(device="auto")) == []


def condition(dtype: str = "float32") -> Condition:
    config = tiny_config(300)
    return Condition("tiny", ModelConfig(name_or_path="unused", dtype=dtype), RopeConfig(), config, 256)


def test_the_size_is_the_models_in_its_dtype(monkeypatch):
    model = build_random(tiny_config(300))
    params = sum(p.numel() for p in model.parameters())
    assert config_bytes(tiny_config(300), torch.float32) == 4 * params
    assert config_bytes(tiny_config(300), torch.bfloat16) == 2 * params
    # One GPU: whole when the weights fit in FIT_FRACTION of its free memory, spread otherwise.
    fake_gpus(monkeypatch, [int(4 * params / FIT_FRACTION) + 8])
    assert placement_for(condition(), "auto").device_map == "cuda:0"
    fake_gpus(monkeypatch, [int(4 * params / FIT_FRACTION) - 8])
    assert placement_for(condition(), "auto").device_map == "auto"
    assert placement_for(condition("bfloat16"), "auto").device_map == "cuda:0"  # half the bytes
    fake_gpus(monkeypatch, [])
    assert placement_for(condition(), "auto") == Placement("cpu", None, "no accelerator: cpu")


def test_a_saved_model_loads_where_the_placement_says(tmp_path):
    build_random(tiny_config(300), seed=0).save_pretrained(tmp_path / "m")
    assert weights_bytes(tmp_path / "m") == (tmp_path / "m" / "model.safetensors").stat().st_size
    assert weights_bytes(tmp_path / "missing") is None
    cond = condition()
    cond.model = ModelConfig(name_or_path=str(tmp_path / "m"))
    # device_map="cpu" goes through from_pretrained's accelerate path, as a GPU's name would.
    from extend.models.loading import load_base_model

    placed = load_base_model(cond.model, cond.config, placement=Placement("cpu", "cpu", "test"))
    plain = build_model(cond, seed=0, device="cpu")
    assert input_device(placed) == input_device(plain) == torch.device("cpu")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(placed(ids).logits, plain(ids).logits)


def test_models_load_without_hub_kernels(tmp_path):
    """transformers turns Hub kernels on by default where `kernels` is installed, and on a GPU then fetches
    code from the Hub as the model switches to training (offline: an error). extend's loaders keep them off."""
    from extend.models.loading import load_base_model, load_pretrained

    build_random(tiny_config(300), seed=0).save_pretrained(tmp_path / "m")
    cond = condition()
    cond.model = ModelConfig(name_or_path=str(tmp_path / "m"))
    for model in (load_base_model(cond.model, cond.config), load_pretrained(tmp_path / "m")):
        assert model.train().use_kernels is False
