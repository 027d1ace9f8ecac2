"""Training throughput, MFU and peak memory on one GPU at long lengths, ours against Trainer + peft LoRA,
and a check that RoPE angles stay float32 under bf16.

    python -m bench.studies.gpu_benchmark [--shape 1b] [--lengths 4096 16384 32768] [--steps 4] [--out FILE]

bench/gpu.sh runs this on a GPU machine (about 5-8 minutes on an H200-class GPU, start-up included). Per
length, bench/lib/training_harness.py trains the same randomly initialised Llama with the same LoRA (r=8 on
q/k/v/o) on the same rows, one row per step, batch 1, in a fresh process each: ours (extend/train.py's
setup and train_step: chunked cross-entropy, SDPA, gradient checkpointing), then the baseline
(transformers' Trainer on a peft model, SDPA, gradient checkpointing as users set it at long length;
full-sequence logits). Both load bf16 weights and train under bf16 autocast. A run that fails (out of
memory, say) is recorded with its last error line and the others go on.

MFU = tokens/s x model FLOPs per token / peak FLOP/s (--peak-tflops; H100/H200 SXM dense bf16: 989), with

    model FLOPs per token = 4 N + 12 L d T

N = parameters of every linear layer (lm_head included, embeddings excluded: a lookup), L layers, d the
attention width (heads x head dim), T the sequence length. 4N, not the usual 6N: LoRA's frozen weights
get no weight gradient (forward 2N + input gradients 2N; the adapters' own FLOPs are negligible).
12 L d T is PaLM's attention term (QK^T and AV, forward and backward, not halved for the causal mask).
Recomputation under gradient checkpointing is not counted (that would be hardware FLOPs utilisation).

The RoPE check builds the model in bf16 with extend's loader (build_random) with YaRN x8 in its config
(4096 -> 32768 positions, or 1/8 of a longer --lengths) and compares the rotary module's cos/sin at the last positions,
computed under bf16 autocast, with a float64 reference: the error must stay at bf16 rounding of the
output (<= 1e-2), where angles computed in bf16 would be off by whole radians; it reports both.

Writes --out (JSON: machine, shape, formula, per length and system the harness result plus MFU, and the
RoPE check) and prints a table. `--shape smoke --device cpu --dtype float32` runs the same code in
seconds on CPU (tests/test_bench_training.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]

# Model shapes: 1b is TinyLlama-1.1B's (grouped-query attention, 32k vocabulary).
SHAPES = {
    "1b": dict(hidden=2048, layers=22, heads=32, kv_heads=4, intermediate=5632, vocab=32000),
    "smoke": dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=4096),
}


def linear_parameters(shape: dict) -> int:
    """N of the FLOP formula: q, k, v, o, the three MLP matrices per layer, and lm_head."""
    d, head_dim = shape["hidden"], shape["hidden"] // shape["heads"]
    kv = shape["kv_heads"] * head_dim
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * shape["intermediate"]
    return shape["layers"] * per_layer + d * shape["vocab"]


def flops_per_token(shape: dict, length: int) -> float:
    return 4 * linear_parameters(shape) + 12 * shape["layers"] * shape["hidden"] * length


def harness(system: str, workdir: Path, shape: dict, length: int, steps: int, device: str, dtype: str) -> dict:
    args = [sys.executable, "-m", "bench.lib.training_harness", "--system", system, "--workdir", str(workdir),
            "--length", str(length), "--steps", str(steps), "--hidden", str(shape["hidden"]),
            "--layers", str(shape["layers"]), "--heads", str(shape["heads"]), "--kv-heads", str(shape["kv_heads"]),
            "--intermediate", str(shape["intermediate"]), "--vocab", str(shape["vocab"]),
            "--device", device, "--dtype", dtype]
    if system == "baseline":
        args.append("--checkpointing")
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    if out.returncode:
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        return {"system": system, "length": length, "failed": lines[-1] if lines else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def rope_check(shape: dict, length: int, device: str) -> dict:
    """cos/sin of the last positions from a bf16 model with YaRN written into its config, vs float64."""
    from transformers import LlamaConfig

    from extend.config import RopeConfig
    from extend.models.loading import build_random
    from extend.rope import apply_rope, resolve_rope

    original = max(length // 8, 16)
    base = LlamaConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                       num_hidden_layers=1, num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
                       max_position_embeddings=original, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    config = apply_rope(base, resolve_rope(RopeConfig(type="yarn", factor=length / original), base))
    model = build_random(config, dtype=torch.bfloat16).to(device)
    rotary = model.model.rotary_emb
    positions = torch.arange(length - 64, length, device=device)[None]
    x = torch.zeros(1, 1, device=device, dtype=torch.bfloat16)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        cos, _ = rotary(x, positions)
    inv_freq = rotary.inv_freq.double()
    angles = positions[0].double()[:, None] * inv_freq[None]
    reference = torch.cat([angles, angles], dim=-1).cos() * rotary.attention_scaling
    error = (cos[0].double() - reference).abs().max().item()
    bf16_angles = (positions[0].to(torch.bfloat16)[:, None] * rotary.inv_freq.to(torch.bfloat16)[None]).double()
    bf16_error = (torch.cat([bf16_angles, bf16_angles], -1).cos() * rotary.attention_scaling - reference).abs().max().item()
    return {"positions": [length - 64, length - 1], "rope": "yarn", "factor": length / original,
            "inv_freq_dtype": str(rotary.inv_freq.dtype), "cos_dtype": str(cos.dtype),
            "max_cos_error": error, "max_cos_error_if_angles_were_bf16": bf16_error,
            "float32_angles": rotary.inv_freq.dtype == torch.float32 and error <= 1e-2}


def machine(device: str) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": device}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    else:
        info["cpu_threads"] = torch.get_num_threads()
    return info


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES), default="1b")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run; the first is not timed")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the device's dense peak at --dtype")
    parser.add_argument("--systems", nargs="+", choices=["ours", "baseline", "trl"], default=["ours", "baseline", "trl"],
                        help="trl (TRL's SFTTrainer, bench/lib/training_harness.py) is skipped when trl is not installed")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "gpu" / "gpu.json")
    opts = parser.parse_args(argv)
    if "trl" in opts.systems and importlib.util.find_spec("trl") is None:
        print("trl is not installed: the TRL SFTTrainer peer is skipped (pip install trl, or pip install '.[bench]')",
              flush=True)
        opts.systems.remove("trl")
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU here; run on the GPU machine (bench/gpu.sh) or pass --device cpu")
    if opts.steps < 2:
        raise SystemExit(f"--steps {opts.steps}: at least 2 (the first step is not timed)")
    shape = SHAPES[opts.shape]
    result = {"machine": machine(opts.device), "shape": {"name": opts.shape, **shape,
                                                          "linear_parameters": linear_parameters(shape)},
              "flops_per_token": "4 N + 12 L d T (N linear parameters, L layers, d hidden, T length)",
              "peak_tflops": opts.peak_tflops, "dtype": opts.dtype, "runs": []}
    # At 32k or the longest length: where a bf16 angle would be off by radians (it is exact near 0).
    result["rope_check"] = rope_check(shape, max(*opts.lengths, 32768), opts.device)
    print(f"RoPE under bf16 autocast at positions {result['rope_check']['positions']}: max cos error "
          f"{result['rope_check']['max_cos_error']:.2e} (bf16 angles would give "
          f"{result['rope_check']['max_cos_error_if_angles_were_bf16']:.2e}); float32 angles: "
          f"{result['rope_check']['float32_angles']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="extend-gpu-bench-") as tmp:
        for length in opts.lengths:
            for system in opts.systems:
                run = harness(system, Path(tmp), shape, length, opts.steps, opts.device, opts.dtype)
                if "failed" not in run:
                    run["mfu"] = run["tokens_per_s"] * flops_per_token(shape, length) / (opts.peak_tflops * 1e12)
                result["runs"].append(run)
                print(format_run(run), flush=True)
                opts.out.parent.mkdir(parents=True, exist_ok=True)
                opts.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return result


def format_run(run: dict) -> str:
    if "failed" in run:
        return f"{run['length']:>6} {run['system']:>8}: failed: {run['failed']}"
    return (f"{run['length']:>6} {run['system']:>8}: {run['tokens_per_s']:>10,.1f} tokens/s, MFU {run['mfu']:.1%}, "
            f"peak step memory {run['peak_step_memory_gb']:.2f} GB")


def table(result: dict) -> str:
    lines = ["| length | system | tokens/s | MFU | peak step memory (GB) |", "|---|---|---|---|---|"]
    for run in result["runs"]:
        if "failed" in run:
            lines.append(f"| {run['length']} | {run['system']} | failed: {run['failed'][:80]} | | |")
        else:
            lines.append(f"| {run['length']} | {run['system']} | {run['tokens_per_s']:,.1f} | {run['mfu']:.1%} | "
                         f"{run['peak_step_memory_gb']:.2f} |")
    by_length = {}
    for run in result["runs"]:
        by_length.setdefault(run["length"], {})[run["system"]] = run
    for length, runs in by_length.items():
        for peer in ("baseline", "trl"):
            if all(s in runs and "failed" not in runs[s] for s in ("ours", peer)):
                lines.append(f"\n{length}: ours / {peer} = {runs['ours']['tokens_per_s'] / runs[peer]['tokens_per_s']:.2f}x "
                             f"tokens/s, {runs['ours']['peak_step_memory_gb'] / max(runs[peer]['peak_step_memory_gb'], 1e-9):.2f}x memory")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
    sys.exit(0)
