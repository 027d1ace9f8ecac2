"""Full fine-tuning: every parameter trains; the export is the model itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn
from transformers import PreTrainedModel

from extend.adapters.base import AdapterHooks
from extend.config import AdapterConfig


@dataclass
class FullAdapter(AdapterHooks):
    cfg: AdapterConfig
    name: str = "full"

    def check(self, model: PreTrainedModel) -> list[str]:
        if self.cfg.quantize:
            return [f"adapter.quantize={self.cfg.quantize} freezes a quantized base; it needs adapter.type=lora"]
        return []

    def attach(self, model: PreTrainedModel) -> nn.Module:
        model.requires_grad_(True)
        return model

    def merged(self, model: nn.Module) -> PreTrainedModel:
        return model

    def save(self, model: nn.Module, folder: Path) -> None:
        """Nothing beyond the merged model: the weights are the adapter."""
