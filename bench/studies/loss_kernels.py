"""The cross-entropy implementations of train.loss against each other: time and peak memory of the loss's
forward and backward at realistic output layers.

    python -m bench.studies.loss_kernels [--device cpu|cuda] [--dtype float32|bfloat16] [--cases 576x49152x2048 ...]
        [--repeats 2] [--out FILE]

A case is HIDDENxVOCABxTOKENS: TOKENS hidden states of width HIDDEN (random, requiring grad, as the last
layer's output does) scored against an output layer of VOCAB rows (bias-free, as in Llama-style models),
targets uniform over the vocabulary. `+head` after a case also trains the output layer (full fine-tuning);
without it the head is frozen (LoRA on the attention, as in the benchmarks' training runs). Per case and
implementation (extend.training.loss.LOSSES: chunked, plain and, where installed, cce and liger), one process
of its own: one warm-up call (CCE's torch_compile compiles here), then --repeats timed calls of
loss.backward(); reported: the median seconds (on CPU, CPU seconds of the process: with one thread the
wall time of an idle machine, and steady on a shared one) and the peak memory above what was allocated before the
call (CPU: the peak resident size, reset through /proc/self/clear_refs after the warm-up; CUDA:
torch.cuda.max_memory_allocated), and the largest relative difference of loss and gradients from plain.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
CASES = ["576x49152x2048", "576x49152x8192", "576x49152x2048+head", "2048x32000x2048"]


def parse(case: str) -> tuple[int, int, int, bool]:
    shape, head = case.removesuffix("+head"), case.endswith("+head")
    hidden, vocab, tokens = (int(x) for x in shape.split("x"))
    return hidden, vocab, tokens, head


def _vm(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 2**20  # kB -> GB
    raise KeyError(key)


def reset_peak(device: str) -> float:
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**30
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident size
    return _vm("VmRSS")


def peak(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**30
    return _vm("VmHWM")


def one(name: str, case: str, device: str, repeats: int, dtype: str = "float32") -> dict:
    """Measure one implementation on one case, in this process."""
    from torch import nn

    from extend.training.loss import causal_lm_loss_sum

    hidden_size, vocab, tokens, train_head = parse(case)
    torch.manual_seed(0)
    kind = getattr(torch, dtype)
    head = nn.Linear(hidden_size, vocab, bias=False, device=device, dtype=kind).requires_grad_(train_head)
    hidden = torch.randn(1, tokens + 1, hidden_size, device=device, dtype=kind, requires_grad=True)
    labels = torch.randint(0, vocab, (1, tokens + 1), device=device)

    def call() -> tuple[float, list[torch.Tensor]]:
        head.zero_grad(set_to_none=True)
        hidden.grad = None
        loss, _ = causal_lm_loss_sum(hidden, head, labels, None, chunk_size=1024, loss=name)
        loss.backward()
        return float(loss), [hidden.grad] + ([head.weight.grad] if train_head else [])

    # CPU: seconds of CPU time of this process (one thread: the wall time of an idle machine, and steady when
    # other work shares the cores); CUDA: wall time.
    clock = time.perf_counter if device == "cuda" else time.process_time
    started = clock()
    call()  # warm-up (and CCE's compilation)
    warmup = clock() - started
    times, peaks = [], []
    for _ in range(repeats):
        before = reset_peak(device)
        started = clock()
        value, grads = call()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(clock() - started)
        peaks.append(peak(device) - before)
    out = Path(tempfile.gettempdir()) / f"extend-loss-{name}-{case}.pt"
    torch.save({"loss": value, "grads": [g.cpu() for g in grads]}, out)
    return {"loss": name, "case": case, "seconds": round(statistics.median(times), 3), "warmup_seconds": round(warmup, 2),
            "peak_gb": round(max(peaks), 3), "value": value, "grads_file": str(out)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--cases", nargs="+", default=CASES)
    parser.add_argument("--losses", nargs="+", default=None, help="default: every one that runs on the device")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="hidden states and head")
    parser.add_argument("--one", nargs=2, metavar=("LOSS", "CASE"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    opts = parser.parse_args(argv)
    if opts.one:
        print(json.dumps(one(*opts.one, opts.device, opts.repeats, opts.dtype)), flush=True)
        return {}

    from extend.training.loss import LOSSES, loss_problem

    names = opts.losses or ["plain"] + [n for n in LOSSES if n != "plain"]
    started = time.time()
    rows, skipped = [], {}
    for name in names:
        problem = loss_problem(name, opts.device)
        if problem:
            skipped[name] = problem
            print(f"skipped: {problem}", flush=True)
    for case in opts.cases:
        reference = None
        for name in (n for n in names if n not in skipped):
            cmd = [sys.executable, "-m", "bench.studies.loss_kernels", "--device", opts.device, "--repeats",
                   str(opts.repeats), "--dtype", opts.dtype, "--one", name, case]
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            if proc.returncode:
                lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
                row = {"loss": name, "case": case, "failed": lines[-1] if lines else f"exit {proc.returncode}"}
            else:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                saved = torch.load(row.pop("grads_file"), weights_only=True)
                (Path(tempfile.gettempdir()) / f"extend-loss-{name}-{case}.pt").unlink(missing_ok=True)
                if name == "plain":
                    reference = saved
                elif reference is not None:
                    row["max_relative_difference"] = max(
                        [abs(saved["loss"] - reference["loss"]) / abs(reference["loss"])]
                        + [float((g - r).norm() / r.norm()) for g, r in zip(saved["grads"], reference["grads"])])
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| case (hidden x vocab x tokens) | loss | seconds (fwd+bwd) | peak memory (GB) | rel. diff. from plain |"
          "\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['loss']} | {r.get('seconds', 'failed')} | {r.get('peak_gb', '-')} | "
              f"{r.get('max_relative_difference', '-')} |")
    report = {"device": opts.device, "dtype": opts.dtype, "torch": torch.__version__, "python": platform.python_version(),
              "repeats": opts.repeats, "skipped": skipped, "rows": rows, "wall_s": round(time.time() - started)}
    if opts.device == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    if opts.out:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
