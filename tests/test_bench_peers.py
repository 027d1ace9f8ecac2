"""Smoke tests of the peer and loss-kernel benchmarks at minimal size, and the facts their tables rest on:
TRL keeps packed documents apart and Trainer + peft does not; our best-fit decreasing packs as TRL's does."""

import importlib

import pytest

from bench.lib import training_harness

TINY = ["--hidden", "32", "--layers", "1", "--heads", "2", "--vocab", "4096"]  # the stdlib rows' tokenizer needs 4096


def test_trl_keeps_packed_documents_apart_and_plain_trainer_rows_do_not():
    kept_apart = importlib.import_module("bench.studies.peer_training").isolation()
    assert kept_apart["TRL SFTTrainer"] < 1e-5 < 0.05 < kept_apart["Trainer + peft"]


def test_trl_peer_trains_on_its_own_packing_and_counts_its_tokens(tmp_path):
    result = training_harness.main(["--system", "trl", "--length", "128", "--steps", "2", *TINY,
                                    "--workdir", str(tmp_path)])
    assert result["steps"] == 2 and result["tokens_per_s"] > 0 and result["tokens_per_cpu_s"] > 0
    assert all(0 < t <= 128 for t in result["tokens_per_step"])
    # padding-free: position ids and no attention mask; TRL turns the cache off (so transformers keeps apart)
    assert result["inputs"]["attention_mask"] is False and result["inputs"]["use_cache"] is False


def test_documents_of_splits_rows_at_position_restarts():
    import torch

    rows = {"input_ids": torch.tensor([[5, 6, 7, 8, 9]]), "position_ids": torch.tensor([[0, 1, 0, 1, 2]])}
    assert training_harness.documents_of(rows) == [[5, 6], [7, 8, 9]]


def test_our_best_fit_decreasing_packs_like_trls_on_one_batch():
    bench = importlib.import_module("bench.studies.trl_packing")
    docs = bench.documents(400, 512, seed=1)
    ours, trl = bench.ours(docs, 512, "sft"), bench.trl(docs, 512, "bfd_split", None)
    assert (ours["rows"], ours["dropped"]) == (trl["rows"], trl["dropped"]) == (ours["rows"], 0)
    assert ours["fill"] == pytest.approx(trl["fill"]) and ours["positions_restart_at_starts"] is True
    assert ours["split_documents"] == trl["split_documents"] == sum(len(d) > 512 for d in docs) > 0
    truncating = bench.trl(docs, 512, "bfd", None)  # TRL's default for SFT drops what exceeds a row
    assert truncating["dropped"] == sum(len(d) - 512 for d in docs if len(d) > 512)


def test_loss_kernel_study_reports_time_memory_and_parity(capsys):
    bench = importlib.import_module("bench.studies.loss_kernels")
    report = bench.main(["--cases", "32x300x1500", "32x300x1500+head", "--losses", "plain", "chunked", "--repeats", "1"])
    rows = {(r["case"], r["loss"]): r for r in report["rows"]}
    assert set(rows) == {(c, n) for c in ("32x300x1500", "32x300x1500+head") for n in ("plain", "chunked")}
    assert all(r["seconds"] >= 0 and r["peak_gb"] >= 0 for r in rows.values())
    assert rows["32x300x1500+head", "chunked"]["max_relative_difference"] <= 1e-5
    assert "| 32x300x1500 | chunked |" in capsys.readouterr().out
