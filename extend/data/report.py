"""Statistics for the manifest and the summary table printed at the end of a run."""

from __future__ import annotations

import numpy as np


def length_histogram(lengths: np.ndarray) -> dict:
    """Counts of lengths in power-of-two buckets [2^k, 2^(k+1)), as {bucket_starts, counts}."""
    if len(lengths) == 0:
        return {"bucket_starts": [], "counts": []}
    k = np.floor(np.log2(np.maximum(lengths, 1))).astype(np.int64)
    counts = np.bincount(k)
    return {"bucket_starts": [1 << i for i in range(len(counts))], "counts": counts.tolist()}


def table(headers: list[str], rows: list[list]) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    cells = [headers] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for j, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def summary(manifest: dict) -> str:
    """The end-of-run report: one row per stage, one row per source."""
    stages = table(
        ["stage", "length", "steps", "rows/step", "rows", "token slots", "real tokens", "target tokens", "efficiency", "shards"],
        [[s["folder"], s["length"], s["steps"], s["rows_per_step"], s["rows"], s["tokens"], s["real_tokens"],
          s["target_tokens"], s["efficiency"], len(s["shards"])] for s in manifest["stages"]],
    )
    sources = table(
        ["source", "type", "documents", "unique tokens", "weight", "planned share", "actual share", "repeat factor",
         "too long (skipped)"],
        [[name, s["type"], s["documents"], s["unique_tokens"], s["weight"], s["sampling_proportion"], s["actual_share"],
          s["repeat_factor"], s["too_long_for_stage"]] for name, s in manifest["sources"].items()],
    )
    return f"{stages}\n\n{sources}"
