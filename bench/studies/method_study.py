"""Every position method on the tiny base, training-free and after the same short fine-tune, over seeds.

    python -m bench.studies.method_study [--methods linear yarn ...] [--seeds 0 1 2] [--factor 8] [--out DIR]
                                 [--attention full cross_document anchor] [--precision no bf16] [--add]
                                 [-- extra Hydra overrides]

For each method (conf/rope/<method>.yaml with rope.factor=--factor, its other parameters at their
defaults, `truncated` with truncation_length 16; `longrope` is left out of the default list because its per-dimension factors come from a search
this project does not run: pass it with `-- rope.short_factor=[...] rope.long_factor=[...]`) and the tiny recipe (base trained at 128 tokens, extension data and curriculum up to 1024):

- no training: the tiny base with the method applied at load time, evaluated once (the items are fixed);
- fine-tuned: recipe=tiny with that method, once per seed (not for the training-free inference methods,
  LM-Infinite and SelfExtend, which the training program refuses: they get the no-training row only), where the seed draws both the training seed and
  the data seed (a separate dataset per seed, shared by all methods), so seeds differ in what is trained on.
  The fine-tune is half the recipe's (STUDY_CURRICULUM: 20 steps at 512 and 80 at 1024, same schedule), so
  27 runs fit well under an hour on 2 CPU cores.

Every run is evaluated by extend.eval (eval=tiny: held-out perplexity and passkey at 128-1024 tokens, the
same items for all). Writes DIR/results.json, DIR/table.md (mean and spread over seeds) and
DIR/method_study.png (rewritten after every method, so an interrupted study keeps what it measured), and
prints the table. Every method's config is validated before anything runs. Extra overrides after `--` go to
every run (e.g. to shrink it). `--add` keeps what DIR/results.json already holds and adds (or replaces)
the runs made now, so new methods join the table without rerunning the others, and a row run with other
seeds keeps its saved ones (seeds are added one command at a time); table.md then lists each command.

With `--attention` (train.attention options) and `--precision` (train.mixed_precision values), each method is
fine-tuned once per combination instead, in rows "METHOD · ATTENTION · PRECISION" without a training-free row
(the options only change training); `--add` keeps the study's other rows beside them.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import extend  # noqa: F401  (registers entropy_abf)
from extend.config import CONF_DIR, REPO_ROOT, ExtendConfig
from extend.eval import run_eval
from extend.config import ConfigError
from extend.models import load_base_config
from extend.models.training_attention import TRAINING_ATTENTION
from extend.rope import METHODS, resolve_rope
from extend.train import train
from extend.validation import MIXED_PRECISION

TASKS = ("perplexity", "passkey")
# Methods that need more than a factor (LongRoPE's searched per-dimension factors) are opt-in.
DEFAULT_METHODS = [m for m in METHODS if m != "longrope"]
# Parameters a method needs besides the factor, for the tiny base's 128 trained tokens.
METHOD_OVERRIDES = {
    "truncated": ["rope.truncation_length=16"],  # the original length / 8, as conf/rope suggests
    # RK4 in steps of 0.1 in t (not 0.01): 10x fewer ODE evaluations per training step on a CPU; it moves the
    # untrained ODE's frequencies by 3e-6 relative (tests/test_rope_clex.py compares with the closed form).
    "clex": ["rope.ode_step=0.1"],
}
# The study's fine-tune: recipe=tiny's curriculum (conf/curriculum/tiny.yaml) at half the steps.
STUDY_CURRICULUM = "curriculum.stages=[{length: 512, steps: 20}, {length: 1024, steps: 80}]"


def rope_overrides(method: str, factor: float) -> list[str]:
    return [f"rope={method}", f"rope.factor={factor}", *METHOD_OVERRIDES.get(method, [])]


def composed(*overrides: str) -> ExtendConfig:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return OmegaConf.to_object(compose("config", overrides=list(overrides)))


def by_length(eval_json: dict) -> dict[str, dict[int, float]]:
    """{task: {length: value}} of the single model an eval.json holds."""
    (results,) = eval_json["results"].values()
    return {task: {int(k): c["value"] for k, c in results[task]["by_length"].items()} for task in TASKS}


def check_methods(methods: list[str], factor: float, extra: list[str]) -> None:
    """Every method's rope config against the base, before any run: one error listing every problem."""
    problems = []
    for method in methods:
        cfg = composed("recipe=tiny", *rope_overrides(method, factor), *extra)
        try:
            resolve_rope(cfg.rope, load_base_config(cfg.model))
        except ConfigError as err:
            problems += [f"{method}: {p}" for p in err.problems]
    if problems:
        raise ConfigError(problems)


