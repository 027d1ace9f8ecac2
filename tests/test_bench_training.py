"""Smoke tests of the training benchmarks at minimal size: both systems run and report sane numbers."""

import importlib

TINY = ["--hidden", "64", "--vocab", "4096"]


def test_train_throughput_runs_at_minimal_size(capsys):
    bench = importlib.import_module("bench.studies.train_throughput")
    result = bench.main(["--length", "128", "--steps", "2", "--rounds", "1", *TINY])
    assert {len(result["runs"][s]) for s in ("ours", "baseline")} == {1}
    assert all(r["tokens_per_s"] > 0 and r["steps"] == 2 for rs in result["runs"].values() for r in rs)
    assert result["throughput_ratio"] > 0
    assert "ours / baseline" in capsys.readouterr().out


def test_memory_scaling_runs_at_minimal_size(capsys):
    bench = importlib.import_module("bench.studies.memory_scaling")
    result = bench.main(["--lengths", "128", *TINY])
    row = result["table"][128]
    assert row["ours"]["length"] == 128 and row["baseline"]["length"] == 128
    assert row["ours"]["peak_step_memory_gb"] >= 0 and row["baseline"]["peak_step_memory_gb"] >= 0
    assert "| 128 |" in capsys.readouterr().out


def test_gpu_benchmark_runs_at_minimal_size_on_cpu(tmp_path, capsys):
    """bench/gpu.sh's Python side on CPU with the smoke shape: both systems at one length, MFU from the
    stated formula, and the RoPE check (float32 angles under bf16 autocast: error at bf16 rounding, where
    bf16 angles would be off by radians)."""
    bench = importlib.import_module("bench.studies.gpu_benchmark")
    shape = bench.SHAPES["smoke"]
    # The formula's N by hand: per layer q, o (64x64), k, v (64x32), three 64x128 MLP matrices; lm_head 64x4096.
    assert bench.linear_parameters(shape) == 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128) + 64 * 4096
    assert bench.flops_per_token(shape, 128) == 4 * bench.linear_parameters(shape) + 12 * 2 * 64 * 128
    result = bench.main(["--shape", "smoke", "--device", "cpu", "--dtype", "float32", "--lengths", "64",
                         "--steps", "2", "--out", str(tmp_path / "gpu.json")])
    assert [(r["system"], r["length"]) for r in result["runs"]] == [("ours", 64), ("baseline", 64), ("trl", 64)]
    for run in result["runs"]:
        assert run["tokens_per_s"] > 0
        assert run["mfu"] == run["tokens_per_s"] * bench.flops_per_token(shape, 64) / 989e12
    rope = result["rope_check"]
    assert rope["float32_angles"] and rope["inv_freq_dtype"] == "torch.float32" and rope["cos_dtype"] == "torch.bfloat16"
    assert rope["max_cos_error"] <= 1e-2 < 0.5 < rope["max_cos_error_if_angles_were_bf16"]
    out = capsys.readouterr().out
    assert "ours / baseline" in out and "ours / trl" in out
    assert (tmp_path / "gpu.json").stat().st_size > 0


def test_the_harness_counts_live_tensors_of_our_steps(tmp_path):
    """--live-memory: our steps under the tensor tracker; at this size the step's tensors (gradients, AdamW
    moments, activations, one chunk of logits) are a few MB, more than nothing and less than the process."""
    from bench.lib.training_harness import main

    result = main(["--system", "ours", "--length", "128", "--steps", "2", "--adapter", "full", "--live-memory",
                   "--workdir", str(tmp_path), *TINY])
    params_bytes = result["parameters"] * 4
    assert 2 * params_bytes < result["peak_live_tensor_gb"] * 2**30 < 50 * params_bytes  # grads + moments at least
