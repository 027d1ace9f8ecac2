"""`python -m extend.rope [recipe=NAME] [model=...] [rope=METHOD] [rope.KEY=VALUE ...]`

Prints what a position method does to a model: wavelengths per dimension before and after, the
attention factor, the extended length as transformers, the tokenizer and vLLM will read it, and the
exact config export writes. Nothing is loaded but the model's config. `--help` lists methods and recipes.
"""

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

import extend  # noqa: F401  (registers entropy_abf)
from extend.config import CONF_DIR, ConfigError, ExtendConfig
from extend.rope.inspect import rope_report

# The report only prints: no run folder, no log files.
_QUIET = ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=none", "hydra/hydra_logging=none"]


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    typed: ExtendConfig = OmegaConf.to_object(cfg)
    try:
        print(rope_report(typed))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    sys.argv += [o for o in _QUIET if o.split("=")[0] not in " ".join(sys.argv)]
    main()
