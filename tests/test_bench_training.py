"""Smoke tests of the training benchmarks at minimal size: both systems run and report sane numbers."""

import importlib

TINY = ["--hidden", "64", "--vocab", "4096"]


def test_train_throughput_runs_at_minimal_size(capsys):
    bench = importlib.import_module("bench.train_throughput")
    result = bench.main(["--length", "128", "--steps", "2", "--rounds", "1", *TINY])
    assert {len(result["runs"][s]) for s in ("ours", "baseline")} == {1}
    assert all(r["tokens_per_s"] > 0 and r["steps"] == 2 for rs in result["runs"].values() for r in rs)
    assert result["throughput_ratio"] > 0
    assert "ours / baseline" in capsys.readouterr().out


def test_memory_scaling_runs_at_minimal_size(capsys):
    bench = importlib.import_module("bench.memory_scaling")
    result = bench.main(["--lengths", "128", *TINY])
    row = result["table"][128]
    assert row["ours"]["length"] == 128 and row["baseline"]["length"] == 128
    assert row["ours"]["peak_step_memory_gb"] >= 0 and row["baseline"]["peak_step_memory_gb"] >= 0
    assert "| 128 |" in capsys.readouterr().out
