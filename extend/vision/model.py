"""Which vision-language models this pipeline supports, the tiny preset, and building the model with the
RoPE method written into its language model's config before the weights exist.

transformers computes the rotary `inv_freq` when the language model is constructed, so the method goes into
`config.text_config` (through extend.rope's `resolve_rope` / `apply_rope`) and the model is built or loaded
from that config; changing the config of a built model would do nothing.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from transformers import (AutoConfig, AutoModelForImageTextToText, InternVLConfig, InternVLForConditionalGeneration,
                          PretrainedConfig)

from extend.config import ConfigError, RopeConfig, VisionConfig
from extend.models.loading import NO_HUB_KERNELS
from extend.rope import METHODS, ResolvedRope, apply_rope, resolve_rope

# model_type -> the class that builds it. Only InternVL (transformers' implementation, Qwen2 language
# model by default) so far; another family needs its image-token id and text config under the same names.
FAMILIES: dict[str, type] = {"internvl": InternVLForConditionalGeneration}

# Ids of the tiny preset's vocabulary that the synthetic task uses (extend/vision/data.py): the preset has
# no tokenizer, so its "tokens" are these ids.
TINY_VOCAB = {"pad": 0, "bos": 1, "img_start": 2, "img_end": 3, "image": 4, "question": 5, "colours": 8,
              "filler": 16, "size": 64}


def tiny_internvl() -> InternVLConfig:
    """A tiny InternVL: a 1-layer vision tower on 28 px images (7 px patches -> 16 patches -> 4 image
    tokens after the 0.5 pixel shuffle) and a 2-layer Qwen2 language model with 128 positions."""
    return InternVLConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=28, patch_size=7),
        text_config=dict(model_type="qwen2", vocab_size=TINY_VOCAB["size"], hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                         max_position_embeddings=128, tie_word_embeddings=True, pad_token_id=TINY_VOCAB["pad"],
                         bos_token_id=TINY_VOCAB["bos"]),
        image_token_id=TINY_VOCAB["image"], image_seq_length=4, downsample_ratio=0.5, tie_word_embeddings=True)


PRESETS: dict[str, Callable[[], PretrainedConfig]] = {"tiny-internvl": tiny_internvl}

# Why a method that scales queries in attention (the registry's scales_queries) needs more than a config here.
QUERY_SCALING_UNSUPPORTED = ("its query scaling is an attention wrapper (extend.rope.entropy) that would also wrap the "
                             "vision tower's attention; not supported for vision models yet: use abf, yarn, linear, ...")


def load_config(name: str) -> PretrainedConfig:
    """The config of a preset, a folder or a Hub id in the local cache (no weights are read)."""
    if name in PRESETS:
        return PRESETS[name]()
    try:
        return AutoConfig.from_pretrained(name)
    except OSError as err:
        raise ConfigError([f"vision.model: {name!r} is not {', '.join(PRESETS)}, a folder with a config.json, or a "
                           f"Hub id in the local cache ({type(err).__name__}: {str(err).splitlines()[0]})"]) from err


def family_problems(config: PretrainedConfig) -> list[str]:
    if config.model_type not in FAMILIES:
        return [f"vision.model: model type {config.model_type!r} is not a supported vision-language model; "
                f"supported: {sorted(FAMILIES)} (InternVL in transformers, e.g. OpenGVLab/InternVL3-1B-hf)"]
    return []


def original_length(config: PretrainedConfig) -> int:
    return config.text_config.max_position_embeddings


def resolve_text_rope(rope: RopeConfig, vision: VisionConfig,
                      config: PretrainedConfig) -> tuple[ResolvedRope | None, list[str]]:
    """Bind the rope method to the language model, with rope.factor derived from vision.target_length."""
    old = original_length(config)
    target = vision.target_length
    if target is None:
        target = int(round(rope.factor * old))
    elif target < old:
        return None, [f"vision.target_length={target} is below the language model's original length {old}: "
                      f"set it to {old} or more (e.g. {4 * old})"]
    elif rope.factor not in (1.0, target / old):
        return None, [f"rope.factor={rope.factor} disagrees with vision.target_length={target} (original {old}): "
                      "set only vision.target_length; the factor is derived from it"]
    if rope.type in METHODS and METHODS[rope.type].scales_queries:
        return None, [f"rope.type={rope.type}: {QUERY_SCALING_UNSUPPORTED}"]
    if rope.type in METHODS and METHODS[rope.type].inference_only:
        return None, [f"rope.type={rope.type} is a training-free inference method for text decoders; the vision "
                      "program trains: use yarn, abf, linear, ..."]
    if target > old and rope.type == "none":
        return None, [f"vision.target_length={target} is above the original {old} but rope.type is none: pick a "
                      "method (rope.type=yarn, linear, ...) or set vision.target_length=null"]
    bound = copy.copy(rope)
    bound.factor = target / old
    try:
        return resolve_rope(bound, config.text_config), []
    except ConfigError as err:
        return None, err.problems


def extended_config(config: PretrainedConfig, resolved: ResolvedRope | None) -> PretrainedConfig:
    """A copy of `config` whose text_config carries the rope method (its portable form, see extend.rope)."""
    extended = copy.deepcopy(config)
    extended.text_config = apply_rope(config.text_config, resolved)
    return extended


def build_model(name: str, config: PretrainedConfig, dtype: torch.dtype, attn_implementation: str,
                seed: int = 0) -> InternVLForConditionalGeneration:
    """The preset with random weights (seeded), or the checkpoint's weights under the extended config."""
    family = FAMILIES[config.model_type]
    if name in PRESETS:
        torch.manual_seed(seed)
        return AutoModelForImageTextToText.from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    return family.from_pretrained(name, config=config, dtype=dtype, attn_implementation=attn_implementation,
                                  **NO_HUB_KERNELS)
