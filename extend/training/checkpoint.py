"""Self-describing, atomic, exactly resumable checkpoints.

    <run>/checkpoints/step-000050/
        trainable.safetensors   every parameter that requires grad (adapter, trainable embeddings/norms)
        optimizer.pt            optimizer state_dict (tensors only; loaded with weights_only=True)
        scheduler.pt            lr scheduler state_dict
        rng.pt                  python / numpy / torch RNG states, as tensors
        state.json              step, curriculum stage, rows consumed, tokens seen, config fingerprint (and
                                the fingerprinted config, to tell keys added since from changes),
                                format and process count
        COMPLETE                written last, before the folder is renamed into place

Under DeepSpeed (accelerate=zero*) the first four are replaced by `deepspeed/`, accelerate's save_state of
the engine: every process writes its own ZeRO shards there, so such a checkpoint resumes only on the same
number of processes. The trainable format above is the same whatever the process count.

A checkpoint is written into `step-XXXXXX.tmp`, every file fsynced, the marker written, then the folder
is renamed into place in one step, so a crash at any point leaves either the previous checkpoints alone
or a complete new one. Resume takes the newest folder that has its marker and reads; anything else is
skipped with a warning naming it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from extend.training.run_config import config_changes

MARKER = "COMPLETE"
PREFIX = "step-"


@dataclass
class TrainState:
    """Where the run is: everything besides tensors that resuming needs."""

    step: int = 0
    stage: int = 0
    # Optimizer steps already taken inside the current stage (its rows are read in stored order).
    stage_step: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0
    config_fingerprint: str = ""
    # The fingerprinted config itself (run_config.fingerprinted_config), so a resume after an upgrade that
    # added config keys can tell those (at their defaults) from a real change.
    config: dict = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    # How the checkpoint was written: "trainable" (shape-free, any process count) or "deepspeed" (ZeRO
    # shards of `processes` processes, conf/accelerate/ option `accelerate`).
    format: str = "trainable"
    processes: int = 1
    accelerate: str = "ddp"
    # The adapter's own state besides tensors (LoFiT: the head ranking and the selected heads).
    adapter_state: dict = field(default_factory=dict)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    """Every RNG the loop draws from, as tensors and numbers only (so it loads with weights_only=True)."""
    version, mt_state, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "cached": cached},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def staging_folder(root: Path, step: int) -> Path:
    """The temporary folder a checkpoint of `step` is written into (emptied and created by the caller)."""
    return root / f"{PREFIX}{step:06d}.tmp"


def prepare_staging(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)


def write_trainable_state(tmp: Path, trainable: dict[str, torch.Tensor], optimizer, scheduler) -> None:
    """The shape-free payload (one process holds it all): trained weights, optimizer, scheduler, RNG."""
    save_file({k: v.cpu() for k, v in trainable.items()}, tmp / "trainable.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")


def commit_checkpoint(root: Path, tmp: Path, state: TrainState, keep: int) -> Path:
    """Mark a fully written staging folder complete, rename it into place, prune all but the newest `keep`."""
    final = root / tmp.name.removesuffix(".tmp")
    (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2))
    (tmp / MARKER).write_text("")
    _fsync_tree(tmp)
    if final.exists():  # an older attempt at the same step (resumed after a crash): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in complete_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_checkpoint(root: Path, state: TrainState, trainable: dict[str, torch.Tensor], optimizer, scheduler,
                    keep: int) -> Path:
    """Write one shape-free checkpoint atomically (from one process), then prune old ones."""
    tmp = staging_folder(root, state.step)
    prepare_staging(tmp)
    write_trainable_state(tmp, trainable, optimizer, scheduler)
    return commit_checkpoint(root, tmp, state, keep)


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first; incomplete or unreadable ones are reported and skipped."""
    found = []
    if not root.is_dir():
        return found
    for folder in sorted(root.iterdir()):
        if not folder.name.startswith(PREFIX) or folder.name.endswith(".tmp"):
            if folder.name.endswith(".tmp"):
                warnings.warn(f"skipping {folder}: an interrupted checkpoint write", stacklevel=2)
            continue
        try:
            if not (folder / MARKER).exists():
                raise ValueError("no completion marker")
            json.loads((folder / "state.json").read_text())
        except (OSError, ValueError) as err:
            warnings.warn(f"skipping checkpoint {folder}: {err}", stacklevel=2)
            continue
        found.append(folder)
    return found


@dataclass
class Checkpoint:
    folder: Path
    state: TrainState

    def trainable(self) -> dict[str, torch.Tensor]:
        return load_file(self.folder / "trainable.safetensors")

    def restore_optimizer(self, optimizer, scheduler) -> None:
        optimizer.load_state_dict(torch.load(self.folder / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(self.folder / "scheduler.pt", weights_only=True))

    def restore_rng(self) -> None:
        set_rng_state(torch.load(self.folder / "rng.pt", weights_only=True))


def load_latest(root: Path) -> Checkpoint | None:
    candidates = complete_checkpoints(root)
    if not candidates:
        return None
    folder = candidates[-1]
    return Checkpoint(folder, TrainState(**json.loads((folder / "state.json").read_text())))


def resume_problems(checkpoint: Checkpoint, state: TrainState, resume: str) -> list[str]:
    """Why this run (whose fresh state is `state`, train.resume=`resume`) cannot continue `checkpoint`
    exactly, each saying how to continue it; [] when it can."""
    found, folder = checkpoint.state, checkpoint.folder
    if resume == "never":
        return [f"{folder.parent.parent} already has checkpoints; set train.resume=auto or choose another run_name"]
    if found.config_fingerprint != state.config_fingerprint:
        comparable = bool(found.config and state.config)  # checkpoints before configs were recorded: not
        changes = config_changes(found.config, state.config) if comparable else []
        if changes or not comparable:
            shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
            return [f"{folder} was written by a different config{f' ({shown})' if shown else ''}; resume with the "
                    "same recipe and overrides, or choose another run_name"]
    if found.format != state.format:
        return [f"{folder} holds a {found.format} checkpoint (accelerate={found.accelerate}); resume with "
                f"accelerate={found.accelerate}"]
    if found.format == "deepspeed" and (found.processes, found.accelerate) != (state.processes, state.accelerate):
        return [f"{folder} holds DeepSpeed shards of accelerate={found.accelerate} on {found.processes} processes; "
                f"this launch is accelerate={state.accelerate} on {state.processes}. Resume with the same option and "
                "process count (a ddp run's checkpoints resume on any count)"]
    return []
