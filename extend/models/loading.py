"""Load base model configs and models, choosing the attention kernel a position method needs."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedConfig, PreTrainedModel

from extend.config import ConfigError, ModelConfig
from extend.models import tiny_base
from extend.models.placement import Placement
from extend.models.presets import PRESETS
from extend.rope.clex import attach_clex
from extend.rope.entropy import entropy_attention_name, uses_entropy_abf
from extend.rope.remapped import ATTENTION_NAME as REMAPPED_ATTENTION
from extend.rope.remapped import uses_remapped_attention


# transformers (5.2x, with the `kernels` package it depends on) swaps layers for kernels fetched from the Hub
# by default: on a GPU that downloads code at load time (an offline load fails) and replaces the modules the
# position methods are measured and tested with. extend loads every model without them.
NO_HUB_KERNELS = {"use_kernels": False}


def model_location(model: ModelConfig) -> str:
    """Where from_pretrained finds the base: the cached tiny base (built first if needed), an existing
    local folder, or a Hub id. Presets are built from configs and have no location."""
    name = model.name_or_path
    if name == tiny_base.NAME:
        return str(tiny_base.ensure_tiny_base(model.cache_dir))
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError([f"model.name_or_path={name!r} is a file; give the model's folder"])
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ConfigError(
            [f"model.name_or_path={name!r} does not exist; give a model folder, a Hub id, {tiny_base.NAME}, "
             f"or a preset ({', '.join(PRESETS)})"]
        )
    return name


def load_base_config(model: ModelConfig, tokenizer=None) -> PreTrainedConfig:
    """The base model's config, without weights.

    A preset (random weights) takes its vocabulary size and special tokens from `tokenizer` when given.
    """
    # The tiny base's config is its preset's: asking for it (rope inspection, validation) must not
    # start the few-minute build that only its weights need.
    unbuilt_tiny_base = model.name_or_path == tiny_base.NAME and not tiny_base.is_built(model.cache_dir)
    if model.name_or_path in PRESETS or unbuilt_tiny_base:
        config = PRESETS[tiny_base.PRESET if unbuilt_tiny_base else model.name_or_path]()
        if tokenizer is not None:
            config.vocab_size = len(tokenizer)
            config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
            config.pad_token_id = tokenizer.pad_token_id
        return config
    location = model_location(model)
    try:
        return AutoConfig.from_pretrained(location, revision=model.revision, trust_remote_code=model.trust_remote_code)
    except OSError as err:
        raise ConfigError(
            [
                f"model.name_or_path={model.name_or_path!r} could not be loaded ({err.__class__.__name__}): give an "
                f"existing folder, {tiny_base.NAME}, one of the presets ({', '.join(PRESETS)}), or a Hub id that is in "
                "the local cache (download it first with `hf download ID` where the Hub is reachable)"
            ]
        ) from err


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError([f"model.dtype={name!r}: choose one of {', '.join(DTYPES)}"])
    return DTYPES[name]


QUANTIZATIONS = ("4bit", "8bit")


def quantization_config(quantize: str, dtype: torch.dtype) -> BitsAndBytesConfig:
    """QLoRA's frozen base: NF4 4-bit (Dettmers et al., 2023) or LLM.int8() 8-bit, through bitsandbytes."""
    if quantize == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_base_model(model: ModelConfig, config: PreTrainedConfig, seed: int = 0, quantize: str | None = None,
                    placement: Placement | None = None) -> PreTrainedModel:
    """The base model's weights under `config` (which already carries the position method).

    Presets are randomly initialised from `seed`; folders and Hub ids load their weights, quantized by
    bitsandbytes when `quantize` is 4bit or 8bit. `placement` (evaluation; extend/models/placement.py) loads
    them onto its device(s); None keeps them on the CPU, where training's launcher moves them.
    """
    dtype = torch_dtype(model.dtype)
    if model.name_or_path in PRESETS:
        if quantize:
            raise ConfigError([f"adapter.quantize={quantize} needs saved weights: give model.name_or_path a folder or Hub id"])
        built = build_random(config, model.attn_implementation, seed=seed, dtype=dtype)
        # A preset is built in memory: it goes whole to the placement's first device.
        return built if placement is None else built.to(placement.device)
    return with_position_modules(AutoModelForCausalLM.from_pretrained(
        model_location(model),
        config=config,
        dtype=dtype,
        revision=model.revision,
        trust_remote_code=model.trust_remote_code,
        attn_implementation=attention_for(config, model.attn_implementation),
        quantization_config=quantization_config(quantize, dtype) if quantize else None,
        **(placement.load_kwargs() if placement is not None else {}),
        **NO_HUB_KERNELS,
    ))


def attention_for(config: PreTrainedConfig, requested: str) -> str:
    """The attention implementation to build with: entropy-aware ABF wraps the requested kernel; LM-Infinite
    and SelfExtend replace it with their remapped attention (its own chunked kernel, whatever was requested)."""
    if uses_remapped_attention(config):
        return REMAPPED_ATTENTION
    return entropy_attention_name(requested) if uses_entropy_abf(config) else requested


def with_position_modules(model: PreTrainedModel) -> PreTrainedModel:
    """`model` with the modules its position method keeps beside the weights, read from its config as
    `attention_for` reads the attention it needs: CLEX's ODE (extend/rope/clex.py), which computes the rotary
    frequencies from the input's length. Every loader here calls it; other models come back unchanged."""
    attach_clex(model)
    return model


def build_random(config: PreTrainedConfig, attn_implementation: str = "sdpa", seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A randomly initialised causal LM for `config` (tests, presets, the tiny base before training)."""
    torch.manual_seed(seed)
    return with_position_modules(AutoModelForCausalLM.from_config(
        config, attn_implementation=attention_for(config, attn_implementation), dtype=dtype
    ))


def load_pretrained(path: str | Path, attn_implementation: str = "sdpa", **kwargs) -> PreTrainedModel:
    """from_pretrained that also loads checkpoints whose method needs extend's attention (entropy_abf,
    lm_infinite, self_extend) or extend's modules (clex: the trained ODE, frequencies continuous in the length)."""
    config = AutoConfig.from_pretrained(str(path))
    return with_position_modules(AutoModelForCausalLM.from_pretrained(
        str(path), attn_implementation=attention_for(config, attn_implementation), **{**NO_HUB_KERNELS, **kwargs}
    ))
