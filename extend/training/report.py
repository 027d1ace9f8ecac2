"""Rank-0 progress: one fixed-format line per logging step, and the run card written with the export."""

from __future__ import annotations

import json
import platform
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

import torch


def peak_memory_gb() -> float:
    """Peak accelerator memory if there is one, else the process's peak resident set."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / 2**20 if sys.platform != "darwin" else kb / 2**30


@dataclass
class StepLog:
    step: int
    total_steps: int
    stage: int
    num_stages: int
    length: int
    loss: float
    lr: float
    tokens_per_second: float
    peak_memory_gb: float

    def line(self) -> str:
        return (
            f"step {self.step:>6}/{self.total_steps} | stage {self.stage + 1}/{self.num_stages} len {self.length:>6} | "
            f"loss {self.loss:.4f} | lr {self.lr:.2e} | tok/s {self.tokens_per_second:>9,.0f} | "
            f"peak mem {self.peak_memory_gb:.2f} GB"
        )

    def metrics(self) -> dict[str, float]:
        return {
            "train/loss": self.loss,
            "train/lr": self.lr,
            "train/tokens_per_second": self.tokens_per_second,
            "train/length": self.length,
            "train/stage": self.stage,
        }


def hardware() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["device_count"] = torch.cuda.device_count()
    else:
        info["device"] = "cpu"
        info["cpu_threads"] = torch.get_num_threads()
    return info


def write_run_card(folder: Path, card: dict) -> None:
    (folder / "run_card.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
