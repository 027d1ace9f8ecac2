"""The memory planner (extend/plan.py) against measured training steps on this CPU.

    OMP_NUM_THREADS=1 python -m bench.studies.plan_validation [--cases lora:1024:on full:8192:off ...]
    python -m bench.studies.plan_validation --measured results/plan_validation.json   # re-plan, no training

Each case is ADAPTER:LENGTH:CHECKPOINTING. For each, two training steps of our loop in a fresh process
(bench/lib/training_harness.py: a ~20M-parameter Llama, hidden 256, 4 layers, 4 heads, MLP 768, a 32k
vocabulary, float32, batch 1, chunked loss of 1,024 tokens, SDPA per packed document), measuring two peaks
beyond the loaded model: the most tensor bytes alive at once during the steps (bench/lib/live_memory.py,
what a GPU allocator's max_memory_allocated counts and what the planner models) and the resident memory
the steps added (ru_maxrss, which on CPU also holds what glibc's heaps keep after tensors are freed). The
planner is given the same composed config and the saved model's config.json; it is compared on what the
measurements cover: its total minus the weights (loaded before the measurement started), i.e. gradients +
optimizer states + activations + loss. The Python/torch baseline and the weights are excluded on both sides.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CASES = ["lora:1024:on", "lora:4096:on", "lora:8192:on", "lora:1024:off", "lora:4096:off", "lora:8192:off",
                 "full:2048:on", "full:8192:on", "full:2048:off", "full:8192:off"]
STEPS = 2


def measure(adapter: str, length: int, checkpointing: bool, workdir: Path) -> dict:
    args = [sys.executable, "-m", "bench.lib.training_harness", "--system", "ours", "--adapter", adapter,
            "--length", str(length), "--steps", str(STEPS), "--workdir", str(workdir), "--live-memory"]
    out = subprocess.run(args + ([] if checkpointing else ["--no-checkpointing"]), cwd=REPO, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{adapter} {length}: {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def planned(adapter: str, length: int, checkpointing: bool, workdir: Path) -> dict:
    """The planner's bytes for the harness's own config and model (built by the measurement before)."""
    from transformers import AutoConfig

    from bench.lib.training_harness import compose
    from extend.plan import GB, Geometry, plan_rows, setup_from_config

    model = next(workdir.glob("model-*"))
    cfg = compose(model, workdir / "unused", workdir / "run", length, STEPS, checkpointing, "float32", adapter)
    setup = setup_from_config(cfg, Geometry.from_config(AutoConfig.from_pretrained(model)), gpus=1)
    row = plan_rows(setup, [length])[0]
    return {"grads_optimizer": (row.grads + row.optimizer) / GB, "activations": row.activations / GB,
            "loss": row.loss / GB, "beyond_weights": (row.total - row.params) / GB}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="ADAPTER:LENGTH:on|off each")
    parser.add_argument("--measured", type=Path, help="a JSON list written by an earlier run: re-plan its cases "
                                                      "against its measurements without training again")
    parser.add_argument("--out", type=Path, help="write the results (a JSON list) here")
    opts = parser.parse_args(argv)
    earlier = {(r["adapter"], r["length"], r["checkpointing"]): (r.get("measured_live_gb"), r["measured_gb"])
               for r in json.loads(opts.measured.read_text())} if opts.measured else {}
    cases = [f"{a}:{n}:{'on' if c else 'off'}" for a, n, c in earlier] if earlier else opts.cases
    results = []
    with tempfile.TemporaryDirectory(prefix="extend-plan-") as tmp:
        for case in cases:
            adapter, length, ckpt = case.split(":")
            length, checkpointing = int(length), ckpt == "on"
            if earlier:
                from bench.lib.training_harness import save_model

                if not any(Path(tmp).glob("model-*")):
                    save_model(Path(tmp) / "model-h256", 256, 4, 4, 32000, 16384)
                live, measured = earlier[(adapter, length, checkpointing)]
            else:
                got = measure(adapter, length, checkpointing, Path(tmp))
                live, measured = got["peak_live_tensor_gb"], got["peak_step_memory_gb"]
            plan = planned(adapter, length, checkpointing, Path(tmp))
            results.append({"adapter": adapter, "length": length, "checkpointing": checkpointing,
                            "measured_live_gb": live, "measured_gb": measured,
                            **{f"plan_{k}": round(v, 3) for k, v in plan.items()},
                            "error_live": None if live is None else round(plan["beyond_weights"] / live - 1, 3),
                            "error": round(plan["beyond_weights"] / measured - 1, 3)})
            print(json.dumps(results[-1]), flush=True)
    if opts.out:
        opts.out.write_text(json.dumps(results, indent=1) + "\n")
    print("\n| adapter | tokens | checkpointing | live tensors (GB) | planned (GB) | of which activations / loss | "
          "error | resident (GB) | error |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        live = "–" if r["measured_live_gb"] is None else f"{r['measured_live_gb']:.3f}"
        live_error = "–" if r["error_live"] is None else f"{r['error_live']:+.0%}"
        print(f"| {r['adapter']} | {r['length']:,} | {'on' if r['checkpointing'] else 'off'} | {live} | "
              f"{r['plan_beyond_weights']:.3f} | {r['plan_activations']:.3f} / {r['plan_loss']:.3f} | {live_error} | "
              f"{r['measured_gb']:.3f} | {r['error']:+.0%} |")
    return results


if __name__ == "__main__":
    main()
