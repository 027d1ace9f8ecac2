"""Training throughput at 2k tokens: our loop against transformers' Trainer with peft LoRA, alternately.

    python -m bench.studies.train_throughput [--length 2048] [--steps 6] [--rounds 2]

Each round runs ours, then the baseline, each in a fresh process (bench/lib/training_harness.py: the same
~20M-parameter Llama with a 32k vocabulary, the same LoRA, the same rows, batch 1, one row per step), so
the two see the same machine state in turn. Neither uses activation checkpointing, so both do the same
computation per step (ours still scores the loss in chunks); bench/studies/memory_scaling.py measures ours with
checkpointing, as its recipes run at long length. Prints tokens/s (steps after the first) and the peak memory
the steps added, per run, the medians, and ours / baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(system: str, workdir: Path, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.lib.training_harness", "--system", system, "--workdir", str(workdir), *args],
                         cwd=REPO, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{system} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=32000)
    opts = parser.parse_args(argv)
    args = ["--length", str(opts.length), "--steps", str(opts.steps), "--hidden", str(opts.hidden), "--vocab", str(opts.vocab)]
    runs: dict[str, list[dict]] = {"ours": [], "baseline": []}
    with tempfile.TemporaryDirectory(prefix="extend-bench-") as tmp:
        for round_ in range(opts.rounds):
            for system in ("ours", "baseline"):
                result = run(system, Path(tmp), *args, *(["--no-checkpointing"] if system == "ours" else []))
                runs[system].append(result)
                print(f"round {round_ + 1} {system:>8}: {result['tokens_per_s']:>9,.1f} tokens/s, "
                      f"peak step memory {result['peak_step_memory_gb']:.3f} GB", flush=True)
    summary = {s: {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
                   "peak_step_memory_gb": statistics.median(r["peak_step_memory_gb"] for r in rs)} for s, rs in runs.items()}
    ratio = summary["ours"]["tokens_per_s"] / summary["baseline"]["tokens_per_s"]
    print(f"\n{runs['ours'][0]['parameters']:,} parameters, {opts.length} tokens per step, {opts.steps} steps x {opts.rounds} rounds")
    print("| system | tokens/s (median) | peak step memory (GB) |\n|---|---|---|")
    for system, s in summary.items():
        print(f"| {system} | {s['tokens_per_s']:,.1f} | {s['peak_step_memory_gb']:.3f} |")
    print(f"ours / baseline: {ratio:.2f}x tokens/s, "
          f"{summary['ours']['peak_step_memory_gb'] / max(summary['baseline']['peak_step_memory_gb'], 1e-9):.2f}x memory")
    return {"runs": runs, "summary": summary, "throughput_ratio": ratio}


if __name__ == "__main__":
    main()
