"""`python -m extend.eval model=PATH_OR_ID [eval=quick|scaling] [eval.tasks=[...]] [eval.lengths=[...]]
[rope=METHOD rope.factor=S] [eval.comparisons=[...]]`

Evaluates a checkpoint (a folder, a cached Hub id, or a preset with eval.tokenizer=...) and writes
eval.json, report.md and plots into <model folder>/eval or eval.output_dir. `model=X` where X is not a
file of conf/model/ is shorthand for `model=hf model.name_or_path=X`. `--help` lists groups and options.
"""

import sys

import extend  # noqa: F401  (registers entropy_abf)
from extend.cli import run_cli
from extend.config import CONF_DIR, ExtendConfig
from extend.eval import run_eval
from extend.eval.runner import output_dir


def expand_model_shortcut(argv: list[str]) -> list[str]:
    """`model=VALUE` -> `model=hf model.name_or_path=VALUE` unless VALUE names a file in conf/model/."""
    options = {p.stem for p in (CONF_DIR / "model").glob("*.yaml")}
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if key == "model" and sep and value not in options:
            out += ["model=hf", f"model.name_or_path={value}"]
        else:
            out.append(arg)
    return out


def evaluate(cfg: ExtendConfig) -> None:
    data = run_eval(cfg)
    out = output_dir(cfg, model_given=False)
    print(f"wrote {out / 'eval.json'}, {out / 'report.md'} and plots")
    for name, tasks in data["results"].items():
        summary = ", ".join(
            f"{task} " + "/".join(f"{k}:{c['value']:.3g}" if c["value"] is not None else f"{k}:overflow"
                                  for k, c in block["by_length"].items())
            for task, block in tasks.items())
        print(f"  {name}: {summary}")


if __name__ == "__main__":
    # Results go to the eval folder; Hydra writes no run folder or log files of its own.
    run_cli(evaluate, job_name="eval", quiet=True, argv=expand_model_shortcut(sys.argv[1:]))
