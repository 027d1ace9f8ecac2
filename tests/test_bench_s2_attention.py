"""Smoke test of the S²-Attn benchmark at minimal size: one speed cell per attention, which reports what it ran."""

import importlib


def test_s2_attention_speed_runs_at_minimal_size(capsys):
    bench = importlib.import_module("bench.studies.s2_attention")
    report = bench.main(["--lengths", "512", "--steps", "1", "--no-quality"])
    cells = report["speed"]
    assert [(c["attention"], c["length"], c["rows_per_step"]) for c in cells] == [("full", 512, 8), ("s2", 512, 8)]
    assert [c["kernel"] for c in cells] == ["extend_packed_sdpa", "extend_s2_sdpa_4"]
    assert all(c["tokens_per_s"] > 0 and c["tokens_per_cpu_s"] > 0 and c["peak_step_memory_mb"] >= 0 for c in cells)
    assert "| 512 | 8 | s2 |" in capsys.readouterr().out
