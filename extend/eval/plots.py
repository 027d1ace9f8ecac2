"""PNG plots of eval.json: one curve per task (value vs length, one line per compared model) and a
needle heatmap (depth x length) per model for tasks that report depths."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator  # noqa: E402


def slug(task: str) -> str:
    return task.replace("/", "_")


def _served(data: dict) -> dict[str, int]:
    return {c["name"]: c["served_length"] for c in data["conditions"]}


def plain(value: float, _position=None) -> str:
    """A tick label as a reader writes the number: 256, 1024, 227.5, 0.25 (never 2^8 or 2.275x10^2)."""
    if value >= 1000 and value == int(value):
        return f"{int(value):,}".replace(",", "")
    return f"{value:.4g}"


def plain_log_axes(ax: Axes, lengths: list[int], log_y: bool) -> None:
    """Log axes labelled in plain numbers: the x ticks are the evaluated lengths themselves; a log y axis
    (perplexity) labels its major and minor ticks as plain numbers too (matplotlib's default labels read
    2^8 and 2.275x10^2, which nobody compares at a glance)."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(lengths))))
    ax.xaxis.set_major_formatter(FuncFormatter(plain))
    ax.xaxis.set_minor_locator(NullLocator())
    if log_y:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(plain))
        ax.yaxis.set_minor_formatter(FuncFormatter(plain) if _spans_under_a_decade(ax) else NullFormatter())


def _spans_under_a_decade(ax: Axes) -> bool:
    low, high = ax.get_ylim()
    return low > 0 and high / low < 10


def curve_figure(data: dict, task: str) -> plt.Figure:
    """One task's value against length, one line per compared model."""
    fig, ax = plt.subplots(figsize=(6, 4))
    metric = "accuracy"
    lengths = []
    for condition, blocks in data["results"].items():
        block = blocks[task]
        metric = block["metric"]
        cells = sorted(block["by_length"].values(), key=lambda c: c["length"])
        xs = [c["length"] for c in cells if c["value"] is not None]
        ys = [c["value"] for c in cells if c["value"] is not None]
        ax.plot(xs, ys, marker="o", label=f"{condition} (addresses {_served(data)[condition]})")
        lengths += [c["length"] for c in cells]
    if metric != "perplexity":
        ax.set_ylim(-0.05, 1.05)
    plain_log_axes(ax, lengths, log_y=metric == "perplexity")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity (lower is better)" if metric == "perplexity" else metric)
    ax.set_title(task)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_curves(data: dict, out: Path) -> list[Path]:
    """`<task>.png`: the task's value against length for every compared model."""
    written = []
    for task in next(iter(data["results"].values())):
        fig = curve_figure(data, task)
        path = out / f"{slug(task)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def plot_heatmaps(data: dict, out: Path) -> list[Path]:
    """`<task>_heatmap.png`: accuracy by depth (rows) and length (columns), one panel per model."""
    written = []
    tasks = [t for t, b in next(iter(data["results"].values())).items() if "by_length_depth" in b]
    for task in tasks:
        conditions = list(data["results"])
        fig, axes = plt.subplots(1, len(conditions), figsize=(3.2 * len(conditions) + 1, 3.6), squeeze=False,
                                 constrained_layout=True)
        for ax, condition in zip(axes[0], conditions):
            grid = data["results"][condition][task]["by_length_depth"]
            lengths = sorted(grid, key=int)
            depths = sorted({d for cells in grid.values() for d in cells}, key=float)
            values = [[grid[length].get(d, {}).get("value", float("nan")) for length in lengths] for d in depths]
            image = ax.imshow(values, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
            for row, line in enumerate(values):
                for col, value in enumerate(line):
                    if value == value:  # not NaN
                        ax.text(col, row, f"{100 * value:.0f}", ha="center", va="center", fontsize=7)
            ax.set_xticks(range(len(lengths)), lengths, rotation=45, fontsize=7)
            ax.set_yticks(range(len(depths)), depths, fontsize=7)
            ax.set_xlabel("length (tokens)")
            ax.set_ylabel("needle depth")
            ax.set_title(condition, fontsize=8)
        fig.colorbar(image, ax=axes[0].tolist(), label="accuracy")
        path = out / f"{slug(task)}_heatmap.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
