"""Smoke test of bench/studies/rope_encoder_study.py at minimal size: a two-step base, two methods through the real
pipeline (one fine-tuned, with the control), plain extrapolation, the written files, and the cached base
reused by a second run."""

import importlib
import json

import pytest

from extend.config import ConfigError

TINY_BASE = ["--base-length", "64", "--base-hidden", "32", "--base-layers", "2", "--base-heads", "2",
             "--base-local-attention", "16", "--base-mlm-steps", "2", "--base-mlm-batch", "2", "--base-steps", "2",
             "--base-batch-size", "2"]


def test_rope_encoder_study_runs_at_minimal_size(tmp_path, capsys):
    bench = importlib.import_module("bench.studies.rope_encoder_study")
    args = ["--methods", "linear", "abf", "--tuned-methods", "linear", "--factor", "2", "--candidates", "3",
            "--tune-steps", "1", "--tune-batch", "2", "--out", str(tmp_path / "study"),
            "--cache", str(tmp_path / "cache"), *TINY_BASE]
    record = bench.main(args)
    results = record["results"]
    assert list(results["variants"]) == ["no method (extrapolated)", "linear", "abf"]
    assert set(results["variants"]["linear"]) == {"training_free", "fine_tuned"}
    assert set(results["variants"]["abf"]) == {"training_free"}
    assert set(results["original"]) == set(results["control"]) == {"passkey", "needle", "line"}
    assert all(set(by_length) == {64, 128} for by_length in results["original"].values())
    assert record["base"]["layer_types"] == ["full_attention", "sliding_attention"]
    # abf's base: the global theta times factor^2, written into the global layers only.
    run_config = json.loads((tmp_path / "study" / "runs" / "abf" / "final" / "config.json").read_text())
    assert run_config["rope_parameters"]["full_attention"]["rope_theta"] == 160.0 * 4
    assert run_config["rope_parameters"]["sliding_attention"]["rope_theta"] == 10000.0
    saved = json.loads((tmp_path / "study" / "results.json").read_text())
    assert str(tmp_path) not in (tmp_path / "study" / "results.json").read_text()
    assert saved["base"]["folder"] == f"rope-encoder-base-{saved['base']['fingerprint']}"
    assert saved["command"].startswith("python -m bench.studies.rope_encoder_study --methods linear abf")
    table = (tmp_path / "study" / "table.md").read_text()
    assert "| (c) linear + fine-tune |" in table and "| (b) abf, training-free |" in table
    assert "| (a) original, truncating at 64 |" in capsys.readouterr().out
    # A rerun finds the base by its settings and does not train it again.
    base = tmp_path / "cache" / f"rope-encoder-base-{saved['base']['fingerprint']}"
    stamp = (base / "model.safetensors").stat().st_mtime_ns
    again = bench.main([*args[:2], "--tuned-methods", "--no-extrapolation", *args[5:]])
    assert (base / "model.safetensors").stat().st_mtime_ns == stamp
    assert again["results"]["original"] == results["original"]


def test_bad_methods_fail_before_the_base_is_built(tmp_path):
    bench = importlib.import_module("bench.studies.rope_encoder_study")
    with pytest.raises(ConfigError, match="--tuned-methods: yarn is not in --methods"):
        bench.main(["--methods", "linear", "--tuned-methods", "yarn", "--cache", str(tmp_path), *TINY_BASE])
    assert not list(tmp_path.iterdir())
