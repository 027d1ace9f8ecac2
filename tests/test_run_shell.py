"""The run shell and the fine-tune loop that extend.encoders and extend.vision share
(extend/training/shell.py, extend/training/steps.py), on toy modules: no model download, a second each."""

from __future__ import annotations

import json
import os
import random
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from extend.config import ConfigError
from extend.training.shell import Run, output_problems, placement_problems, required, write_atomic, write_json
from extend.training.steps import Schedule, StepLoss, Trainable, fit, log_summary


# --- the run folder ---------------------------------------------------------------------------------------

def test_a_refused_run_writes_nothing_and_names_every_problem(tmp_path):
    with pytest.raises(ConfigError) as err:
        Run.open(str(tmp_path / "run"), ["encoder.pooling: 'max' is not one of ['mean']", "encoder.dtype='x'"])
    assert len(err.value.problems) == 2
    assert not (tmp_path / "run").exists()


def test_an_output_dir_that_cannot_be_a_folder_is_one_problem_before_anything_is_written(tmp_path):
    (tmp_path / "taken").write_text("a file")
    assert output_problems(str(tmp_path / "taken")) == [
        f"output_dir={tmp_path / 'taken'}: a file is in the way; give a folder path"]
    inside_a_file = tmp_path / "taken" / "run" / "deeper"
    problems = output_problems(str(inside_a_file))
    assert len(problems) == 1 and "is a file, not a folder" in problems[0]
    with pytest.raises(ConfigError) as err:
        Run.open(str(inside_a_file), ["vision.v2pe_delta=0.0 must be > 0"])
    assert len(err.value.problems) == 2 and err.value.problems[1].startswith(f"output_dir={inside_a_file}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_an_unwritable_parent_is_named(tmp_path, monkeypatch):
    # Root may write anywhere, so the permission answer is what is stood in for, not the folder's mode.
    monkeypatch.setattr(os, "access", lambda path, mode: str(path) != str(tmp_path))
    assert output_problems(str(tmp_path / "a" / "b")) == [
        f"output_dir={tmp_path / 'a' / 'b'}: {tmp_path} is not writable; give another output_dir"]
    assert output_problems(str(tmp_path / "a" / "b"), key="publish.output_dir")[0].startswith("publish.output_dir=")


def test_an_existing_run_folder_is_reused_and_its_outputs_replaced_whole(tmp_path):
    folder = tmp_path / "run"
    (folder / "final").mkdir(parents=True)
    (folder / "final" / "stale.bin").write_text("from the previous run")
    (folder / "notes.txt").write_text("the user's")
    (folder / ".final.partial").mkdir()  # left by a killed run
    run = Run.open(str(folder), [])

    def save(target):
        target.mkdir()
        (target / "model.safetensors").write_text("new")

    assert run.export(save) == folder / "final"
    assert sorted(p.name for p in (folder / "final").iterdir()) == ["model.safetensors"]
    assert sorted(p.name for p in folder.iterdir()) == ["final", "notes.txt"]

    def report(data, path):
        path.write_text(f"run time {data['seconds']} s\n")

    data = run.finish({"results": {"a": 1}, "export": str(folder / "final")}, reports={"report.md": report})
    assert list(data) == ["results", "export", "seconds"] and data["seconds"] >= 0
    assert json.loads((folder / "eval.json").read_text()) == data
    assert (folder / "eval.json").read_text().endswith("}\n")
    assert (folder / "report.md").read_text() == f"run time {data['seconds']} s\n"
    assert sorted(p.name for p in folder.iterdir()) == ["eval.json", "final", "notes.txt", "report.md"]


def test_a_write_that_fails_leaves_the_previous_file_and_no_partial(tmp_path):
    target = tmp_path / "eval.json"
    write_json(target, {"run": 1})

    def crash(path):
        path.write_text('{"run": 2, "half')
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError, match="killed"):
        write_atomic(target, crash)
    assert json.loads(target.read_text()) == {"run": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_placement_and_required_settings_are_one_line_each():
    assert placement_problems("vision", "cpu", "float32") == []
    problems = placement_problems("encoder", "tpu", "float8")
    assert problems == ["encoder.device: 'tpu' must be one of ['auto', 'cpu', 'cuda'] and present on this machine",
                        "encoder.dtype='float8': choose one of float32, bfloat16, float16"]
    assert required("tiny-internvl", "vision.model", "internvl_tiny_v2pe") == "tiny-internvl"
    with pytest.raises(ConfigError) as err:
        required(None, "encoder.model", "minilm_2k")
    assert err.value.problems == ["encoder.model: not set; pick a recipe that sets it (recipe=minilm_2k) or set "
                                  "encoder.model=FOLDER_OR_ID"]


# --- the fine-tune loop -----------------------------------------------------------------------------------

class Toy(nn.Module):
    """An embedding table, a dropout and a head: enough for frozen rows, train/eval mode and the seed."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(8, 4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4, 1)
        self.config = SimpleNamespace(model_type="toy")

    def forward(self, ids):
        return self.head(self.drop(self.table(ids))).squeeze(-1)


def toy_batch(rng):
    def batch(length):
        return torch.tensor([rng.randrange(8) for _ in range(length)])
    return batch


def toy_loss(model, modes):
    def loss(ids):
        modes.append(model.training)
        value = model(ids).pow(2).mean()
        return StepLoss(value, {"loss": round(value.item(), 4)})
    return loss


def test_fit_is_the_plain_adamw_loop_it_replaces():
    """Same seed, same batches: the shared loop and a hand-written loop end in the same weights, bit for bit
    (dropout on, so the torch seed is part of it)."""
    steps, lengths = 5, [3, 6]
    reference = Toy()
    torch.manual_seed(7)
    params = [p for n, p in reference.named_parameters() if "head" in n]
    for name, p in reference.named_parameters():
        p.requires_grad_("head" in name)
    optimizer = torch.optim.AdamW(params, lr=0.1, weight_decay=0.0)
    reference.train()
    rng, losses = random.Random(7), []
    for step in range(1, steps + 1):
        ids = torch.tensor([rng.randrange(8) for _ in range(lengths[(step - 1) % 2])])
        loss = reference(ids).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(round(loss.item(), 4))

    model, modes = Toy(), []
    log = fit(model, Trainable(["head"], "x.trainable", "'head'"), Schedule("length", lengths),
              toy_batch(random.Random(7)), toy_loss(model, modes), steps=steps, learning_rate=0.1, seed=7,
              train_mode=True, log_every=2)
    for (name, got), want in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(got, want), name
    assert [r["loss"] for r in log] == losses
    assert [list(r) for r in log] == [["step", "length", "loss", "seconds"]] * steps
    assert [r["length"] for r in log] == [3, 6, 3, 6, 3]
    assert torch.equal(model.table.weight, Toy().table.weight)  # frozen
    assert modes == [True] * steps and not model.training
    assert all(p.requires_grad for p in model.parameters())


def test_train_mode_false_keeps_dropout_off_during_the_loop():
    model, modes = Toy(), []
    fit(model, Trainable(["head"], "x.trainable", "'head'"), Schedule("length", [4]), toy_batch(random.Random(1)),
        toy_loss(model, modes), steps=2, learning_rate=0.1, seed=1, train_mode=False)
    assert modes == [False, False]


def test_frozen_rows_stay_exactly_and_the_mask_is_gone_afterwards():
    model, before = Toy(), Toy().table.weight.detach().clone()
    frozen = torch.tensor([0, 1, 2, 3])
    fit(model, Trainable(["table"], "x.trainable", "'table'", frozen_rows={"table.weight": frozen}),
        Schedule("length", [16]), lambda n: torch.arange(8).repeat(2), toy_loss(model, []), steps=3,
        learning_rate=0.1, seed=1, train_mode=False)
    assert torch.equal(model.table.weight[:4], before[:4])
    assert not torch.equal(model.table.weight[4:], before[4:])
    model.zero_grad()
    model(torch.arange(8)).sum().backward()  # after fit no row is masked any more
    assert (model.table.weight.grad[:4] != 0).any()


def test_a_pattern_that_matches_nothing_is_one_error_and_a_failed_step_unfreezes_the_model():
    model = Toy()
    with pytest.raises(ConfigError) as err:
        fit(model, Trainable(["nothing"], "x.trainable", "'head'"), Schedule("length", [4]),
            toy_batch(random.Random(1)), toy_loss(model, []), steps=1, learning_rate=0.1, seed=1, train_mode=True)
    assert err.value.problems == ["x.trainable: ['nothing'] matches no parameter of toy; use parts of names such "
                                  "as 'head'"]

    def broken(ids):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        fit(model, Trainable(["head"], "x.trainable", "'head'"), Schedule("length", [4]),
            toy_batch(random.Random(1)), broken, steps=2, learning_rate=0.1, seed=1, train_mode=True)
    assert all(p.requires_grad for p in model.parameters())


def test_log_summary():
    assert log_summary([]) == {"first_loss": None, "last_loss": None, "seconds": 0}
    log = [{"loss": 2.0, "seconds": 0.26}, {"loss": 1.5, "seconds": 0.31}, {"loss": 0.5, "seconds": 0.3}]
    assert log_summary(log) == {"first_loss": 2.0, "last_loss": 0.5, "seconds": 0.9}
