"""What the stand-alone pipelines (extend.encoders, extend.vision) share: where a model runs and which of
its parameters a short fine-tune trains. The decoder training loop gets both from accelerate and its
adapters instead."""

from __future__ import annotations

import torch
from torch import nn

from extend.config import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def device_problems(key: str, name: str) -> list[str]:
    """One problem if `name` is not a device choice or names a GPU this machine does not have."""
    if name not in DEVICES or (name == "cuda" and not torch.cuda.is_available()):
        return [f"{key}: {name!r} must be one of {list(DEVICES)} and present on this machine"]
    return []


def resolve_device(name: str) -> torch.device:
    """`auto` is the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
