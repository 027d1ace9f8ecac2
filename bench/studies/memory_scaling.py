"""Peak memory of one training step against sequence length, ours vs transformers' Trainer + peft LoRA.

    python -m bench.studies.memory_scaling [--lengths 2048 4096 8192 16384]

For each length, one step of each system in a fresh process (bench/lib/training_harness.py: a ~20M-parameter
Llama with a 32k vocabulary, LoRA, batch 1). Reported: the resident memory the step added on top of the
loaded model. Ours uses its defaults at long length (chunked cross-entropy, gradient checkpointing); the
baseline builds full-sequence logits (16k x 32k float32 logits are 2 GB before their gradient). A baseline
that fails (out of memory) is reported as failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def measure(system: str, length: int, workdir: Path, hidden: int, vocab: int) -> dict | None:
    out = subprocess.run([sys.executable, "-m", "bench.lib.training_harness", "--system", system, "--length", str(length),
                          "--steps", "1", "--hidden", str(hidden), "--vocab", str(vocab), "--workdir", str(workdir)],
                         cwd=REPO, capture_output=True, text=True)
    if out.returncode:
        print(f"{system} at {length} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=32000)
    opts = parser.parse_args(argv)
    table: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="extend-bench-") as tmp:
        for length in opts.lengths:
            table[length] = {s: measure(s, length, Path(tmp), opts.hidden, opts.vocab) for s in ("ours", "baseline")}
            row = table[length]
            print(f"{length:>6}: ours {row['ours']['peak_step_memory_gb'] if row['ours'] else 'failed'} GB, "
                  f"baseline {row['baseline']['peak_step_memory_gb'] if row['baseline'] else 'failed'} GB", flush=True)

    def gb(length: int, system: str) -> float | None:
        r = table[length][system]
        return r["peak_step_memory_gb"] if r else None

    print("\n| tokens | ours (GB) | baseline (GB) | ours / baseline |\n|---|---|---|---|")
    for length in opts.lengths:
        ours, base = gb(length, "ours"), gb(length, "baseline")
        ratio = f"{ours / base:.2f}" if ours is not None and base else "baseline failed" if ours is not None else "-"
        print(f"| {length:,} | {ours if ours is not None else 'failed'} | {base if base is not None else 'failed'} | {ratio} |")
    growth = None
    if 4096 in table and 16384 in table and gb(4096, "ours") and gb(16384, "ours") is not None:
        growth = gb(16384, "ours") / gb(4096, "ours")
        print(f"ours, 4k -> 16k: {growth:.2f}x")
    return {"table": table, "growth_4k_16k": growth}


if __name__ == "__main__":
    main()
