"""`python -m data_prep [recipe=NAME] [data=...] [curriculum=...] [data.KEY=VALUE ...]`

Composes the same config as training and writes the dataset folder `data.output_dir`: parquet shards per
curriculum stage and manifest.json (written last). Rerunning with the same config is a no-op; rerunning an
interrupted run resumes it. `--help` lists the data, curriculum and recipe options.
"""

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

import extend  # noqa: F401  (registers entropy_abf, so every recipe composes)
from extend.config import CONF_DIR, ConfigError, ExtendConfig
from extend.data.prepare import prepare

# The dataset folder describes itself (manifest.json): no Hydra run folder or log files.
_QUIET = ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=none", "hydra/hydra_logging=none"]


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    typed: ExtendConfig = OmegaConf.to_object(cfg)
    try:
        prepare(typed)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    sys.argv += [o for o in _QUIET if o.split("=")[0] not in " ".join(sys.argv)]
    main()
