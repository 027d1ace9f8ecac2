"""Statistics for the manifest, and the summary data_prep prints and saves as summary.md (tables + legend)."""

from __future__ import annotations

import numpy as np


def length_histogram(lengths: np.ndarray) -> dict:
    """Counts of lengths in power-of-two buckets [2^k, 2^(k+1)), as {bucket_starts, counts}."""
    if len(lengths) == 0:
        return {"bucket_starts": [], "counts": []}
    k = np.floor(np.log2(np.maximum(lengths, 1))).astype(np.int64)
    counts = np.bincount(k)
    return {"bucket_starts": [1 << i for i in range(len(counts))], "counts": counts.tolist()}


# Every column of the two tables, in order, with what it counts (printed and saved under the tables).
STAGE_COLUMNS = {
    "stage": "the stage's folder of parquet shards (stage-<index>-L<length>), read in this order by training",
    "length": "tokens in every row of the stage (its sequence length)",
    "positions": "plain (0, 1, ... per document piece) or PoSE: ids spanning up to N positions in k chunks "
                 "(curriculum.stages[].span, curriculum.pose_chunks)",
    "steps": "optimizer steps the stage lasts",
    "rows/step": "rows per optimizer step: curriculum.tokens_per_step / length",
    "rows": "rows in the stage: steps x rows/step",
    "token slots": "rows x length: every position the stage trains on, holding a document token or padding",
    "real tokens": "token slots holding document tokens (the rest is padding)",
    "target tokens": "tokens with a loss label: not a masked prompt, not padding, not the first token of a piece",
    "efficiency": "real tokens / token slots (1.0 = no padding)",
    "shards": "parquet files of the stage (data.rows_per_shard rows each)",
}
SOURCE_COLUMNS = {
    "source": "the source's name under data.sources",
    "type": "data.sources.<name>.type: where its documents come from (a loader of extend/data/sources.py)",
    "documents": "documents read (or synthetic items generated)",
    "unique tokens": "tokens of those documents, each document counted once",
    "weight": "data.sources.<name>.weight as configured",
    "planned share": "the share of token slots the weights plan for the source (normalised per stage, "
                     "token-weighted over the stages)",
    "actual share": "the share of real tokens that came from the source",
    "repeat factor": "its tokens in rows / its unique tokens (above 1: documents repeat; below 1: some are unused)",
    "too long (skipped)": "per stage (stage 0/stage 1/...), documents never drawn because they exceed the stage's "
                          "length: conversations and synthetic items are never cut (plain text is cut, so 0)",
}


def table(headers: list[str], rows: list[list]) -> str:
    """An aligned Markdown table (numbers right-aligned): readable as printed, rendered in summary.md."""
    cells = [headers] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for j, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) + " |")
        if j == 0:
            lines.append("| " + " | ".join("-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths)) + " |")
    return "\n".join(lines)


def legend(columns: dict[str, str]) -> str:
    return "\n".join(f"- **{name}**: {meaning}" for name, meaning in columns.items())


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _positions(stage: dict) -> str:
    pose = stage.get("positions")
    return "plain" if pose is None else f"PoSE {pose['span']:,} / {pose['chunks']} chunks"


def summary(manifest: dict) -> str:
    """The end-of-run report (printed, and saved as summary.md): one row per stage, one row per source,
    each table followed by what its columns mean. It names no folder, so a copied dataset stays byte-identical."""
    stages = table(
        list(STAGE_COLUMNS),
        [[s["folder"], s["length"], _positions(s), s["steps"], s["rows_per_step"], s["rows"], s["tokens"], s["real_tokens"],
          s["target_tokens"], s["efficiency"], len(s["shards"])] for s in manifest["stages"]],
    )
    sources = table(
        list(SOURCE_COLUMNS),
        [[name, s["type"], s["documents"], s["unique_tokens"], s["weight"], s["sampling_proportion"], s["actual_share"],
          s["repeat_factor"], s["too_long_for_stage"]] for name, s in manifest["sources"].items()],
    )
    return ("# Dataset summary\n\n"
            f"Tokenizer `{manifest['tokenizer']['name']}`, packing `{manifest['packing']}`, "
            f"{manifest['tokens_per_step']:,} token slots per optimizer step; everything else is in manifest.json.\n\n"
            f"## Stages\n\n{stages}\n\n{legend(STAGE_COLUMNS)}\n\n"
            f"## Sources\n\n{sources}\n\n{legend(SOURCE_COLUMNS)}\n")

