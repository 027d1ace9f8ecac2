"""What the training loop needs from an adapter: attach, the trainable state, and a merged export."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from transformers import PreTrainedModel


class Adapter(Protocol):
    name: str

    def attach(self, model: PreTrainedModel) -> nn.Module:
        """Wrap or mark `model` so that exactly the adapter's parameters require grad."""

    def merged(self, model: nn.Module) -> PreTrainedModel:
        """A plain transformers model with the trained weights folded in (loads without extend)."""

    def save(self, model: nn.Module, folder: Path) -> None:
        """The adapter on its own (may be nothing for full fine-tuning)."""


class AdapterHooks:
    """What an adapter may add to the loop; the defaults do nothing (LoRA, full fine-tuning)."""

    def check_steps(self, total_steps: int) -> list[str]:
        """Problems with the run's length for this adapter (e.g. a stage that would never start)."""
        return []

    def regularization(self, model: nn.Module) -> torch.Tensor | None:
        """A penalty added to the loss once per optimizer step (None: nothing)."""
        return None

    def before_optimizer_step(self, model: nn.Module) -> None:
        """Called after the step's gradients are complete, before clipping and the optimizer step."""

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after optimizer step `step` (1-based)."""

    def state(self) -> dict:
        """JSON-able adapter state a checkpoint carries besides the tensors."""
        return {}

    def load_state(self, model: nn.Module, state: dict) -> None:
        """Restore what state() returned, on resume."""

    def trainable_summary(self, model: nn.Module) -> str:
        """One line for the log: what trains."""
        trainable, total = count_parameters(model)
        return f"{trainable:,} trainable of {total:,} parameters"

    def describe(self, model: nn.Module) -> dict:
        """What the run card should say about the adapter."""
        return {}


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter that requires grad, by name: what a checkpoint must carry besides the base."""
    return {name: p.detach().clone().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a checkpoint's trainable parameters back; refuses a state that does not match the model."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match the model's trainable parameters (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}): was it written with another adapter config?"
        )
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
