"""What every command-line entry point shares: composition of its program's root (conf/config.yaml,
encoder.yaml or vision.yaml) into the typed config, the program's `validate`, then the command's body.

    compose (Hydra's compose API: no run folder, no .hydra/, no log file)  -> typed (unknown keys refused)
    -> validate(cfg) (every problem at once) -> [--check: print ok, exit 0] -> body(cfg)

Bad input prints one line per problem on stderr and exits 2 before anything is written; a command that
stopped for a reason it states exits 1. Hydra's own flags (--help, --cfg job, --info, -m ...) go to
Hydra's command line unchanged.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, Callable

from omegaconf import DictConfig

from extend.config import CONF_DIR, ROOTS, ConfigError, recipe_program, typed


class CommandError(RuntimeError):
    """A command stopped for a reason its message states (the config itself was fine): exit code 1."""


# For Hydra's own command line (flags such as --cfg job): no run folder, .hydra/ copies or log files.
QUIET_OVERRIDES = ("hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=none", "hydra/hydra_logging=none")
# Flags of this module (not Hydra's): --check validates and exits; --processes N states the process count a
# launcher is about to start (with --check, before any process exists).
CHECK, PROCESSES = "--check", "--processes"

_given_overrides: list[str] | None = None


def given_overrides() -> list[str] | None:
    """The overrides of the command being run (None outside the command line), recorded with a run."""
    return _given_overrides


def run_cli(body: Callable[[Any], None], job_name: str, quiet: bool = False, argv: list[str] | None = None,
            program: str = "decoder", validate: Callable[[Any], None] | None = None) -> None:
    """Compose `program`'s root from `argv` (default: the command line), validate it, run `body` on it.

    `validate(cfg)` raises ConfigError with every problem; with --check the command stops after it.
    """
    global _given_overrides
    args = list(sys.argv[1:] if argv is None else argv)
    check = CHECK in args
    args = [a for a in args if a != CHECK]
    processes, args = _processes(args)
    if any(a.startswith("-") for a in args):
        return _hydra_main(body, job_name, quiet, args, program)
    try:
        cfg = compose(program, args)
        if validate is not None:
            validate(cfg) if processes is None else validate(cfg, processes=processes)
    except ConfigError as err:
        _refuse(err.problems)
    if check:
        print(f"ok: {' '.join(args) or 'the default config'} composes and validates ({program} root)")
        sys.exit(0)
    if not quiet:
        logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                            format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    _given_overrides = args
    try:
        body(cfg)
    except ConfigError as err:
        _refuse(err.problems)
    except CommandError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def compose(program: str, overrides: list[str]) -> Any:
    """The typed config of `program`'s root with `overrides`, or one ConfigError per problem."""
    from hydra import compose as hydra_compose, initialize_config_dir

    root, _, command = ROOTS[program]
    problems = _recipe_problems(program, overrides)
    if problems:
        raise ConfigError(problems)
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3", job_name=program):
            cfg = hydra_compose(root, overrides=overrides)
    except Exception as err:  # Hydra's and OmegaConf's composition errors, each made one line
        raise ConfigError([composition_problem(err, program)]) from None
    return typed(cfg)


def composition_problem(err: Exception, program: str = "decoder") -> str:
    """Hydra's multi-line composition error (and its cause) as one line naming the key (and file) and the fix."""
    texts = [str(err)] + ([str(err.__cause__)] if err.__cause__ is not None else [])
    lines = [line.strip() for text in texts for line in text.splitlines() if line.strip()]
    text = " ".join(lines)
    key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), None)
    where = re.match(r"In '([^']+)': ", text)
    prefix = f"{where.group(1)}.yaml: " if where and where.group(1) != ROOTS[program][0] else ""
    missing = re.search(r"Key '([^']+)' not in '([^']+)'", text)
    if missing:
        return (f"{prefix}{key or missing.group(1)}: no such key in {missing.group(2)} (extend/config.py); check its "
                "spelling (`--cfg job` prints every key)")
    option = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if option:
        group, name = option.groups()
        listed = re.search(r"Available options in '[^']+':(.*?)(Config search path|$)", " ".join(str(err).split()))
        choices = listed.group(1).split() if listed else []
        if group == "recipe":
            choices = [c for c in choices if recipe_program(c) == program]
        return f"{prefix}{group}={name}: no such option; choose one of {', '.join(choices) or f'the files in conf/{group}/'}"
    value = re.search(r"(Value '[^']*' of type '[^']+' could not be converted to \w+)", text)
    if value and key:
        return f"{prefix}{key}: {value.group(1)}"
    message = re.sub(r"\s*(full_key|reference_type|object_type):.*", "", lines[0] if lines else repr(err))
    return f"{prefix}{key + ': ' if key and key not in message else ''}{message}"


def _recipe_problems(program: str, overrides: list[str]) -> list[str]:
    """A recipe of another program, named before Hydra reports it as a group it does not know."""
    for override in overrides:
        if override.startswith(("recipe=", "+recipe=")):
            name = override.split("=", 1)[1]
            owner = recipe_program(name)
            if owner is not None and owner != program:
                return [f"recipe={name} is {'an' if owner == 'encoder' else 'a'} {owner} recipe; run it with `{ROOTS[owner][2]} recipe={name}`"]
    return []


def _processes(args: list[str]) -> tuple[int | None, list[str]]:
    if PROCESSES not in args:
        return None, args
    i = args.index(PROCESSES)
    value = args[i + 1] if i + 1 < len(args) else ""
    if not value.isdigit() or int(value) < 1:
        _refuse([f"{PROCESSES} takes the number of processes the launcher will start (>= 1), not {value!r}"])
    return int(value), args[:i] + args[i + 2 :]


def _refuse(problems: list[str]) -> None:
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    sys.exit(2)


def _hydra_main(body: Callable[[Any], None], job_name: str, quiet: bool, args: list[str], program: str) -> None:
    """Hydra's own command line, for its flags (--help, --cfg job, --info, -m ...)."""
    import hydra

    given = " ".join(args)
    extra = [o for o in QUIET_OVERRIDES if o.split("=")[0] not in given] if quiet else []
    sys.argv = [sys.argv[0], *extra, f"hydra.job.name={job_name}", *args]

    @hydra.main(config_path=str(CONF_DIR), config_name=ROOTS[program][0], version_base="1.3")
    def main(cfg: DictConfig) -> None:
        try:
            body(typed(cfg))
        except ConfigError as err:
            _refuse(err.problems)
        except CommandError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)

    main()
