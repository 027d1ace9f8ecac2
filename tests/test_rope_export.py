"""The exported config makes stock transformers rebuild exactly the method, at the right length."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from extend.config import ModelConfig, RopeConfig
from extend.models import build_random, load_base_config, save_extended
from extend.rope import METHODS, apply_rope, config_served_lengths, resolve_rope, served_lengths
from extend.rope.apply import PROVENANCE_KEY

from conftest import FAMILY_PRESETS, METHOD_SETTINGS


def rotary_of(model):
    return model.model.rotary_emb


@pytest.mark.parametrize("method", sorted(METHOD_SETTINGS))
@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_model_built_from_export_uses_the_method(method, preset):
    base = load_base_config(ModelConfig(name_or_path=preset))
    resolved = resolve_rope(RopeConfig(type=method, **METHOD_SETTINGS[method]), base)
    model = build_random(apply_rope(base, resolved))
    rotary = rotary_of(model)
    if METHODS[method].inference_only:
        # LM-Infinite, SelfExtend: the model's own rotation is the identity; attention rotates with the
        # method's frequencies (tests/test_lm_infinite.py, tests/test_self_extend.py)
        assert not rotary.inv_freq.any() and rotary.attention_scaling == 1.0
        return
    x = torch.zeros(1, 1, 16)
    # Short and long inputs: dynamic and longrope switch frequencies beyond the original length.
    for seq_len in (resolved.original_length, 4 * resolved.original_length):
        rotary(x, torch.arange(seq_len)[None])  # dynamic and longrope switch frequencies beyond L
        inv_freq, attention = resolved.inv_freq(seq_len=seq_len)
        # transformers forms b^(-2i/d) in float32 (about 1 ulp from ours, which is rounded from float64).
        assert torch.allclose(rotary.inv_freq, inv_freq, rtol=1e-6, atol=1e-25), (method, seq_len)
        assert rotary.attention_scaling == pytest.approx(attention, rel=1e-9), (method, seq_len)


@pytest.mark.parametrize("method", sorted(METHOD_SETTINGS))
def test_every_reader_arrives_at_the_extended_length(method):
    base = load_base_config(ModelConfig(name_or_path="tiny-llama"))
    resolved = resolve_rope(RopeConfig(type=method, **METHOD_SETTINGS[method]), base)
    config = apply_rope(base, resolved)
    lengths = config_served_lengths(config, resolved.extended_length)
    assert lengths == {"transformers": 256, "tokenizer": 256, "vllm": 256}
    assert getattr(config, PROVENANCE_KEY)["type"] == method
    assert base.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}  # the base is untouched


def test_served_lengths_follow_vllm_rules():
    """Golden cases of the trap the export avoids: vLLM multiplies by factor after capping."""
    linear_wrong = {"max_position_embeddings": 16384, "rope_parameters": {"rope_type": "linear", "factor": 4.0}}
    assert served_lengths(linear_wrong, None)["vllm"] == 65536
    assert served_lengths(linear_wrong, 4096)["vllm"] == 16384  # the tokenizer caps before the factor
    yarn = {"max_position_embeddings": 9999, "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}}
    assert served_lengths(yarn, None)["vllm"] == 16384
    llama3 = {"max_position_embeddings": 131072, "rope_parameters": {"rope_type": "llama3", "factor": 8.0}}
    assert served_lengths(llama3, 131072)["vllm"] == 131072
    longrope_top = {"max_position_embeddings": 131072, "original_max_position_embeddings": 4096, "rope_parameters": {"rope_type": "longrope"}}
    assert served_lengths(longrope_top, None)["vllm"] == 4096
    command_r = {"max_position_embeddings": 8192, "model_max_length": 131072, "rope_parameters": {"rope_type": "default"}}
    assert served_lengths(command_r, None)["vllm"] == 131072


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<eos>": 1, **{str(i): i + 2 for i in range(10)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", model_max_length=64)


def test_save_extended_writes_config_and_tokenizer_length(tmp_path):
    base = load_base_config(ModelConfig(name_or_path="tiny-llama"))
    resolved = resolve_rope(RopeConfig(type="linear", factor=4), base)
    model = build_random(apply_rope(base, resolved))
    save_extended(model, word_tokenizer(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "linear"
    assert config["max_position_embeddings"] == 64 and config["rope_parameters"]["factor"] == 4.0
    assert AutoTokenizer.from_pretrained(tmp_path).model_max_length == 256
    assert served_lengths(config, 256) == {"transformers": 256, "tokenizer": 256, "vllm": 256}
    assert list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob("*.bin"))


def test_truncated_zero_band_is_written_as_a_finite_factor():
    base = load_base_config(ModelConfig(name_or_path="tiny-llama"))
    resolved = resolve_rope(RopeConfig(type="truncated", factor=4, truncation_length=8.0), base)
    rope = apply_rope(base, resolved).rope_parameters
    assert rope["rope_type"] == "longrope" and rope["short_factor"] == rope["long_factor"]
    assert max(rope["short_factor"]) == 1e30 and rope["attention_factor"] == 1.0
    assert json.loads(json.dumps(rope)) == rope  # plain JSON, no inf/nan


def test_an_extended_checkpoint_can_be_extended_again_from_its_original_base():
    """YaRN's 128k run continues the 64k checkpoint with a larger factor over the same original length."""
    base = load_base_config(ModelConfig(name_or_path="tiny-llama"))
    first = apply_rope(base, resolve_rope(RopeConfig(type="yarn", factor=2), base))
    second = resolve_rope(RopeConfig(type="yarn", factor=8), first)
    assert second.original_length == 64 and second.extended_length == 512 and second.base == 10000.0
    config = apply_rope(first, second)
    assert config.rope_parameters["factor"] == 8.0 and config.max_position_embeddings == 512
    assert resolve_rope(RopeConfig(type="none"), first) is None  # rope=none keeps the checkpoint as it is
