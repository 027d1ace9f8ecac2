"""PoSE on the tiny base: extended 16x (and 32x) while training only on 256-token rows, next to the same
extension trained on rows of the full extended length.

    nice python -m bench.studies.pose [--runs pose_16x full_16x pose_32x] [--seeds 0 1] [--out results/pose]
    python -m bench.studies.pose --table-only

Each run is `extend prep` then `extend train` in a fresh process (the data is prepared first, so the training
process's peak resident memory is the training's), with the tiny recipe's evaluation after training: passkey
(50 items per length, 10 at each of 5 depths) and held-out perplexity (the same 8 x 4,096 tokens at every
length), next to the base as it is and the base with training-free YaRN at the same factor.

- pose_16x: recipes/tiny_pose.yaml (128 -> 2,048; 256-token rows whose PoSE ids span 1,024 then 2,048).
- full_16x: recipes/tiny.yaml at factor 16 with rows of 1,024 then 2,048 tokens (the same 200 steps of 4,096
  tokens, passkey and copy items up to 2,048 tokens): what PoSE saves compute and memory against.
- pose_32x: recipes/tiny_pose_32x.yaml (128 -> 4,096, still 256-token rows).

`--seeds`: each run once per seed (`seed` and `data.seed`: initialisation order, data and PoSE draws); a seed
N > 0 names the run `<run>_seedN`.

Reported per run: passkey and perplexity per length, training seconds (the run card), wall seconds of the
training command, and the training process's peak resident memory (the last step log's `peak mem`).
Writes OUT/<run>.json per run and prints the table of every finished run.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "results" / "pose"
WORK = REPO / "outputs" / "pose_study"

FULL_16X = [
    "recipe=tiny", "rope.factor=16", "curriculum.stages=[{length: 1024, steps: 40}, {length: 2048, steps: 160}]",
    "train.micro_batch_size=2", "data.sources.passkey.lengths=[127,255,511,1023,2047]",
    "data.sources.copy.lengths=[255,511,1023,1535,2047]", "eval.lengths=[128,256,512,1024,2048]",
    "eval.comparisons=[{name: base, name_or_path: tiny-base}, "
    "{name: 'base + yarn x16 (no training)', name_or_path: tiny-base, rope: {type: yarn, factor: 16}}]",
]
RUNS = {
    "pose_16x": ["recipe=tiny_pose"],
    "full_16x": FULL_16X,
    "pose_32x": ["recipe=tiny_pose_32x"],
}
PEAK = re.compile(r"peak mem ([0-9.]+) GB")


def run(name: str, overrides: list[str], work: Path) -> dict:
    """Prepare, train and evaluate one run in fresh processes; its measurements."""
    out = work / name
    args = [*overrides, f"run_name={name}", f"output_dir={out}", f"data.output_dir={work / 'data' / name}",
            "train.tracker=none"]
    prep = subprocess.run([sys.executable, "-m", "extend", "prep", *args], cwd=REPO, capture_output=True, text=True)
    if prep.returncode:
        raise SystemExit(f"{name}: extend prep failed:\n{prep.stderr[-3000:]}")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "extend", "train", *args], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{name}: extend train failed:\n{done.stderr[-3000:]}")
    card = json.loads((out / "final" / "run_card.json").read_text())
    evaluation = json.loads((out / "final" / "eval" / "after_training" / "eval.json").read_text())
    peaks = PEAK.findall(done.stdout + done.stderr)
    print(f"{name}: {card['steps']} steps in {card['train_seconds']:.0f} s", flush=True)
    return {"overrides": overrides, "steps": card["steps"], "tokens": card["tokens"],
            "train_seconds": round(card["train_seconds"], 1), "wall_seconds": round(wall, 1),
            "peak_training_memory_gb": float(peaks[-1]) if peaks else None,
            "results": {model: {task: {n: cell["value"] for n, cell in found["by_length"].items()}
                                for task, found in tasks.items()}
                        for model, tasks in evaluation["results"].items()}}


def table(found: dict) -> str:
    """Per run and length: the trained model, then the base and the base with training-free YaRN."""
    lines = ["| run | length | passkey: trained / base / base + YaRN | perplexity: trained / base / base + YaRN |",
             "|---|---|---|---|"]
    for name, r in found.items():
        models = list(r["results"])  # the trained model first, then the recipe's comparisons
        for n in r["results"][models[0]]["passkey"]:
            passkey = " / ".join(f"{r['results'][m]['passkey'][n]:.0%}" for m in models)
            perplexity = " / ".join(f"{r['results'][m]['perplexity'][n]:.2f}" for m in models)
            lines.append(f"| {name} | {int(n):,} | {passkey} | {perplexity} |")
    lines += ["", "| run | seeds | passkey at the longest length, per seed | mean |", "|---|---|---|---|"]
    keys_of: dict[str, list[str]] = {}
    for key in found:
        keys_of.setdefault(split_key(key)[0], []).append(key)
    for name, keys in keys_of.items():
        trained = [next(iter(found[key]["results"].values()))["passkey"] for key in keys]
        longest = max(trained[0], key=int)
        values = [by_length[longest] for by_length in trained]
        seeds = ", ".join(split_key(key)[1] for key in keys)
        lines.append(f"| {name} at {int(longest):,} | {seeds} | {' / '.join(f'{v:.0%}' for v in values)} | "
                     f"{sum(values) / len(values):.1%} |")
    lines += ["", "| run | steps | tokens | training s | wall s | peak training memory (GB, RSS) |",
              "|---|---|---|---|---|---|"]
    for name, r in found.items():
        lines.append(f"| {name} | {r['steps']} | {r['tokens']:,} | {r['train_seconds']:.0f} | {r['wall_seconds']:.0f} | "
                     f"{r['peak_training_memory_gb']:.2f} |")
    return "\n".join(lines)


def run_key(name: str, seed: int) -> str:
    return name if seed == 0 else f"{name}_seed{seed}"


def split_key(key: str) -> tuple[str, str]:
    """run_key's inverse: (run name, seed as written; "0" for none)."""
    name, _, seed = key.partition("_seed")
    return name, seed or "0"


def is_run_key(stem: str) -> bool:
    name, seed = split_key(stem)
    return name in RUNS and seed.isdigit()


def order(path: Path) -> tuple[int, int]:
    """Runs in RUNS order, each run's seeds in number order."""
    name, seed = split_key(path.stem)
    return (list(RUNS).index(name) if name in RUNS else len(RUNS), int(seed) if seed.isdigit() else 0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seed and data.seed of each run (default 0)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=WORK, help="run and data folders (not results)")
    parser.add_argument("--table-only", action="store_true", help="print the table of the finished runs")
    args = parser.parse_args(argv)
    if any(seed < 0 for seed in args.seeds):
        parser.error("--seeds must be >= 0")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in [] if args.table_only else args.runs:
        for seed in args.seeds:
            key, overrides = run_key(name, seed), RUNS[name] + ([f"seed={seed}", f"data.seed={seed}"] if seed else [])
            # One file per run: runs started in parallel processes never write the same file.
            (args.out / f"{key}.json").write_text(json.dumps(run(key, overrides, args.work), indent=2) + "\n")
    found = {path.stem: json.loads(path.read_text()) for path in sorted(args.out.glob("*.json"), key=order)
             if is_run_key(path.stem)}
    print(table(found))
    return found


if __name__ == "__main__":
    main()
