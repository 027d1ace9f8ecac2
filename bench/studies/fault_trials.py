"""Fault trials: SIGKILL a training run at fixed random points, resume each, and compare with a clean run.

    python -m bench.studies.fault_trials [--trials 5] [--seed 0] [--steps 12]

A tiny LoRA run (the tiny Llama preset, linear x2, two curriculum stages, a checkpoint every 2 steps) is
run once uninterrupted. Then, for each kill point drawn from `random.Random(seed)`, the same command is
started, killed with SIGKILL right after it logs that step (so some kills land inside a checkpoint
write), and rerun with the same command until it finishes. Every resumed export must be bit-identical
to the clean one: every trained tensor, compared with torch.equal. Prints one line per trial and writes
results/fault_trials.json. One process, CPU, OMP_NUM_THREADS=1 (float reductions in one order).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def overrides(steps: int, data: Path, output: Path) -> list[str]:
    half = steps // 2
    return [
        "model=tiny_llama", "rope=linear", "rope.factor=2", "data=stdlib", "data.sources.stdlib.max_documents=24",
        "curriculum.tokens_per_step=512", f"curriculum.stages=[{{length: 64, steps: {half}}}, {{length: 128, steps: {steps - half}}}]",
        "train.learning_rate=1e-2", "train.checkpoint_every=2", "train.tracker=none",
        f"data.output_dir={data}", f"output_dir={output}",
    ]


def train(args: list[str]) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "extend/train.py", *args], cwd=REPO, env=ENV, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"training failed:\n{out.stderr[-3000:]}")
    return out


def killed_at(args: list[str], step: int) -> bool:
    """Start a run and SIGKILL it right after it logs `step`; False if it finished first."""
    proc = subprocess.Popen([sys.executable, "extend/train.py", *args], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if f"step {step:>6}/" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    return proc.returncode == -signal.SIGKILL


def trained_tensors(final: Path) -> dict[str, torch.Tensor]:
    return {**load_file(final / "model.safetensors"),
            **{f"adapter.{k}": v for k, v in load_file(final / "adapter" / "adapter_model.safetensors").items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=12)
    opts = parser.parse_args()

    kill_points = random.Random(opts.seed).sample(range(1, opts.steps), opts.trials)
    results = []
    with tempfile.TemporaryDirectory(prefix="extend-fault-") as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, "-m", "data_prep", *overrides(opts.steps, root / "data", root / "clean")],
                       cwd=REPO, env=ENV, check=True, capture_output=True)
        train(overrides(opts.steps, root / "data", root / "clean"))
        clean = trained_tensors(root / "clean" / "final")
        for trial, step in enumerate(kill_points):
            run = root / f"trial{trial}"
            args = overrides(opts.steps, root / "data", run)
            started = time.perf_counter()
            if not killed_at(args, step):
                raise SystemExit(f"trial {trial}: the run finished before step {step} could be killed")
            leftovers = sorted(p.name for p in (run / "checkpoints").iterdir()) if (run / "checkpoints").exists() else []
            resumed = train(args)
            resumed_from = next((l.split("resumed from ")[1].split()[0] for l in (resumed.stdout + resumed.stderr).splitlines()
                                 if "resumed from " in l), None)
            got = trained_tensors(run / "final")
            identical = got.keys() == clean.keys() and all(torch.equal(got[k], clean[k]) for k in clean)
            results.append({"trial": trial, "killed_after_step": step, "checkpoints_left": leftovers,
                            "resumed_from": Path(resumed_from).name if resumed_from else None,
                            "bit_identical": identical, "seconds": round(time.perf_counter() - started, 1)})
            print(f"trial {trial}: SIGKILL after step {step:>2}, left {leftovers}, resumed from "
                  f"{results[-1]['resumed_from'] or 'the start'}: {'bit-identical' if identical else 'DIFFERENT'}")
    out = REPO / "results" / "fault_trials.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": f"python -m bench.studies.fault_trials --trials {opts.trials} --seed {opts.seed} "
                                          f"--steps {opts.steps}", "trials": results}, indent=2) + "\n")
    if not all(r["bit_identical"] for r in results):
        raise SystemExit("some resumed runs differ from the clean run")
    print(f"all {len(results)} resumed runs are bit-identical to the clean run ({out.relative_to(REPO)})")


if __name__ == "__main__":
    main()
