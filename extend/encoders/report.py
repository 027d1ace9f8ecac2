"""report.md for an encoder run: nDCG@1 per task and length for every variant, and the averages the
issue's targets are stated in (above and at/below the original length)."""

from __future__ import annotations

from pathlib import Path


def averages(data: dict) -> dict[str, dict[str, float | None]]:
    """variant -> {"short": mean over synthetic cells <= L, "long": mean over cells > L}."""
    old = data["original_length"]
    out = {}
    for variant, tasks in data["results"].items():
        cells = [(int(k), c["value"]) for name, by_len in tasks.items() if not name.startswith("local:")
                 for k, c in by_len.items()]
        short = [v for n, v in cells if n <= old]
        long = [v for n, v in cells if n > old]
        out[variant] = {"short": round(sum(short) / len(short), 4) if short else None,
                        "long": round(sum(long) / len(long), 4) if long else None}
    return out


def write_report(data: dict, path: Path) -> None:
    variants = list(data["results"])
    lines = [f"# Encoder extension: {data['model']} ({data['model_type']})", "",
             f"{data['original_length']} -> {data['target_length']} positions (x{data['factor']}, "
             f"{data.get('positions', 'learned position table interpolated')}); metric nDCG@1 "
             f"with {data['eval']['candidates']} candidate documents per cell, one query per document, "
             f"seed {data['eval']['seed']}. Run time {data['seconds']} s.", "",
             "| variant | what it is |", "|---|---|"]
    lines += [f"| {name} | {v['description']} |" for name, v in data["variants"].items()]
    tasks = sorted({t for r in data["results"].values() for t in r}, key=lambda t: (t.startswith("local:"), t))
    for task in tasks:
        lines += ["", f"## {task}", "", "| length | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
        keys = list(data["results"][variants[0]][task])
        for key in keys:
            row = [f"{data['results'][v][task][key]['value']:.3f}" for v in variants]
            lines.append(f"| {key} | " + " | ".join(row) + " |")
    avg = averages(data)
    lines += ["", "## Averages over the synthetic tasks", "",
              f"| variant | lengths <= {data['original_length']} | lengths > {data['original_length']} |", "|---|---|---|"]
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    lines += [f"| {v} | {fmt(a['short'])} | {fmt(a['long'])} |" for v, a in avg.items()]
    train = data["train"]
    if train["steps"]:
        lines += ["", f"Fine-tuning: {train['steps']} steps (seed {train['seed']}), training {train['trainable']}; "
                  f"loss {train['first_loss']} -> {train['last_loss']}; {train['seconds']} s."]
    lines += ["", f"Export: `{data['export']}` (max_position_embeddings, tokenizer model_max_length and "
              f"sentence-transformers max_seq_length = {data['target_length']})."]
    path.write_text("\n".join(lines) + "\n")