def no_training(method: str, factor: float, out: Path, extra: list[str]) -> dict[str, dict[int, float]]:
    cfg = composed("recipe=tiny", *rope_overrides(method, factor), "eval.comparisons=[]",
                   f"eval.output_dir={out}", f"eval.name='{method} x{factor:g} (no training)'", *extra)
    return by_length(run_eval(cfg))


def row_name(method: str, attention: str | None, precision: str | None) -> str:
    """The method's own name for the plain fine-tune; with training options, METHOD · ATTENTION · PRECISION."""
    return method if attention is None else f"{method} · {attention} · {precision}"


def fine_tuned(method: str, factor: float, seed: int, root: Path, extra: list[str], attention: str | None = None,
               precision: str | None = None) -> dict[str, dict[int, float]]:
    name = row_name(method, attention, precision).replace(" · ", "-")
    options = [] if attention is None else [f"train.attention={attention}", f"train.mixed_precision={precision}"]
    run = root / f"{name}-seed{seed}"
    cfg = composed("recipe=tiny", *rope_overrides(method, factor), f"seed={seed}", f"data.seed={seed}",
                   f"data.output_dir={root / f'data-seed{seed}'}", f"output_dir={run}", f"run_name={name}-seed{seed}",
                   "eval.comparisons=[]",
                   f"eval.name='{row_name(method, attention, precision)} x{factor:g} fine-tuned (seed {seed})'",
                   "train.checkpoint_every=0", "train.tracker=none", STUDY_CURRICULUM, *options, *extra)
    final = train(cfg)
    return by_length(json.loads((final / "eval" / "after_training" / "eval.json").read_text()))


