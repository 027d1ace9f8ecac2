"""`python -m extend.eval model=PATH_OR_ID [eval=quick|scaling] [overrides]` is `extend eval ...`.

Evaluates a checkpoint (a folder, a cached Hub id, or a preset with eval.tokenizer=...) and writes
eval.json, report.md and plots. `model=X` where X is not a file of conf/model/ is shorthand for
`model=hf model.name_or_path=X`. `--help` (extend/commands.py) describes the arguments, examples and recipes.
"""

import extend  # noqa: F401  (registers entropy_abf)
from extend.cli import run_cli
from extend.commands import command_line, expand_model_shortcut  # noqa: F401  (the shorthand lives there)
from extend.config import ExtendConfig
from extend.eval import run_eval
from extend.eval.runner import output_dir


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
    run_cli(evaluate, job_name="eval", quiet=True, argv=command_line("eval"))
