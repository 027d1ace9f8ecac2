"""What a run records about its config: the fingerprint that decides whether a checkpoint or an export
belongs to it, the flat table trackers show, the tracker itself, and the resolved config in the run folder."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from dataclasses import asdict
from pathlib import Path

from omegaconf import OmegaConf

from extend.config import DecoderConfig

# Keys that change what a run computes; the rest (logging, resume policy, step cap) may differ on resume.
# How the run is distributed is checked against the checkpoint's format instead (resume_problems).
_NOT_FINGERPRINTED = {"train": ("resume", "log_every", "tracker", "max_steps", "checkpoint_every", "keep_checkpoints")}
_NOT_FINGERPRINTED_GROUPS = ("accelerate",)

# train.tracker -> the package accelerate needs for it.
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
# Where a run's tracker logs go (TensorBoard event files): <output_dir>/logs.
LOGS = "logs"
# Where the resolved config and the command-line overrides are recorded, as Hydra's run folders hold them.
RECORD = ".hydra"


def fingerprinted_config(cfg: DecoderConfig) -> dict:
    """The keys that decide what a run computes, as JSON values: what a checkpoint records of its config."""
    data = asdict(cfg)
    for group in _NOT_FINGERPRINTED_GROUPS:
        data.pop(group)
    for group, keys in _NOT_FINGERPRINTED.items():
        for key in keys:
            data[group].pop(key, None)
    return json.loads(json.dumps(data, sort_keys=True, default=str))


def config_fingerprint(cfg: DecoderConfig) -> str:
    return hashlib.sha256(json.dumps(fingerprinted_config(cfg), sort_keys=True).encode()).hexdigest()[:16]


def config_changes(recorded: dict, current: dict) -> list[str]:
    """How `current` (fingerprinted_config) differs from the `recorded` one of a checkpoint, one
    "key: old -> new" each. A key the recorded config lacks is no change when it holds its default: it was
    added to extend after the checkpoint was written, and its default is what the run computed before."""
    defaults = fingerprinted_config(DecoderConfig())
    changes = []

    def walk(prefix: str, old, new, default) -> None:
        if isinstance(old, dict) and isinstance(new, dict):
            default = default if isinstance(default, dict) else {}
            for key in sorted(set(old) | set(new)):
                name = f"{prefix}.{key}" if prefix else key
                if key not in old:
                    if key not in default or new[key] != default[key]:
                        changes.append(f"{name}: (not in the checkpoint's config) -> {new[key]!r}")
                elif key not in new:
                    changes.append(f"{name}: {old[key]!r} -> (no longer a key)")
                else:
                    walk(name, old[key], new[key], default.get(key))
        elif old != new:
            changes.append(f"{prefix}: {old!r} -> {new!r}")

    walk("", recorded, current, defaults)
    return changes


def tracker_problems(name: str) -> list[str]:
    if name != "none" and name not in TRACKERS:
        return [f"train.tracker={name!r} is unknown; choose none, {', '.join(TRACKERS)}"]
    if name in ("wandb", "mlflow") and importlib.util.find_spec(TRACKERS[name]) is None:
        return [f"train.tracker={name}: the {TRACKERS[name]} package is not installed (pip install {TRACKERS[name]}, "
                "or set train.tracker=none)"]
    return []


def tracker_for(name: str) -> str | None:
    """The accelerate tracker to log to (train.tracker, validated). TensorBoard is the default only where it
    is installed."""
    if name == "none":
        return None
    if name == "tensorboard" and importlib.util.find_spec(TRACKERS[name]) is None:
        print("train.tracker=tensorboard: tensorboard is not installed, logging to the console only "
              "(pip install tensorboard, or set train.tracker=none to silence this)", file=sys.stderr)
        return None
    return name


def flat_config(cfg: DecoderConfig) -> dict[str, str | int | float | bool]:
    """The config as flat scalars, for trackers' hyperparameter tables."""
    flat = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = value if isinstance(value, (str, int, float, bool)) else str(value)

    walk("", asdict(cfg))
    return flat


def record_config(cfg: DecoderConfig, run_dir: Path, overrides: list[str] | None) -> None:
    """<run>/.hydra/config.yaml (the resolved config) and overrides.yaml (the command line), written once the
    run is accepted; a library call (overrides None) records nothing, as before."""
    if overrides is None:
        return
    folder = run_dir / RECORD
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    (folder / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(list(overrides))))


def finished_export(run_dir: Path, fingerprint: str, total_steps: int) -> Path | None:
    """<run>/final when it was exported by this config after all `total_steps` steps, else None."""
    card = run_dir / "final" / "run_card.json"
    if not card.is_file():
        return None
    try:
        data = json.loads(card.read_text())
    except (OSError, ValueError):
        return None
    same = data.get("config_fingerprint") == fingerprint and data.get("steps") == total_steps
    return card.parent if same else None
