"""Host memory of the DeepSpeed export on the main process, and the exported weights, for a source tree.

    OMP_NUM_THREADS=1 python -m bench.studies.export_memory --accelerate zero3 [--tree PATH] [--label NAME]

Trains a randomly initialised Llama (--hidden/--layers/--vocab; ~60M parameters, 0.24 GB in float32 by
default) for two steps on 2 CPU processes (gloo) through the tree's launch.sh, then lets it export. The
main process's peak resident memory is read from /proc (VmHWM) twice: over training, and over the export
alone (the peak is reset with /proc/PID/clear_refs when the last step's log line appears, and read until
the process exits), with large tensors in pages of their own (MALLOC_MMAP_THRESHOLD_) so that the
resident memory follows what is alive. Run it on two trees, e.g. this one and an earlier commit unpacked with `git archive`,
with the same --workdir: the runs share the base and the dataset, and --compare A B checks that their
exports are tensor-equal. Prints and appends one JSON line per run to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]


def overrides(workdir: Path, accelerate: str, adapter: str, out: Path) -> list[str]:
    return ["model=hf", f"model.name_or_path={workdir / 'base'}", "rope=none", f"adapter={adapter}", "data=stdlib",
            f"data.output_dir={workdir / 'data'}", "data.sources.stdlib.max_documents=24",
            "curriculum.tokens_per_step=128", "curriculum.stages=[{length: 64, steps: 2}]", "train.log_every=1",
            "train.checkpoint_every=0", "train.tracker=none", f"accelerate={accelerate}", f"output_dir={out}"]


def prepare(workdir: Path, args: argparse.Namespace) -> None:
    if not (workdir / "base" / "config.json").exists():
        from bench.lib.training_harness import save_model

        save_model(workdir / "base", args.hidden, args.layers, args.heads, args.vocab, 2048)
    if not (workdir / "data" / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "data_prep", *overrides(workdir, "ddp", "full", workdir / "unused")],
                       cwd=REPO, check=True)


def kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rank0(launcher: psutil.Process) -> psutil.Process | None:
    for p in launcher.children(recursive=True):
        try:
            if p.environ().get("RANK") == "0" and "LOCAL_RANK" in p.environ():
                return p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def measure(tree: Path, workdir: Path, accelerate: str, adapter: str, label: str) -> dict:
    out = workdir / f"run-{label}-{accelerate}-{adapter}"
    # Tensors past 64 KiB get pages of their own that go back to the system when freed, so resident memory
    # follows what is alive; otherwise the heap keeps training's freed buffers and reuses them, hiding the
    # export's allocations.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    cmd = ["bash", "launch.sh", "--processes", "2", "--", *overrides(workdir, accelerate, adapter, out)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    last_step = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "step      2/2" in line:
                last_step.set()

    threading.Thread(target=read, daemon=True).start()
    launcher, worker, train_peak, export_peak, reset = psutil.Process(proc.pid), None, 0, 0, False
    while proc.poll() is None:
        worker = worker or rank0(launcher)
        if worker is not None:
            try:
                if last_step.is_set() and not reset:
                    train_peak = kib(worker.pid, "VmHWM")
                    Path(f"/proc/{worker.pid}/clear_refs").write_text("5")  # VmHWM restarts from the current RSS
                    reset = True
                elif reset:
                    export_peak = kib(worker.pid, "VmHWM")
            except (FileNotFoundError, ProcessLookupError, KeyError):
                pass
        time.sleep(0.01)
    if proc.returncode:
        raise SystemExit(f"{label}: exit {proc.returncode}\n{''.join(lines)[-3000:]}")
    return {"label": label, "accelerate": accelerate, "adapter": adapter, "export": str(out / "final"),
            "train_peak_rss_mb": round(train_peak / 1024, 1), "export_peak_rss_mb": round(export_peak / 1024, 1),
            "wall_s": round(time.perf_counter() - started, 1)}


def tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    found = {}
    for f in sorted(folder.glob("*.safetensors")):
        found.update(load_file(f))
    return found


def compare(a: Path, b: Path) -> dict:
    import torch

    ta, tb = tensors(a), tensors(b)
    differing = sorted(k for k in set(ta) | set(tb) if k not in ta or k not in tb or ta[k].dtype != tb[k].dtype
                       or not torch.equal(ta[k], tb[k]))
    return {"tensors": len(ta), "differing": differing,
            "configs_equal": json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=REPO, help="the source tree whose launch.sh trains and exports")
    parser.add_argument("--label", default="this", help="names the run folder and the result line")
    parser.add_argument("--accelerate", default="zero3", choices=["zero2", "zero3"])
    parser.add_argument("--adapter", default="full", choices=["full", "lora"])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "extend-export-memory",
                        help="base, dataset and runs, shared by the runs to compare")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("FINAL_A", "FINAL_B"),
                        help="only compare two exports tensor by tensor")
    parser.add_argument("--out", type=Path, default=None, help="append the result as a JSON line")
    args = parser.parse_args(argv)
    if args.compare:
        result = compare(*args.compare)
    else:
        args.workdir = args.workdir.resolve()  # the runs start in --tree
        args.workdir.mkdir(parents=True, exist_ok=True)
        prepare(args.workdir, args)
        result = measure(args.tree.resolve(), args.workdir, args.accelerate, args.adapter, args.label)
    print(json.dumps(result))
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
