"""The run shell the stand-alone programs (extend.encoders, extend.vision) share: refuse bad input before the
run folder exists, place the model, time the run, export, and write eval.json and reports.

    run = Run.open(cfg.output_dir, problems)          # raises ConfigError (every problem) or makes the folder
    device = resolve_device(...)                      # ... load, evaluate, fine-tune (program-specific) ...
    export = run.export(lambda folder: save(model, folder))
    data = run.finish({..., "export": str(export)}, reports={"report.md": write_report})

A run folder that already exists is reused: each output (eval.json, a report, final/) is written beside its
place under a `.NAME.partial` name and then moved over the old one, so an interrupted run leaves either the
previous complete output or the new one, never a mix of both (a re-exported final/ never keeps a file the
new export does not write).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from extend.config import ConfigError
from extend.models.loading import DTYPES

DEVICES = ("auto", "cpu", "cuda")


def output_problems(output_dir: str, key: str = "output_dir") -> list[str]:
    """One problem if the run folder cannot be made or written: an existing file in its place, or a parent
    (the nearest one that exists) this process may not write to."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        return [f"{key}={output_dir}: a file is in the way; give a folder path"]
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return [f"{key}={output_dir}: {existing} is a file, not a folder; give another {key}"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"{key}={output_dir}: {existing} is not writable; give another {key}"]
    return []


def placement_problems(prefix: str, device: str, dtype: str) -> list[str]:
    """`prefix.device` must be a device this machine has, `prefix.dtype` a known torch dtype."""
    problems = []
    if device not in DEVICES or (device == "cuda" and not torch.cuda.is_available()):
        problems.append(f"{prefix}.device: {device!r} must be one of {list(DEVICES)} and present on this machine")
    if dtype not in DTYPES:
        problems.append(f"{prefix}.dtype={dtype!r}: choose one of {', '.join(DTYPES)}")
    return problems


def resolve_device(name: str) -> torch.device:
    """`auto` is the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def required(value: str | None, key: str, recipe: str) -> str:
    """`value`, or one error naming `key` and a recipe that sets it."""
    if value is None:
        raise ConfigError([f"{key}: not set; pick a recipe that sets it (recipe={recipe}) or set "
                           f"{key}=FOLDER_OR_ID"])
    return value


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """`write(temporary path)`, then move the result onto `path` in one step (a file or a folder)."""
    partial = path.with_name(f".{path.name}.partial")
    remove(partial)  # left by a run that was killed while writing
    try:
        write(partial)
        if partial.is_dir() and path.exists():
            # A folder cannot be replaced in one rename: move the old one aside, the new one in, then delete.
            old = path.with_name(f".{path.name}.old")
            remove(old)
            path.rename(old)
            partial.rename(path)
            remove(old)
        else:
            os.replace(partial, path)
    except BaseException:
        remove(partial)
        raise
    return path


def remove(path: Path) -> None:
    """Delete a file or a folder tree if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(path: Path, data: dict) -> Path:
    """`data` as indented JSON with a final newline, written atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


@dataclass
class Run:
    """One run folder being filled, and the clock of the run (started when the folder was made)."""

    folder: Path
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def open(cls, output_dir: str, problems: list[str], key: str = "output_dir") -> Run:
        """Raise every problem (`problems`, then the folder's own) as one ConfigError, before anything is
        written; else make the folder (an existing one is reused) and start the clock."""
        problems = problems + output_problems(output_dir, key)
        if problems:
            raise ConfigError(problems)
        folder = Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        return cls(folder)

    def seconds(self) -> float:
        """Wall time since the folder was made, to 0.1 s."""
        return round(time.perf_counter() - self.started, 1)

    def export(self, save: Callable[[Path], object], name: str = "final") -> Path:
        """`save(folder)` writes the export into a fresh folder that then replaces <run>/`name`."""
        return write_atomic(self.folder / name, save)

    def finish(self, data: dict, reports: dict[str, Callable[[dict, Path], object]] | None = None) -> dict:
        """`data` plus the run's `seconds`, written to eval.json, then each report (file name -> writer of
        `data`); returns what eval.json holds."""
        data = {**data, "seconds": self.seconds()}
        write_json(self.folder / "eval.json", data)
        for name, write in (reports or {}).items():
            write_atomic(self.folder / name, lambda path, write=write: write(data, path))
        return data
