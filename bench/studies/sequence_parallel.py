"""Peak memory per process and tokens/s of extend's loop with sequence parallelism (DeepSpeed Ulysses) against
one process on whole rows, at 8k and 16k tokens per row.

    OMP_NUM_THREADS=1 python -m bench.studies.sequence_parallel [--lengths 8192 16384] [--steps 3] [--out FILE]

Every case trains the same saved tiny Llama (full fine-tune, float32, gradient checkpointing, the chunked
loss, per-document SDPA) under DeepSpeed ZeRO-3 on rows of the standard-library corpus, one row per optimizer
step, started by torchrun: sp = 1 on one process, sp = 2 on two (one sequence-parallel group: each process
holds half of every row). Each process reports the peak resident memory its training steps added on top of
the loaded model (ru_maxrss minus the resident size before the first step; CPU torch keeps no allocator
statistics) and the time of each step; then it runs as many further steps under a tensor tracker
(bench/lib/live_memory.py) for the most tensor bytes alive at once, what a GPU allocator's peak would count.
The case's memory is the largest over its processes, its tokens/s the row tokens per step over the mean step
time after the first (which includes one-off work).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHAPE = dict(hidden=128, layers=2, heads=4, kv_heads=2, vocab=4096, intermediate=384)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(model: Path, data: Path, out: Path, length: int, steps: int, sp: int, report: Path) -> None:
    """One process of a case (under torchrun): train `steps` rows, write this rank's numbers to report."""
    from dataclasses import replace

    from bench.lib.live_memory import LiveTensorBytes
    from bench.lib.training_harness import compose, memory_now_gb, memory_peak_gb
    from extend.train import setup, train_step
    from extend.training.batches import StageRows

    cfg = compose(model, data, out, length, 2 * steps, checkpointing=True, adapter="full")  # timed, then tracked
    cfg = replace(cfg, accelerate=replace(cfg.accelerate, name="zero3", strategy="deepspeed", zero_stage=3,
                                          sequence_parallel_size=sp))
    run = setup(cfg)
    rows = StageRows(run.stages[0])
    before = memory_now_gb("cpu")
    times = []
    for step in range(steps):
        started = time.perf_counter()
        train_step(run, rows.step_rows(step))
        times.append(time.perf_counter() - started)
    added = memory_peak_gb("cpu") - before
    # The same steps again under the tensor tracker (slower, so neither their time nor their resident size is
    # reported): the most tensor bytes alive at once, as a GPU allocator would count them.
    with LiveTensorBytes() as live:
        for step in range(steps):
            train_step(run, rows.step_rows(steps + step))
    rank = run.accelerator.process_index
    line = {"rank": rank, "peak_added_gb": round(added, 4), "peak_live_tensor_gb": round(live.peak / 2**30, 4),
            "seconds": [round(t, 3) for t in times]}
    (report.parent / f"{report.name}.{rank}").write_text(json.dumps(line))


def case(model: Path, data: Path, work: Path, length: int, steps: int, sp: int) -> dict:
    report = work / f"report-{length}-{sp}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(sp), "--master-port", str(free_port()),
           "-m", "bench.studies.sequence_parallel", "--worker", "--model", str(model), "--data", str(data),
           "--folder", str(work / f"run-{length}-{sp}"), "--lengths", str(length), "--steps", str(steps), "--sp", str(sp),
           "--report", str(report)]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"case length={length} sp={sp} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    ranks = [json.loads((work / f"{report.name}.{r}").read_text()) for r in range(sp)]
    timed = [sum(r["seconds"][1:]) / max(1, len(r["seconds"]) - 1) for r in ranks]
    return {"length": length, "sp": sp, "processes": sp, "peak_added_gb_per_process": max(r["peak_added_gb"] for r in ranks),
            "peak_live_tensor_gb_per_process": max(r["peak_live_tensor_gb"] for r in ranks),
            "tokens_per_s": round(length / max(timed), 1), "step_seconds": ranks[0]["seconds"],
            "wall_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384], help="tokens per row")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per case (the first is not timed)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sp", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.model, args.data, args.folder, args.lengths[0], args.steps, args.sp, args.report)

    from bench.lib.training_harness import compose, save_model
    from extend.data.prepare import prepare

    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = work / "model"
        save_model(model, SHAPE["hidden"], SHAPE["layers"], SHAPE["heads"], SHAPE["vocab"], max(args.lengths),
                   intermediate=SHAPE["intermediate"], kv_heads=SHAPE["kv_heads"])
        for length in args.lengths:
            data = work / f"data-{length}"
            prepare(compose(model, data, work / "prep", length, 2 * args.steps, checkpointing=True, adapter="full"),
                    log=lambda _: None)
            for sp in (1, 2):
                results.append(case(model, data, work, length, args.steps, sp))
                print(json.dumps(results[-1]), flush=True)
    for length in args.lengths:
        one, two = (next(r for r in results if r["length"] == length and r["sp"] == sp) for sp in (1, 2))
        ratio = two["peak_added_gb_per_process"] / one["peak_added_gb_per_process"]
        live = two["peak_live_tensor_gb_per_process"] / one["peak_live_tensor_gb_per_process"]
        print(f"{length:>6} tokens: sp=2 per process {ratio:.2f}x of sp=1 (resident peak), {live:.2f}x (live tensors); "
              f"tokens/s {one['tokens_per_s']} -> {two['tokens_per_s']}")
    summary = {"shape": SHAPE, "steps": args.steps, "cases": results, "wall_s": round(time.perf_counter() - started, 1)}
    print(f"wall time {summary['wall_s']} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