def summarise(values: list[float | None]) -> tuple[float | None, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    return statistics.mean(present), statistics.stdev(present) if len(present) > 1 else 0.0


def table(results: dict, lengths: list[int]) -> str:
    head = " / ".join(f"{n}" for n in lengths)
    lines = [f"| method | variant | perplexity @ {head} | passkey @ {head} |", "|---|---|---|---|"]
    for method, r in results.items():
        free = r["no_training"]
        if free is not None:  # None: a row of training options, fine-tuned only
            lines.append(f"| {method} | no training | " + " / ".join(f"{free['perplexity'][n]:.1f}" for n in lengths)
                         + " | " + " / ".join(f"{free['passkey'][n]:.0%}" for n in lengths) + " |")
        cells = {task: [] for task in TASKS}
        for task in TASKS:
            for n in lengths:
                mean, spread = summarise([run[task][n] for run in r["fine_tuned"].values()])
                cells[task].append("-" if mean is None else (f"{mean:.1f} ± {spread:.1f}" if task == "perplexity"
                                                             else f"{mean:.0%} ± {spread:.0%}"))
        seeds = len(r["fine_tuned"])
        if not seeds:  # a training-free inference method: no fine-tuned row
            continue
        lines.append(f"| {method} | fine-tuned ({seeds} seed{'s' if seeds > 1 else ''}) | " + " / ".join(cells["perplexity"])
                     + " | " + " / ".join(cells["passkey"]) + " |")
    return "\n".join(lines)


def plot(results: dict, lengths: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, task in zip(axes, TASKS):
        for method, r in results.items():
            free = None if r["no_training"] is None else [r["no_training"][task][n] for n in lengths]
            if not r["fine_tuned"]:  # training-free only
                ax.plot(lengths, free, linestyle=":", marker="x", label=f"{method} (training-free only)")
                continue
            means = [summarise([run[task][n] for run in r["fine_tuned"].values()]) for n in lengths]
            line = ax.errorbar(lengths, [m for m, _ in means], yerr=[s for _, s in means], marker="o", label=method)
            if free is not None:
                ax.plot(lengths, free, linestyle=":", color=line[0].get_color())
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.set_xlabel("tokens")
        ax.set_title(f"{task} (solid: fine-tuned, mean ± sd; dotted: no training)")
    axes[0].set_ylabel("perplexity")
    axes[1].set_ylabel("passkey accuracy")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--factor", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "method_study")
    parser.add_argument("--attention", nargs="+", choices=list(TRAINING_ATTENTION),
                        help="train.attention options to fine-tune with (rows METHOD · ATTENTION · PRECISION)")
    parser.add_argument("--precision", nargs="+", default=["no"], choices=list(MIXED_PRECISION),
                        help="train.mixed_precision values to fine-tune with (with --attention)")
    parser.add_argument("--add", action="store_true",
                        help="keep the rows in OUT/results.json (a rerun row keeps its other seeds); add or "
                             "replace the runs made now")
    parser.add_argument("extra", nargs="*", help="Hydra overrides for every run (after --)")
    opts = parser.parse_args(argv)
    check_methods(opts.methods, opts.factor, opts.extra)
    opts.out.mkdir(parents=True, exist_ok=True)
    runs = opts.out / "runs"
    command = "python -m bench.studies.method_study " + " ".join(
        [f"--methods {' '.join(opts.methods)}", f"--seeds {' '.join(map(str, opts.seeds))}", f"--factor {opts.factor:g}"]
        + ([f"--attention {' '.join(opts.attention)} --precision {' '.join(opts.precision)}"] if opts.attention else [])
        + (["--", *opts.extra] if opts.extra else []))
    # The rows this command writes: each method's own (training-free and fine-tuned), or with --attention one
    # fine-tuned row per (method, option, precision); training-free inference methods have none of the latter.
    variants = [(a, p) for a in opts.attention for p in opts.precision] if opts.attention else [(None, None)]
    rows = [(m, a, p) for m in opts.methods for a, p in variants if a is None or not METHODS[m].inference_only]
    earlier, commands = {}, []
    if opts.add and (opts.out / "results.json").is_file():
        saved = json.loads((opts.out / "results.json").read_text())
        commands = saved.get("commands") or [saved["command"]]
        earlier = {m: _int_keys(r) for m, r in saved["results"].items()}
    command += " --add" if opts.add else ""
    results, text = {}, ""
    for method, attention, precision in rows:
        name = row_name(method, attention, precision)
        print(f"== {name}", flush=True)
        results[name] = {
            "no_training": None if attention is not None else
                           no_training(method, opts.factor, runs / f"{method}-no-training", opts.extra),
            "fine_tuned": {} if METHODS[method].inference_only else
                          {seed: fine_tuned(method, opts.factor, seed, runs, opts.extra, attention, precision)
                           for seed in opts.seeds},
        }
        text = write(merged(earlier, results), commands + [command], opts.out)
    print(text)
    return results


def merged(earlier: dict, new: dict) -> dict:
    """The saved rows with the new runs in: a row run again keeps its saved seeds that were not rerun (so
    seeds can be added one command at a time) and takes the new training-free result where there is one."""
    rows = dict(earlier)
    for name, result in new.items():
        old = earlier.get(name, {"no_training": None, "fine_tuned": {}})
        rows[name] = {"no_training": result["no_training"] if result["no_training"] is not None else old["no_training"],
                      "fine_tuned": dict(sorted({**old["fine_tuned"], **result["fine_tuned"]}.items()))}
    return rows


def _int_keys(result: dict) -> dict:
    """A method's results as read back from JSON, whose keys are strings: lengths and seeds as ints again."""
    lengths = lambda by_task: None if by_task is None else \
        {task: {int(n): v for n, v in values.items()} for task, values in by_task.items()}
    return {"no_training": lengths(result["no_training"]),
            "fine_tuned": {int(seed): lengths(run) for seed, run in result["fine_tuned"].items()}}


def write(results: dict, commands: list[str], out: Path) -> str:
    """results.json, table.md and the plot for what has been measured so far; returns the table."""
    first = next(iter(results.values()))
    lengths = sorted((first["no_training"] or next(iter(first["fine_tuned"].values())))["perplexity"])
    text = table(results, lengths)
    record = {"command": commands[0], "commands": commands, "results": results} if len(commands) > 1 else \
        {"command": commands[0], "results": results}
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "table.md").write_text("\n".join(commands) + f"\n\n{text}\n")
    plot(results, lengths, out / "method_study.png")
    return text


if __name__ == "__main__":
    main()
