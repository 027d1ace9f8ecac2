"""Sequence parallelism (DeepSpeed Ulysses, 2 processes over gloo) against one process on whole rows.

- One step on packed rows whose documents cross the shard boundary: loss and every gradient equal the
  one-process reference at ZeRO stages 1, 2 and 3 (relative 1e-5, float32). One spawned run serves all three
  stages (tests/sequence_parallel_worker.py).
- A ZeRO-3 run with sequence parallel size 2 killed by SIGKILL after a checkpoint resumes to bit-identical
  weights; its loss trajectory equals the one-process run's.

Both runs start from the same saved base, so every layout computes the same numbers.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from extend.config import ModelConfig
from extend.models.loading import build_random, load_base_config
from extend.models.tokenizer import load_tokenizer
from extend.train import backward_loss, forward_loss, setup, step_inputs, train

from training_fixtures import BASE_OVERRIDES, compose_typed

pytestmark = pytest.mark.slow  # two-process launches

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
STAGES = ["curriculum.tokens_per_step=256", "curriculum.stages=[{length: 128, steps: 6}]", "train.micro_batch_size=2"]
SP = ["accelerate=zero3", "accelerate.sequence_parallel_size=2"]
FULL = ["adapter=full"]  # every parameter has a gradient at the first step (LoRA's A has none while B is 0)


@pytest.fixture(scope="module")
def saved_base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("base")
    config = load_base_config(ModelConfig(name_or_path="tiny-llama"), tokenizer=load_tokenizer("tiny"))
    build_random(config, seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    from extend.data.prepare import prepare

    folder = tmp_path_factory.mktemp("data") / "tiny"
    prepare(compose_typed(*STAGES, f"data.output_dir={folder}"), log=lambda _: None)
    return folder


def overrides(base: Path, data: Path, output: Path, *extra: str) -> list[str]:
    return [*BASE_OVERRIDES, "model=hf", f"model.name_or_path={base}", *STAGES, f"data.output_dir={data}",
            f"output_dir={output}", "train.checkpoint_every=2", *extra]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
            script, *args]


def packed_rows() -> dict[str, torch.Tensor]:
    """Two rows of 128 tokens, several documents each; the shard boundary (64) falls inside a document in
    the first row and exactly on a document start in the second. The second row's first document skips
    positions (PoSE), so only the explicit document ids, not the position ids, say where documents are."""
    ids = torch.randint(3, 250, (2, 128), generator=torch.Generator().manual_seed(0))
    position_ids = torch.cat([
        torch.cat([torch.arange(50), torch.arange(40), torch.arange(38)])[None],
        torch.cat([torch.arange(30), torch.arange(200, 234), torch.arange(26), torch.arange(38)])[None],
    ])
    document_ids = torch.cat([
        torch.repeat_interleave(torch.arange(3), torch.tensor([50, 40, 38]))[None],
        torch.repeat_interleave(torch.arange(3), torch.tensor([64, 26, 38]))[None],
    ])
    return {"input_ids": ids, "labels": ids.clone(), "position_ids": position_ids, "document_ids": document_ids}


def assert_close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    rel = float((got - want).norm() / want.norm())
    assert rel <= 1e-5, f"{what}: relative difference {rel:.2e}"


def test_gradients_equal_one_process_on_whole_rows_at_every_zero_stage(saved_base, dataset_dir, tmp_path):
    rows = packed_rows()
    torch.save(rows, tmp_path / "rows.pt")

    # The reference: one process, whole rows, no engine.
    run = setup(compose_typed(*overrides(saved_base, dataset_dir, tmp_path / "reference", *FULL)[len(BASE_OVERRIDES):]))
    batches, tokens = step_inputs(run, rows)
    assert len(batches) == 1 and batches[0]["input_ids"].shape == (2, 128)
    loss_sum = forward_loss(run, batches[0])
    backward_loss(run, loss_sum, tokens).backward()
    want_loss = float(loss_sum.detach()) / tokens
    want = {name: p.grad for name, p in run.model.named_parameters() if p.requires_grad}
    assert len(want) > 10 and all(g is not None and g.norm() > 0 for g in want.values())

    args = overrides(saved_base, dataset_dir, tmp_path / "sp", *FULL, "accelerate=zero2", "accelerate.sequence_parallel_size=2")
    out = subprocess.run(torchrun("tests/sequence_parallel_worker.py", str(tmp_path / "grads.pt"), str(tmp_path / "rows.pt"),
                                  *args), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = torch.load(tmp_path / "grads.pt", weights_only=True)
    assert sorted(results) == [1, 2, 3]
    for stage, got in results.items():
        assert got["loss"] == pytest.approx(want_loss, rel=1e-5), f"ZeRO-{stage} loss"
        assert got["grads"].keys() == want.keys()
        for name, grad in want.items():
            assert_close(got["grads"][name].reshape(grad.shape), grad, f"ZeRO-{stage} {name}")


def weights(final: Path) -> dict[str, torch.Tensor]:
    return {**load_file(final / "model.safetensors"),
            **{f"adapter.{k}": v for k, v in load_file(final / "adapter" / "adapter_model.safetensors").items()}}


def losses(run: Path) -> list[float]:
    return json.loads((run / "final" / "run_card.json").read_text())["losses"]


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and the workers it started (as a crashed node loses them all)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    for child in children:
        os.kill(child, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)


def test_sigkill_then_resume_is_bit_identical_and_matches_one_process(saved_base, dataset_dir, tmp_path):
    reference = losses(train(compose_typed(*overrides(saved_base, dataset_dir, tmp_path / "one")[len(BASE_OVERRIDES):])).parent)

    clean = tmp_path / "clean"
    done = subprocess.run(torchrun("extend/train.py", *overrides(saved_base, dataset_dir, clean, *SP)), cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((clean / "final" / "run_card.json").read_text())["accelerate"]["sequence_parallel_size"] == 2
    assert losses(clean) == pytest.approx(reference, rel=1e-5)

    killed = tmp_path / "killed"
    kill_at = random.Random(0).choice([3, 4, 5])  # after the step-2 checkpoint, before the end (6 steps)
    proc = subprocess.Popen(torchrun("extend/train.py", *overrides(saved_base, dataset_dir, killed, *SP)), cwd=REPO,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if f"step {kill_at:>6}/" in line:
            kill_tree(proc.pid)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "final").exists()

    resumed = subprocess.run(torchrun("extend/train.py", *overrides(saved_base, dataset_dir, killed, *SP)), cwd=REPO,
                             env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a, b = weights(clean / "final"), weights(killed / "final")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume (killed at step {kill_at})"
    assert losses(killed) == losses(clean)
