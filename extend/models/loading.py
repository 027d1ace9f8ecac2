"""Load base model configs and models, choosing the attention kernel a position method needs."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel

from extend.config import ConfigError, ModelConfig
from extend.models.presets import PRESETS
from extend.rope.entropy import entropy_attention_name, uses_entropy_abf


def load_base_config(model: ModelConfig) -> PreTrainedConfig:
    """The base model's config, without weights: a preset, a local folder, or a Hub id."""
    name = model.name_or_path
    if name in PRESETS:
        return PRESETS[name]()
    path = Path(name).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError([f"model.name_or_path={name!r} is a file; give the model's folder"])
    if not path.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise ConfigError([f"model.name_or_path={name!r} does not exist; give a model folder, a Hub id, or a preset ({', '.join(PRESETS)})"])
    try:
        return AutoConfig.from_pretrained(str(path), revision=model.revision, trust_remote_code=model.trust_remote_code)
    except OSError as err:
        raise ConfigError(
            [
                f"model.name_or_path={name!r} could not be loaded ({err.__class__.__name__}): give an existing folder, "
                f"one of the presets ({', '.join(PRESETS)}), or a Hub id that is in the local cache "
                "(download it first with `hf download ID` where the Hub is reachable)"
            ]
        ) from err


def attention_for(config: PreTrainedConfig, requested: str) -> str:
    """The attention implementation to build with: entropy-aware ABF wraps the requested kernel."""
    return entropy_attention_name(requested) if uses_entropy_abf(config) else requested


def build_random(config: PreTrainedConfig, attn_implementation: str = "sdpa", seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A randomly initialised causal LM for `config` (tests, presets, the tiny base before training)."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(
        config, attn_implementation=attention_for(config, attn_implementation), dtype=dtype
    )


def load_pretrained(path: str | Path, attn_implementation: str = "sdpa", **kwargs) -> PreTrainedModel:
    """from_pretrained that also loads checkpoints whose method needs extend's attention (entropy_abf)."""
    config = AutoConfig.from_pretrained(str(path))
    return AutoModelForCausalLM.from_pretrained(
        str(path), attn_implementation=attention_for(config, attn_implementation), **kwargs
    )
