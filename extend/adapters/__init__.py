"""Adapters, registered by the name `adapter.type` uses."""

from __future__ import annotations

from extend.adapters.base import Adapter, count_parameters, load_trainable_state, trainable_state
from extend.adapters.full import FullAdapter
from extend.adapters.lofit import LofitAdapter
from extend.adapters.lora import LoraAdapter
from extend.config import AdapterConfig, ConfigError

ADAPTERS = {"lora": LoraAdapter, "lofit": LofitAdapter, "full": FullAdapter}


def build_adapter(cfg: AdapterConfig) -> Adapter:
    if cfg.type not in ADAPTERS:
        raise ConfigError([f"adapter.type={cfg.type!r} is unknown; choose one of {', '.join(ADAPTERS)}"])
    return ADAPTERS[cfg.type](cfg)


__all__ = ["ADAPTERS", "Adapter", "build_adapter", "count_parameters", "load_trainable_state", "trainable_state"]
