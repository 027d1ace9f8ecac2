"""bench/studies/pose.py's bookkeeping: a seed names its run, --table-only finds every run and seed in order
and ignores other files, and a negative seed is refused before anything is written."""

import importlib
import json

import pytest

study = importlib.import_module("bench.studies.pose")


def result(steps: int) -> dict:
    by_length = {"128": 1.0, "2048": steps / 10}
    return {"overrides": [], "steps": steps, "tokens": steps * 4096, "train_seconds": 1.0, "wall_seconds": 2.0,
            "peak_training_memory_gb": 0.9,
            "results": {"trained": {"passkey": by_length, "perplexity": {"128": 150.0, "2048": 160.0}}}}


def test_seeds_name_runs_and_the_table_lists_them_in_order(tmp_path, capsys):
    assert study.run_key("pose_16x", 0) == "pose_16x" and study.run_key("pose_16x", 3) == "pose_16x_seed3"
    for stem, steps in [("pose_32x", 1), ("pose_16x_seed10", 2), ("pose_16x", 3), ("pose_16x_seed2", 4),
                        ("full_16x", 5), ("summary", 6), ("pose_16x_seedx", 7)]:
        (tmp_path / f"{stem}.json").write_text(json.dumps(result(steps)))
    found = study.main(["--table-only", "--out", str(tmp_path)])
    assert list(found) == ["pose_16x", "pose_16x_seed2", "pose_16x_seed10", "full_16x", "pose_32x"]
    out = capsys.readouterr().out
    assert "| pose_16x_seed2 | 2,048 | 40% | 160.00 |" in out
    assert "| pose_16x at 2,048 | 0, 2, 10 | 30% / 40% / 20% | 30.0% |" in out


def test_a_negative_seed_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        study.main(["--seeds", "-1", "--out", str(tmp_path / "out")])
    assert stop.value.code == 2 and "--seeds must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything is written
