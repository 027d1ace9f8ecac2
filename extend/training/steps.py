"""The fine-tuning loop the stand-alone programs (extend.encoders, extend.vision) share: freeze all but the
trainable parameters, AdamW without weight decay, one batch per step from a schedule of lengths, one log
record per step. What a batch is and what its loss is belong to the program (two functions it passes in).

The decoder training loop (extend/train.py) is a different one: accelerate, adapters, accumulation,
checkpoints and a learning-rate schedule.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import torch
from torch import nn
from tqdm import tqdm

from extend.config import ConfigError

Batch = TypeVar("Batch")
SHOWN_NAMES = 4  # trainable tensor names printed before " ..."


@dataclass(frozen=True)
class Schedule:
    """What changes from step to step: `name` (its word in the log) takes `values` in turn, one per step, so
    every value is trained on and a short one keeps coming back while long ones are learned."""

    name: str
    values: list[int]

    def at(self, step: int) -> int:
        """The value of 1-based `step`."""
        return self.values[(step - 1) % len(self.values)]


@dataclass(frozen=True)
class StepLoss:
    """What one step computed: the loss to minimise and the values its log record keeps (rounded for the
    log; "loss" first)."""

    value: torch.Tensor
    logged: dict[str, float]


def select_trainable(model: nn.Module, patterns: list[str], key: str, examples: str) -> list[str]:
    """Freeze every parameter except those whose name contains one of `patterns`; their names. None matching
    is an error naming `key` and `examples` of name parts."""
    names = []
    for name, param in model.named_parameters():
        param.requires_grad_(any(p in name for p in patterns))
        if param.requires_grad:
            names.append(name)
    if not names:
        raise ConfigError([f"{key}: {patterns} matches no parameter of {model.config.model_type}; use parts of "
                           f"names such as {examples}"])
    return names


@dataclass(frozen=True)
class Trainable:
    """Which parameters a fine-tune updates: those whose name contains one of `patterns`. `key` and
    `examples` name the setting and a few name parts in the error when none matches.

    `frozen_rows` maps a parameter name to row indices whose gradient is zeroed, so those rows stay exactly
    as they are (AdamW without weight decay moves nothing that never had a gradient)."""

    patterns: list[str]
    key: str
    examples: str
    frozen_rows: dict[str, torch.Tensor] | None = None

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[list[nn.Parameter]]:
        """The trainable parameters while the rest are frozen; afterwards (also after an error) every
        parameter trains again and no gradient row is masked any more."""
        names = select_trainable(model, self.patterns, self.key, self.examples)
        by_name = dict(model.named_parameters())
        hooks = [by_name[name].register_hook(lambda grad, rows=rows: grad.index_fill(0, rows.to(grad.device), 0.0))
                 for name, rows in (self.frozen_rows or {}).items() if by_name[name].requires_grad]
        params = [p for p in model.parameters() if p.requires_grad]
        print(f"fine-tune: {len(names)} tensors ({sum(p.numel() for p in params):,} parameters) train: "
              f"{', '.join(names[:SHOWN_NAMES])}{' ...' if len(names) > SHOWN_NAMES else ''}")
        try:
            yield params
        finally:
            for hook in hooks:
                hook.remove()
            for param in model.parameters():
                param.requires_grad_(True)


def fit(model: nn.Module, trainable: Trainable, schedule: Schedule, batch: Callable[[int], Batch],
        loss: Callable[[Batch], StepLoss], *, steps: int, learning_rate: float, seed: int, train_mode: bool,
        log_every: int = 10) -> list[dict]:
    """Train `model` in place for `steps` AdamW steps; returns one log record per step: step, the schedule's
    value, what `loss` logged, seconds (the loss, backward and update; making the batch is not counted).

    `batch(value)` makes a step's batch for the schedule's value, `loss(batch)` scores it. torch is seeded
    with `seed` first (dropout, any torch draw in `loss`); `batch` and `loss` keep their own generators.
    `train_mode` is the module mode during the loop (False keeps dropout off); the model ends in eval mode.
    """
    torch.manual_seed(seed)
    log = []
    with trainable.applied(model) as params:
        optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
        model.train(train_mode)
        bar = tqdm(range(1, steps + 1), desc="fine-tune", unit="step")
        for step in bar:
            value = schedule.at(step)
            inputs = batch(value)
            start = time.perf_counter()
            scored = loss(inputs)
            optimizer.zero_grad(set_to_none=True)
            scored.value.backward()
            optimizer.step()
            record = {"step": step, schedule.name: value, **scored.logged,
                      "seconds": round(time.perf_counter() - start, 3)}
            log.append(record)
            bar.set_postfix({schedule.name: value, "loss": f"{scored.logged['loss']:.3f}"})
            if step % log_every == 0 or step == steps:
                logged = " ".join(f"{k} {v}" for k, v in scored.logged.items())
                tqdm.write(f"step {step} {schedule.name} {value} {logged} {record['seconds']:.2f}s/step")
        model.eval()
    return log


def log_summary(log: list[dict]) -> dict:
    """first_loss, last_loss (None without steps) and the seconds the steps took, for eval.json."""
    return {"first_loss": log[0]["loss"] if log else None, "last_loss": log[-1]["loss"] if log else None,
            "seconds": round(sum(r["seconds"] for r in log), 1)}
