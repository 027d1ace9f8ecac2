"""Write eval.json (schema: extend/eval/schema.py), report.md and the PNG plots into one folder."""

from __future__ import annotations

import json
from pathlib import Path

from extend.eval.plots import plot_curves, plot_heatmaps, slug
from extend.eval.schema import validate

# Marks a cell measured beyond what the model addresses (eval.extrapolate=true).
BEYOND = "†"


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "overflow"
    return f"{value:.2f}" if metric == "perplexity" else f"{100 * value:.0f}%"


def render_report(data: dict) -> str:
    lines = [
        f"# Evaluation of {data['model']}",
        "",
        f"Tokenizer `{data['tokenizer']}`, written {data['created']}. Every model answers the same items "
        f"(seed {data['config']['seed']}). {BEYOND} = beyond the length that model addresses.",
        "",
    ]
    return "\n".join(lines) + "\n" + render_sections(data)


def render_sections(data: dict, level: int = 2, image_dir: str = "") -> str:
    """The compared models and one table per task, headed at `level`; plots are linked from `image_dir`
    (the model card, at a repository's root, links them from eval/)."""
    served = {c["name"]: c["served_length"] for c in data["conditions"]}
    names = list(data["results"])
    head = "#" * level
    lines = [
        *([] if data["complete"] else [f"**Partial**: {len(names)} of {len(data['conditions'])} models "
                                       "evaluated so far.", ""]),
        f"{head} Compared models",
        "",
        "| name | model | position method | addresses (tokens) |",
        "|---|---|---|---|",
    ]
    for c in data["conditions"]:
        rope = ", ".join(f"{k}={v}" for k, v in c["rope"].items()) if c["rope"] else "as saved"
        lines.append(f"| {c['name']} | `{c['model']}` | {rope} | {c['served_length']} |")
    for task, first in data["results"][names[0]].items():
        metric = first["metric"]
        better = "lower is better" if metric == "perplexity" else f"{first.get('scorer', 'exact')} match"
        lines += ["", f"{head} {task} ({metric}, {better})", "", "| length | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        cells = sorted(first["by_length"], key=lambda k: first["by_length"][k]["length"])
        for key in cells:
            row = [key]
            for name in names:
                cell = data["results"][name][task]["by_length"][key]
                mark = BEYOND if cell["length"] > served[name] else ""
                extra = f" (n={cell['n']})" if "n" in cell else ""
                row.append(_fmt(cell["value"], metric) + mark + extra)
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", f"![{task}]({image_dir}{slug(task)}.png)"]
        if "by_length_depth" in first:
            lines += ["", f"![{task} by depth]({image_dir}{slug(task)}_heatmap.png)"]
    return "\n".join(lines) + "\n"


def write_outputs(data: dict, out: Path) -> None:
    """eval.json (checked against the schema first), report.md and plots."""
    problems = validate(data)
    if problems:
        raise ValueError("eval.json would not follow its schema:\n" + "\n".join(problems))
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "report.md").write_text(render_report(data))
    plot_curves(data, out)
    plot_heatmaps(data, out)
