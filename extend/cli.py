"""What every command-line entry point shares: Hydra composition of conf/config.yaml into the typed
config, one line per problem on stderr with exit code 2 for a bad config (1 for a command that stopped
for a reason it states), and quiet mode for commands that write no run folder of their own."""

from __future__ import annotations

import sys
from typing import Callable

import hydra
from omegaconf import DictConfig, OmegaConf

from extend.config import CONF_DIR, ConfigError, ExtendConfig

class CommandError(RuntimeError):
    """A command stopped for a reason its message states (the config itself was fine): exit code 1."""


# No Hydra run folder, .hydra/ copies or log files: for commands whose output describes itself.
QUIET_OVERRIDES = ("hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=none", "hydra/hydra_logging=none")


def run_cli(body: Callable[[ExtendConfig], None], job_name: str, quiet: bool = False,
            argv: list[str] | None = None) -> None:
    """Compose the config from `argv` (default: the command line) and run `body` on it.

    Quiet overrides go before the user's arguments, so flags such as `--cfg job` still come last.
    """
    args = sys.argv[1:] if argv is None else argv
    given = " ".join(args)
    extra = [o for o in QUIET_OVERRIDES if o.split("=")[0] not in given] if quiet else []
    sys.argv = [sys.argv[0], *extra, f"hydra.job.name={job_name}", *args]

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def main(cfg: DictConfig) -> None:
        try:
            body(OmegaConf.to_object(cfg))
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except CommandError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)

    main()
