"""The project's own tiny base: built once by recipes/tiny_base.yaml, cached, then loaded like any folder.

`model.name_or_path: tiny-base` resolves here. The first use runs the project's own entry points
(`python -m data_prep recipe=tiny_base`, then `extend/train.py recipe=tiny_base`) in fresh processes and
moves the export into the cache; later uses load the cached folder. The cache key is a fingerprint of
the files that define the base, so editing the recipe builds a new one instead of reusing a stale one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from extend.config import CONF_DIR, RECIPES_DIR, REPO_ROOT
from extend.models.presets import TINY_BASE_SHAPE

NAME = "tiny-base"
# The preset whose architecture the tiny base trains (recipes/tiny_base.yaml).
PRESET = "tiny-base-llama"
DEFINITION = (
    RECIPES_DIR / "tiny_base.yaml",
    CONF_DIR / "data" / "tiny_base.yaml",
    CONF_DIR / "curriculum" / "tiny_base.yaml",
    CONF_DIR / "model" / "tiny_base_llama.yaml",
)
# Launcher variables a nested run must not inherit (it is one process, whatever launched us).
_DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


def fingerprint() -> str:
    """Of what the defining files say, not how they are commented: editing a header keeps the cache."""
    h = hashlib.sha256(json.dumps(TINY_BASE_SHAPE, sort_keys=True).encode())
    for path in DEFINITION:
        for line in path.read_text().splitlines():
            content = line.split("#", 1)[0].rstrip()
            if content:
                h.update(content.encode() + b"\n")
    return h.hexdigest()[:12]


def cached_path(cache_dir: str) -> Path:
    return Path(cache_dir).expanduser() / f"{NAME}-{fingerprint()}"


def is_built(cache_dir: str) -> bool:
    return (cached_path(cache_dir) / "config.json").exists()


def ensure_tiny_base(cache_dir: str) -> Path:
    """The cached tiny base, built first if it is not there (a few minutes on 2 CPU cores). Concurrent
    callers (two runs, or the ranks of one) wait on a lock and build it once."""
    folder = cached_path(cache_dir)
    if is_built(cache_dir):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_built(cache_dir):
            _build(folder)
    return folder


def _build(folder: Path) -> None:
    # An interrupted build resumes: data_prep and train.py both continue from what they left in `work`.
    work = folder.with_name(folder.name + ".build")
    env = {k: v for k, v in os.environ.items() if k not in _DISTRIBUTED_ENV and not k.startswith("ACCELERATE_")}
    overrides = [f"data.output_dir={work / 'data'}", f"output_dir={work / 'run'}"]
    print(f"building the tiny base into {folder} (once; recipes/tiny_base.yaml)", file=sys.stderr, flush=True)
    for command in (
        [sys.executable, "-m", "data_prep", "recipe=tiny_base", *overrides],
        [sys.executable, str(REPO_ROOT / "extend" / "train.py"), "recipe=tiny_base", *overrides],
    ):
        done = subprocess.run(command, cwd=REPO_ROOT, env=env)
        if done.returncode:  # the step said why (or was stopped with a checkpoint): end as it ended
            print(f"the tiny base was not built (recipes/tiny_base.yaml stopped with exit code {done.returncode}); "
                  "rerun the same command to continue the build", file=sys.stderr)
            raise SystemExit(done.returncode)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(work / "run" / "final", folder)
    shutil.rmtree(work, ignore_errors=True)
