"""S²-Attn against full attention on the tiny base: training speed and memory at 1k-4k, then quality at 8x.

    nice -n 10 env OMP_NUM_THREADS=1 python -m bench.studies.s2_attention [--lengths 1024 2048 4096]
        [--steps 4] [--longest-document 1024] [--no-quality] [--quality-steps 40 160] [--items-per-cell 10] [--out results/s2_attention]

1. Speed and memory: for each row length and `train.attention` (full, s2 at the default group fraction 1/4),
   a fresh process loads the tiny base (extend/models/tiny_base.py) with the tiny recipe's YaRN scaled to
   the row length, and runs full fine-tuning steps of 4,096 tokens each (4 rows of 1k, 2 of 2k, 1 of 4k: the
   tiny recipe's tokens per step) through the training loop's module (chunked loss), fwd + bwd + AdamW.
   Every row packs the same seeded documents (64 to --longest-document tokens, position ids restarting per
   document; 0: one document per row). Per-document attention already keeps full attention's cost to the
   documents' lengths, so S²-Attn can only save where documents are longer than its groups.
   Reported: tokens/s over the steps after the first, and the peak resident memory of the steps above the
   resident memory before them (Linux VmHWM, reset through /proc/self/clear_refs after loading; no profiler).
2. Quality: `extend/train.py recipe=tiny` once per attention (extend 128 -> 1,024, 8x), with the tiny
   recipe's evaluation of the export (passkey at 128-1024 and held-out perplexity; the base comparisons are
   left out: results/tiny.md has them). `--quality-steps A B` sets the two stages' steps (recipe: 40 160),
   `--items-per-cell` the passkey items per length and depth (recipe: 10).

Prints a markdown table per part and writes both, with the raw numbers, to OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ATTENTION = ("full", "s2")
TOKENS_PER_STEP = 4096
BASE_LENGTH = 128  # the tiny base's trained positions


def compose(*overrides: str):
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf

    from extend.config import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return OmegaConf.to_object(hydra_compose("config", overrides=["recipe=tiny", *overrides]))


def packed_rows(rows: int, length: int, vocab: int, longest: int, seed: int = 0):
    """Seeded rows of random token ids in documents of 64 to `longest` tokens, positions restarting per document
    (longest = 0: one document per row)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (rows, length), generator=g)
    positions = []
    for _ in range(rows):
        pieces, left = [], length
        while left:
            n = left if longest == 0 else min(left, int(torch.randint(64, longest + 1, (1,), generator=g)))
            pieces.append(torch.arange(n))
            left -= n
        positions.append(torch.cat(pieces))
    return ids, torch.stack(positions)


def status_kb(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux), in kB."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


def rss_kb() -> int:
    return status_kb("VmRSS")


def reset_peak_rss() -> None:
    """Restart the peak resident size (VmHWM) from the current one, so loading does not count."""
    Path("/proc/self/clear_refs").write_text("5")


