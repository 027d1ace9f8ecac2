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


@pytest.fixture(scope="module")
def clean_run(dataset_dir, tmp_path_factory) -> Path:
    """An uninterrupted run from the command line, as the interrupted ones are launched."""
    folder = tmp_path_factory.mktemp("clean") / "run"
    clean = subprocess.run(cli(folder, dataset_dir), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr[-2000:]
    return folder


def assert_bit_identical(clean: Path, resumed: Path, note: str) -> None:
    a, b = weights(clean / "final"), weights(resumed / "final")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume ({note})"


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_is_bit_identical(dataset_dir, clean_run, tmp_path):

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
    assert_bit_identical(clean_run, tmp_path / "killed", f"killed at step {kill_at}")


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_then_resumes_bit_identical(dataset_dir, clean_run, tmp_path):
    run = tmp_path / "preempted"
    proc = subprocess.Popen(cli(run, dataset_dir), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output = []
    for line in proc.stdout:
        output.append(line)
        if "step      1/" in line:
            proc.send_signal(signal.SIGTERM)  # what a cluster scheduler sends before preempting a job
    proc.wait(timeout=120)
    text = "".join(output)
    assert proc.returncode == 128 + signal.SIGTERM, text[-2000:]
    stopped = int(text.split("stopped at step ")[1].split("/")[0])
    assert stopped < 6
    # A checkpoint exactly where it stopped (not only at the last checkpoint_every multiple), no export.
    assert (run / "checkpoints" / f"step-{stopped:06d}" / "COMPLETE").exists()
    assert not (run / "final").exists()

    resumed = subprocess.run(cli(run, dataset_dir), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {run / 'checkpoints' / f'step-{stopped:06d}'}" in resumed.stdout + resumed.stderr
    assert_bit_identical(clean_run, run, f"stopped by SIGTERM at step {stopped}")


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


def _as_written_before(folder: Path, group: str, key: str) -> None:
    """Make the checkpoint in `folder` look written by an extend whose config had no `group.key` yet."""
    import hashlib
    import json

    state_file = folder / "state.json"
    state = json.loads(state_file.read_text())
    del state["config"][group][key]
    state["config_fingerprint"] = hashlib.sha256(json.dumps(state["config"], sort_keys=True).encode()).hexdigest()[:16]
    state_file.write_text(json.dumps(state))


def test_resume_after_an_upgrade_that_added_config_keys(make_config, tmp_path):
    """A checkpoint whose config lacks a key the code has since gained resumes when the key is at its
    default, to the weights of an uninterrupted run; a key set away from its default, or a changed value, is
    refused with a line naming the key."""
    from extend.config import ConfigError
    from extend.validation import validate_training

    reference = train(make_config(f"output_dir={tmp_path / 'reference'}"))
    cfg = make_config(f"output_dir={tmp_path / 'upgraded'}", "train.max_steps=3")
    train(cfg)
    newest = checkpoint_module.load_latest(Path(cfg.output_dir, "checkpoints"))
    assert newest.state.step == 2 and newest.state.config["train"]["loss"] == "auto"
    _as_written_before(newest.folder, "train", "loss")  # as if train.loss did not exist when it was written

    with pytest.raises(ConfigError, match=r"train\.loss: \(not in the checkpoint's config\) -> 'plain'"):
        validate_training(make_config(f"output_dir={tmp_path / 'upgraded'}", "train.loss=plain"))
    with pytest.raises(ConfigError, match=r"train\.learning_rate: 0\.01 -> 0\.02"):
        validate_training(make_config(f"output_dir={tmp_path / 'upgraded'}", "train.learning_rate=2e-2"))

    final = train(make_config(f"output_dir={tmp_path / 'upgraded'}"))
    a, b = weights(reference), weights(final)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_checkpoint_without_a_recorded_config_needs_the_same_fingerprint(make_config, tmp_path):
    from extend.training.checkpoint import Checkpoint, TrainState, resume_problems
    from extend.training.run_config import config_fingerprint, fingerprinted_config

    cfg = make_config()
    current = TrainState(config_fingerprint=config_fingerprint(cfg), config=fingerprinted_config(cfg))
    old = Checkpoint(tmp_path / "run" / "checkpoints" / "step-000002", TrainState(config_fingerprint="0123456789abcdef"))
    assert resume_problems(old, current, "auto") == [
        f"{old.folder} was written by a different config; resume with the same recipe and overrides, or choose "
        "another run_name"]
    same = Checkpoint(old.folder, TrainState(config_fingerprint=current.config_fingerprint))
    assert resume_problems(same, current, "auto") == []
