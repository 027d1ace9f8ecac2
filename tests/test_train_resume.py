"""Interrupted runs resume to exactly the weights of an uninterrupted one."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import extend.training.checkpoint as checkpoint_module
from extend.train import train

from training_fixtures import BASE_OVERRIDES, dataset_dir, make_config  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parent.parent
# Same thread count in every process, so float reductions happen in the same order.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def cli(output_dir: Path, dataset: Path) -> list[str]:
    return [sys.executable, "extend/train.py", *BASE_OVERRIDES, f"data.output_dir={dataset}", f"output_dir={output_dir}"]


def weights(final: Path) -> dict[str, torch.Tensor]:
    return {**load_file(final / "model.safetensors"), **{f"adapter.{k}": v for k, v in load_file(final / "adapter" / "adapter_model.safetensors").items()}}


def test_sigkill_after_a_checkpoint_then_resume_is_bit_identical(dataset_dir, tmp_path):
    clean = subprocess.run(cli(tmp_path / "clean", dataset_dir), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr[-2000:]

    kill_at = random.Random(0).choice([3, 4, 5])  # after the step-2 checkpoint, before the end (6 steps)
    proc = subprocess.Popen(cli(tmp_path / "killed", dataset_dir), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if f"step {kill_at:>6}/" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "killed" / "final").exists()

    resumed = subprocess.run(cli(tmp_path / "killed", dataset_dir), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a, b = weights(tmp_path / "clean" / "final"), weights(tmp_path / "killed" / "final")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume (killed at step {kill_at})"


def test_failed_checkpoint_write_keeps_the_previous_one(make_config, tmp_path, monkeypatch):
    reference = train(make_config(f"output_dir={tmp_path / 'reference'}"))

    cfg = make_config(f"output_dir={tmp_path / 'crashing'}")
    real_replace, calls = os.replace, []

    def replace_that_fails_the_second_time(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")  # simulated full disk mid-checkpoint
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "replace", replace_that_fails_the_second_time)
    with pytest.raises(OSError):
        train(cfg)
    monkeypatch.undo()
    folder = Path(cfg.output_dir, "checkpoints")
    assert sorted(p.name for p in folder.iterdir()) == ["step-000002", "step-000004.tmp"]

    with pytest.warns(UserWarning, match="step-000004.tmp"):
        final = train(cfg)
    a, b = weights(reference), weights(final)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_incomplete_checkpoint_is_skipped(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step-000002").mkdir(parents=True)
    (root / "step-000002" / "state.json").write_text("{}")
    (root / "step-000002" / "COMPLETE").write_text("")
    (root / "step-000004").mkdir()  # no marker: a copy that never finished
    with pytest.warns(UserWarning, match="step-000004"):
        assert [p.name for p in checkpoint_module.complete_checkpoints(root)] == ["step-000002"]