def measure(attention: str, length: int, steps: int, longest: int) -> dict:
    """One speed/memory cell, in this process (main runs each cell in a fresh one)."""
    import torch

    from extend.models import load_base_config, load_base_model
    from extend.models.tokenizer import load_tokenizer
    from extend.models.training_attention import use_training_attention
    from extend.rope import apply_rope, resolve_rope
    from extend.models.packed_attention import documents_from_positions
    from extend.training.loss import next_token_targets
    from extend.training.model import ChunkedCausalLM

    cfg = compose(f"rope.factor={length // BASE_LENGTH}", f"train.attention={attention}")
    tokenizer = load_tokenizer(cfg.data.tokenizer, cfg.data.cache_dir)
    base = load_base_config(cfg.model, tokenizer=tokenizer)
    model = load_base_model(cfg.model, apply_rope(base, resolve_rope(cfg.rope, base)), seed=cfg.seed)
    use_training_attention(model, cfg.train)
    kernel = model.config._attn_implementation
    module = ChunkedCausalLM(model, cfg.train.loss_chunk_size).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    ids, positions = packed_rows(TOKENS_PER_STEP // length, length, model.config.vocab_size, longest)
    targets, documents = next_token_targets(ids, positions), documents_from_positions(positions)
    reset_peak_rss()
    before, times = rss_kb(), []
    cpu = []
    for _ in range(steps + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        loss, count = module(ids, positions, targets, documents)
        (loss / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    timed = times[1:]
    return {"attention": attention, "kernel": kernel, "length": length, "rows_per_step": ids.shape[0],
            "documents_per_row": round(float((positions == 0).sum()) / ids.shape[0], 2),
            "steps_timed": len(timed), "tokens_per_s": round(TOKENS_PER_STEP * len(timed) / sum(timed), 1),
            "tokens_per_cpu_s": round(TOKENS_PER_STEP * len(timed) / sum(cpu[1:]), 1),
            "step_seconds": [round(t, 3) for t in times], "peak_step_memory_mb": round((status_kb("VmHWM") - before) / 1024, 1)}


def speed(lengths: list[int], steps: int, longest: int) -> list[dict]:
    cells = []
    for length in lengths:
        for attention in ATTENTION:
            out = subprocess.run([sys.executable, "-m", "bench.studies.s2_attention", "--cell", attention, str(length),
                                  "--steps", str(steps), "--longest-document", str(longest)], cwd=REPO,
                                 capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{attention} at {length} failed:\n{out.stderr[-3000:]}")
            cells.append(json.loads(out.stdout.strip().splitlines()[-1]))
            c = cells[-1]
            print(f"{length:>5} {attention:>4}: {c['tokens_per_s']:>8,.1f} tokens/s, {c['tokens_per_cpu_s']:>8,.1f} tokens "
                  f"per CPU-second, peak step memory "
                  f"{c['peak_step_memory_mb']:,.1f} MB", flush=True)
    return cells


def quality(stage_steps: list[int], items_per_cell: int, workdir: Path) -> dict:
    """The tiny recipe's extension and evaluation, once per attention."""
    found = {}
    for attention in ATTENTION:
        run_dir = workdir / f"tiny_{attention}"
        stages = f"[{{length: 512, steps: {stage_steps[0]}}}, {{length: 1024, steps: {stage_steps[1]}}}]"
        args = [sys.executable, "extend/train.py", "recipe=tiny", f"train.attention={attention}", f"output_dir={run_dir}",
                f"curriculum.stages={stages}", "eval.comparisons=[]", f"eval.items_per_cell={items_per_cell}", "train.tracker=none",
                f"data.output_dir={workdir / 'data'}"]
        start = time.perf_counter()
        out = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"recipe=tiny train.attention={attention} failed:\n{out.stderr[-3000:]}")
        card = json.loads((run_dir / "final" / "run_card.json").read_text())
        evaluation = json.loads((run_dir / "final" / "eval" / "after_training" / "eval.json").read_text())
        found[attention] = {"wall_seconds": round(time.perf_counter() - start, 1), "train_seconds": card["train_seconds"],
                            "steps": card["steps"], "final_loss": card["final_loss"],
                            "results": evaluation["results"]}
        print(f"tiny recipe, train.attention={attention}: {card['steps']} steps in {card['train_seconds']} s", flush=True)
    return found


def speed_table(cells: list[dict]) -> str:
    lines = ["| row length | rows per step | attention | tokens/s (wall) | tokens per CPU-second | peak step memory (RSS, MB) |",
             "|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['length']:,} | {c['rows_per_step']} | {c['attention']} | {c['tokens_per_s']:,.1f} | "
                     f"{c['tokens_per_cpu_s']:,.1f} | "
                     f"{c['peak_step_memory_mb']:,.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per cell (after one untimed)")
    parser.add_argument("--longest-document", type=int, default=1024,
                        help="speed rows pack documents of 64 to this many tokens; 0: one document per row")
    parser.add_argument("--no-quality", action="store_true", help="speed and memory only")
    parser.add_argument("--quality-steps", type=int, nargs=2, default=[40, 160], metavar=("STAGE1", "STAGE2"))
    parser.add_argument("--items-per-cell", type=int, default=10, help="passkey items per length x depth (recipe: 10)")
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json (default: print only)")
    parser.add_argument("--cell", nargs=2, metavar=("ATTENTION", "LENGTH"), help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.cell:
        print(json.dumps(measure(opts.cell[0], int(opts.cell[1]), opts.steps, opts.longest_document)))
        return {}
    start = time.perf_counter()
    report: dict = {"speed": speed(opts.lengths, opts.steps, opts.longest_document), "longest_document": opts.longest_document}
    print(speed_table(report["speed"]), flush=True)
    if not opts.no_quality:
        with tempfile.TemporaryDirectory(prefix="extend-s2-") as tmp:
            report["quality"] = quality(opts.quality_steps, opts.items_per_cell, Path(tmp))
        report["quality_stage_steps"], report["items_per_cell"] = opts.quality_steps, opts.items_per_cell
        print(json.dumps(report["quality"], indent=1))
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    print(f"wall time {report['wall_seconds']:.0f} s")
    if opts.out:
        opts.out.mkdir(parents=True, exist_ok=True)
        (opts.out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
