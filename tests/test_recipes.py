"""Every recipe composes, and validates against its base model's geometry before anything is downloaded."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import LlamaConfig

import torch
from transformers import AutoModelForCausalLM

from extend.adapters import build_adapter
from extend.config import CONF_DIR, RECIPES_DIR, ROOTS, recipe_program
from extend.models import PRESETS, attention_for, load_base_config
from extend.rope import apply_rope, config_served_lengths, resolve_rope
from extend.train import check_training

# The published geometry of the Hub bases the GPU recipes name (config.json of each model).
LLAMA2 = dict(vocab_size=32000, num_key_value_heads=None, max_position_embeddings=4096,
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
STAND_INS = {
    "meta-llama/Llama-2-7b-hf": LlamaConfig(hidden_size=4096, num_attention_heads=32, num_hidden_layers=32, intermediate_size=11008, **LLAMA2),
    "meta-llama/Llama-2-7b-chat-hf": LlamaConfig(hidden_size=4096, num_attention_heads=32, num_hidden_layers=32, intermediate_size=11008, **LLAMA2),
    "meta-llama/Llama-2-13b-hf": LlamaConfig(hidden_size=5120, num_attention_heads=40, num_hidden_layers=40, intermediate_size=13824, **LLAMA2),
    # The local SmolLM2-135M-Instruct checkpoint that bench/studies/eval_smollm2.py converts from its GGUF.
    ".cache/smollm2-135m-instruct": LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0}),
}
RECIPES = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
# Paper recipes that train below the length they extend to, as their papers do.
TRAINS_SHORT = {
    "giraffe_16k": "Giraffe fine-tunes at 4,096 with a x16 linear factor",
    "giraffe_32k": "Giraffe's script fine-tunes at 4,096",
    "yarn_128k": "YaRN trains s = 32 on 64k rows and extrapolates to 128k",
    "longlora_100k": "LongLoRA trains at 100,000 with factor ceil(100,000 / 4,096) = 25",
    "longlora_100k_full": "as longlora_100k",
}


# tests/test_encoders.py and tests/test_vision.py validate the other programs' recipes against their models.
DECODER_RECIPES = [r for r in RECIPES if recipe_program(r) == "decoder"]


def typed(recipe: str, *overrides: str):
    """The recipe composed under its own program's root (conf/config.yaml, encoder.yaml or vision.yaml)."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        root = ROOTS[recipe_program(recipe)][0]
        return OmegaConf.to_object(compose(root, overrides=[f"recipe={recipe}", *overrides]))


def base_config_of(cfg):
    if cfg.model.name_or_path in PRESETS:
        return load_base_config(cfg.model)
    if cfg.model.name_or_path == "tiny-base":  # the export of recipes/tiny_base.yaml: that preset, trained
        return PRESETS["tiny-base-llama"]()
    if cfg.model.name_or_path == "outputs/yarn_64k/final":  # the checkpoint yarn_64k exports
        first = typed("yarn_64k")
        base = STAND_INS[first.model.name_or_path]
        return apply_rope(base, resolve_rope(first.rope, base))
    return STAND_INS[cfg.model.name_or_path]


def assert_recipe_header(recipe: str) -> None:
    """A recipe is a delta-only global package headed by its command, hardware and expected results."""
    text = (RECIPES_DIR / f"{recipe}.yaml").read_text().splitlines()
    assert text[0] == "# @package _global_"
    header = "\n".join(line for line in text if line.startswith("#"))
    for part in ("Command", "Hardware:", "Expected results"):
        assert part in header, f"{recipe}: the header must state {part}"


def test_every_recipe_belongs_to_one_program():
    assert {r: recipe_program(r) for r in RECIPES if recipe_program(r) not in ("decoder", "encoder", "vision")} == {}
    assert len(DECODER_RECIPES) > 10


@pytest.mark.parametrize("recipe", DECODER_RECIPES)
def test_recipe_composes_and_validates(recipe):
    assert_recipe_header(recipe)
    cfg = typed(recipe, "run_name=" + recipe)
    assert cfg.run_name == recipe
    config = apply_rope(base := base_config_of(cfg), resolve_rope(cfg.rope, base))
    addressable = config_served_lengths(config, None)["transformers"]
    assert check_training(cfg, world_size=1, addressable=addressable) == []
    longest = max(s.length for s in cfg.curriculum.stages)
    spans = [s.span for s in cfg.curriculum.stages if s.span is not None]
    if spans:  # PoSE: short rows whose position ids span the extended length, up to a quarter past it
        assert addressable <= max(spans) <= addressable * 5 // 4, "PoSE recipes span their extended length"
        assert longest < addressable
    elif recipe in TRAINS_SHORT:
        assert longest < addressable, f"{recipe} trains below its extended length: {TRAINS_SHORT[recipe]}"
    else:
        assert longest == addressable, "recipes train up to their extended length"
    adapter = build_adapter(cfg.adapter)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attention_for(config, "sdpa"))
        assert adapter.check(model) == []
    assert adapter.check_steps(sum(s.steps for s in cfg.curriculum.stages)) == []
