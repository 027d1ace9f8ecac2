"""LoRA through peft, optionally with trainable embeddings and norms (LongLoRA's finding that long-context
LoRA needs them). Those are peft `modules_to_save`, so they are saved with the adapter, restored on resume
and folded in by merge_and_unload."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from torch import nn
from transformers import PreTrainedModel

from extend.adapters.base import AdapterHooks
from extend.config import AdapterConfig, ConfigError
from extend.models.loading import QUANTIZATIONS

# Module-name suffixes peft matches for modules_to_save: every *norm module (input_layernorm,
# post_attention_layernorm, the final norm, q_norm/k_norm where present) and the input embedding.
NORM_SUFFIX = "norm"
EMBEDDING_NAME = "embed_tokens"


@dataclass
class LoraAdapter(AdapterHooks):
    cfg: AdapterConfig
    name: str = "lora"

    def check(self, model: PreTrainedModel) -> list[str]:
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [t for t in self.cfg.target_modules if t not in names]
        problems = []
        if missing:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
            problems.append(
                f"adapter.target_modules {missing} do not exist in {type(model).__name__}; its linear layers are: "
                + ", ".join(linear)
            )
        if self.cfg.quantize is not None and self.cfg.quantize not in QUANTIZATIONS:
            problems.append(f"adapter.quantize={self.cfg.quantize!r}: choose 4bit, 8bit or null")
        if self.cfg.quantize is not None and importlib.util.find_spec("bitsandbytes") is None:
            problems.append("adapter.quantize needs bitsandbytes: pip install 'extend[quantization]'")
        if self.cfg.train_embeddings and EMBEDDING_NAME not in names:
            problems.append(f"adapter.train_embeddings: {type(model).__name__} has no module named {EMBEDDING_NAME}")
        return problems

    def attach(self, model: PreTrainedModel) -> nn.Module:
        problems = self.check(model)
        if problems:
            raise ConfigError(problems)
        modules_to_save = ([EMBEDDING_NAME] if self.cfg.train_embeddings else []) + (
            [NORM_SUFFIX] if self.cfg.train_norms else []
        )
        config = LoraConfig(
            r=self.cfg.r,
            lora_alpha=self.cfg.alpha,
            lora_dropout=self.cfg.dropout,
            target_modules=list(self.cfg.target_modules),
            modules_to_save=modules_to_save or None,
            task_type="CAUSAL_LM",
        )
        if getattr(model, "is_quantized", False):
            # QLoRA: norms in float32 and input gradients on; activation checkpointing stays train's choice.
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return get_peft_model(model, config)

    def merged(self, model: nn.Module) -> PreTrainedModel:
        assert isinstance(model, PeftModel)
        return model.merge_and_unload()

    def save(self, model: nn.Module, folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
