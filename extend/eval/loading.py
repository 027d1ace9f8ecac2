"""What extend.eval loads: the tokenizer, and each compared model with its position method applied to the
config before the model is built (transformers computes inv_freq in the rotary module's __init__)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from extend.config import ConfigError, ExtendConfig, ModelConfig, RopeConfig
from extend.models import PRESETS, attention_for, load_base_config, load_base_model
from extend.models.loading import model_location, torch_dtype
from extend.models.placement import Placement, config_bytes, place
from extend.models.tokenizer import TINY as TINY_TOKENIZER
from extend.models.tokenizer import load_tokenizer as load_shared_tokenizer
from extend.rope import apply_rope, config_served_lengths, resolve_rope


def load_tokenizer(name_or_path: str, revision: str | None = None,
                   trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of a model folder, `tiny-base`, a cached Hub id, or the built-in `tiny` tokenizer."""
    if name_or_path in PRESETS:
        raise ConfigError([f"{name_or_path!r} is a randomly initialised preset without a tokenizer: set "
                           "eval.tokenizer=FOLDER_OR_HUB_ID (or tiny)"])
    if name_or_path == TINY_TOKENIZER:
        return load_shared_tokenizer(TINY_TOKENIZER)
    location = model_location(ModelConfig(name_or_path=name_or_path))
    try:
        return AutoTokenizer.from_pretrained(location, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError([f"no tokenizer could be loaded from {name_or_path!r} ({err.__class__.__name__}: "
                           f"{str(err).splitlines()[0]}); set eval.tokenizer to a folder or cached Hub id"]) from err


def check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Generation stops at EOS and pads with it when there is no pad token: a tokenizer needs one."""
    if tokenizer.eos_token_id is None:
        return [f"the tokenizer ({tokenizer.name_or_path or type(tokenizer).__name__}) has no EOS token: set "
                "eos_token in its tokenizer_config.json (generation could not stop or pad otherwise)"]
    return []


@dataclass
class Condition:
    """One model as the report compares it: where it comes from and the position method applied."""

    name: str
    model: ModelConfig
    rope: RopeConfig
    # The config the model is built with (the method already written into it).
    config: PreTrainedConfig
    # Longest input transformers addresses with this config (served_lengths()).
    served_length: int
    # A model handed in by the caller (end of training); None = load `model.name_or_path`.
    in_memory: PreTrainedModel | None = None

    def describe(self) -> dict:
        return {
            "name": self.name,
            "model": "<in memory>" if self.in_memory is not None else self.model.name_or_path,
            "rope": None if self.rope.type == "none" else {
                k: v for k, v in dataclasses.asdict(self.rope).items() if v is not None},
            "rope_parameters": dict(getattr(self.config, "rope_parameters", None) or {}),
            "served_length": self.served_length,
        }


def _label(name_or_path: str | None, rope: RopeConfig) -> str:
    base = Path(name_or_path).name if name_or_path else "model"
    return base if rope.type == "none" else f"{base} + {rope.type} x{rope.factor:g}"


def resolve_conditions(cfg: ExtendConfig, model: PreTrainedModel | None = None) -> tuple[list[Condition], list[str]]:
    """The evaluated model and each comparison, validated without loading weights; every problem listed."""
    problems: list[str] = []
    conditions: list[Condition] = []
    # A model handed in (end of training) is evaluated as it is: its config already carries its method.
    primary_rope = RopeConfig() if model is not None else cfg.rope
    specs = [(cfg.eval.name or _label(None if model is not None else cfg.model.name_or_path, primary_rope),
              None, primary_rope)]
    specs += [(c.name, c.name_or_path, c.rope) for c in cfg.eval.comparisons]
    seen = set()
    for name, name_or_path, rope in specs:
        if name in seen:
            problems.append(f"two compared models are named {name!r}: give each comparison a distinct name")
        seen.add(name)
        uses_given = name_or_path is None and model is not None
        model_cfg = dataclasses.replace(cfg.model, name_or_path=name_or_path or cfg.model.name_or_path)
        try:
            base = model.config if uses_given else load_base_config(model_cfg)
            # An untouched `rope` keeps the model's own positions (and needs nothing of its geometry).
            config = apply_rope(base, None if rope == RopeConfig() else resolve_rope(rope, base))
        except ConfigError as err:
            problems += [f"{name}: {p}" for p in err.problems]
            continue
        served = config_served_lengths(config, None)["transformers"]
        conditions.append(Condition(name, model_cfg, rope, config, served, model if uses_given else None))
    return conditions, problems


def placement_for(condition: Condition, knob: str) -> Placement:
    """Where `eval.device` puts the condition's model on this machine; the size of its weights (in the
    model's dtype, from its config) decides between one GPU and a spread, so it is counted only on a
    machine with GPUs."""
    size = config_bytes(condition.config, torch_dtype(condition.model.dtype)) if knob in ("auto", "cuda") and \
        torch.cuda.is_available() else None
    return place(knob, size)


def build_model(condition: Condition, seed: int, device: str = "cpu") -> PreTrainedModel:
    """The condition's model in eval mode: the given one (where the caller put it), a rebuilt copy with a new
    method, a preset, or weights loaded with the rewritten config onto the device(s) `device` (eval.device)
    chooses."""
    mc = condition.model
    if condition.in_memory is not None:
        if condition.rope.type == "none":
            return condition.in_memory.eval()
        # Rotary buffers are not in the state dict: a model built from the new config and given the same
        # weights computes the new frequencies.
        rebuilt = AutoModelForCausalLM.from_config(
            condition.config, attn_implementation=attention_for(condition.config, mc.attn_implementation),
            dtype=next(condition.in_memory.parameters()).dtype,
        )
        rebuilt.load_state_dict(condition.in_memory.state_dict())
        return rebuilt.to(next(condition.in_memory.parameters()).device).eval()
    return load_base_model(mc, condition.config, seed=seed, placement=placement_for(condition, device)).eval()
