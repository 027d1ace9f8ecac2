"""`python -m extend.eval model=PATH_OR_ID [eval=quick|scaling] [eval.tasks=[...]] [eval.lengths=[...]]
[rope=METHOD rope.factor=S] [eval.comparisons=[...]]`

Evaluates a checkpoint (a folder, a cached Hub id, or a preset with eval.tokenizer=...) and writes
eval.json, report.md and plots into <model folder>/eval or eval.output_dir. `model=X` where X is not a
file of conf/model/ is shorthand for `model=hf model.name_or_path=X`. `--help` lists groups and options.
"""

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

import extend  # noqa: F401  (registers entropy_abf)
from extend.config import CONF_DIR, ConfigError, ExtendConfig
from extend.eval import run_eval
from extend.eval.runner import output_dir

# Results go to the eval folder; Hydra writes no run folder or log files of its own.
_QUIET = ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=none", "hydra/hydra_logging=none"]


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


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    typed: ExtendConfig = OmegaConf.to_object(cfg)
    try:
        data = run_eval(typed)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    out = output_dir(typed, model_given=False)
    print(f"wrote {out / 'eval.json'}, {out / 'report.md'} and plots")
    for name, tasks in data["results"].items():
        summary = ", ".join(
            f"{task} " + "/".join(f"{k}:{c['value']:.3g}" if c["value"] is not None else f"{k}:overflow"
                                  for k, c in block["by_length"].items())
            for task, block in tasks.items())
        print(f"  {name}: {summary}")


if __name__ == "__main__":
    args = expand_model_shortcut(sys.argv[1:])
    # Before the user's arguments, so that flags such as `--cfg job` still come last for argparse.
    sys.argv = [sys.argv[0]] + [o for o in _QUIET if o.split("=")[0] not in " ".join(args)] + args
    main()
