"""report.md for an encoder run: nDCG@1 per task and length for every variant, the averages the targets
are stated in (above and at/below the original length), and each variant against the original query by
query (every variant answers the same queries, so differences are paired)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

BOOTSTRAP_RESAMPLES = 2000


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


@dataclass(frozen=True)
class Paired:
    """`other` minus `base` over the same queries: the mean difference, its 95 % paired bootstrap interval,
    and how many queries scored higher and lower."""

    mean: float
    low: float
    high: float
    better: int
    worse: int
    n: int


def paired_difference(base: list[float], other: list[float], seed: int = 0,
                      resamples: int = BOOTSTRAP_RESAMPLES) -> Paired:
    """Percentile bootstrap over queries (resampling query indices, the same for both variants)."""
    if len(base) != len(other) or not base:
        raise ValueError(f"paired scores need the same non-empty query list, got {len(base)} and {len(other)}")
    diffs = [o - b for b, o in zip(base, other)]
    n = len(diffs)
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return Paired(mean=sum(diffs) / n, low=means[int(0.025 * resamples)], high=means[int(0.975 * resamples) - 1],
                  better=sum(d > 0 for d in diffs), worse=sum(d < 0 for d in diffs), n=n)


def query_groups(data: dict, variant: str) -> dict[str, list[float]]:
    """A variant's per-query nDCG@1 in the groups the report compares: the synthetic cells at or below and
    above the original length (cells concatenated in a fixed order), and each local set. Empty when the
    run predates per-query scores."""
    old = data["original_length"]
    groups: dict[str, list[float]] = {}
    for task, by_len in sorted(data["results"][variant].items()):
        for key, cell in sorted(by_len.items()):
            if "per_query" not in cell:
                return {}
            if task.startswith("local:"):
                name = task
            else:
                name = f"synthetic <= {old}" if int(key) <= old else f"synthetic > {old}"
            groups.setdefault(name, []).extend(cell["per_query"])
    return groups


def paired_lines(data: dict, base: str = "original") -> list[str]:
    """The report section comparing every other variant with `base` query by query (none without per-query
    scores)."""
    if base not in data["results"]:
        return []
    reference = query_groups(data, base)
    if not reference:
        return []
    lines = ["", f"## Against the {base} model, query by query", "",
             f"Difference in nDCG@1 (variant minus {base}) over the same queries, with a 95 % paired bootstrap "
             f"interval ({BOOTSTRAP_RESAMPLES} resamples of the queries) and the queries that scored higher / lower.",
             "", "| variant | queries | difference | 95 % interval | higher / lower |", "|---|---|---|---|---|"]
    for variant in data["results"]:
        if variant == base:
            continue
        for name, scores in query_groups(data, variant).items():
            d = paired_difference(reference[name], scores)
            lines.append(f"| {variant} | {name} ({d.n}) | {d.mean:+.3f} | [{d.low:+.3f}, {d.high:+.3f}] | "
                         f"{d.better} / {d.worse} |")
    return lines


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
    lines += paired_lines(data)
    train = data["train"]
    if train["steps"]:
        lines += ["", f"Fine-tuning: {train['steps']} steps (seed {train['seed']}), training {train['trainable']}; "
                  f"loss {train['first_loss']} -> {train['last_loss']}; {train['seconds']} s."]
    lines += ["", f"Export: `{data['export']}` (max_position_embeddings, tokenizer model_max_length and "
              f"sentence-transformers max_seq_length = {data['target_length']})."]
    path.write_text("\n".join(lines) + "\n")
