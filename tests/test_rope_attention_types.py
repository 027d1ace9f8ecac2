"""Models that keep RoPE parameters per attention type (ModernBERT, Gemma 3): a method rescales one type
(full_attention by default) and leaves the others' parameters untouched; stock transformers builds the
rescaled frequencies the library computes, and a re-extension starts from the recorded base."""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma3TextConfig, Gemma3TextModel, ModernBertConfig, ModernBertModel

from extend.config import RopeConfig
from extend.rope import apply_rope, resolve_rope
from extend.rope.apply import PROVENANCE_KEY, config_served_lengths

MODERNBERT = dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, intermediate_size=64, vocab_size=128,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
GEMMA3 = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              intermediate_size=64, vocab_size=128, sliding_window_pattern=2)

METHODS = {"linear": {}, "ntk": {}, "yarn": {}, "llama3": {}, "power": {"power": 0.25}, "abf": {"rope_theta": 4e6}}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("family", ["modernbert", "gemma3"])
def test_only_the_full_attention_type_is_rescaled(family, method):
    config_class, model_class, kwargs = {"modernbert": (ModernBertConfig, ModernBertModel, MODERNBERT),
                                         "gemma3": (Gemma3TextConfig, Gemma3TextModel, GEMMA3)}[family]
    base = config_class(**kwargs)
    sliding_before = dict(base.rope_parameters["sliding_attention"])
    resolved = resolve_rope(RopeConfig(type=method, factor=4, **METHODS[method]), base)
    assert resolved.attention_type == "full_attention"
    assert resolved.base == base.rope_parameters["full_attention"]["rope_theta"]  # the global base, not the local one

    extended = apply_rope(base, resolved)
    assert extended.rope_parameters["sliding_attention"] == sliding_before
    assert base.rope_parameters["sliding_attention"] == sliding_before  # the input config is not modified
    rotary = model_class(extended).rotary_emb
    expected, attention = resolved.inv_freq()
    torch.testing.assert_close(rotary.full_attention_inv_freq, expected, rtol=1e-6, atol=0)
    assert rotary.full_attention_attention_scaling == pytest.approx(attention)
    untouched = model_class(base).rotary_emb
    torch.testing.assert_close(rotary.sliding_attention_inv_freq, untouched.sliding_attention_inv_freq, rtol=0, atol=0)
    assert getattr(extended, PROVENANCE_KEY)["attention_type"] == "full_attention"
    served = config_served_lengths(extended, resolved.extended_length)
    assert served["transformers"] == resolved.extended_length == 4 * base.max_position_embeddings


def test_a_chosen_attention_type_is_rescaled_instead():
    base = ModernBertConfig(**MODERNBERT)
    resolved = resolve_rope(RopeConfig(type="linear", factor=2, attention_type="sliding_attention"), base)
    extended = apply_rope(base, resolved)
    assert resolved.base == 10000.0
    assert extended.rope_parameters["sliding_attention"]["rope_type"] == "linear"
    assert extended.rope_parameters["full_attention"] == base.rope_parameters["full_attention"]


def test_extending_again_starts_from_the_recorded_global_base(tmp_path):
    base = ModernBertConfig(**MODERNBERT)
    once = apply_rope(base, resolve_rope(RopeConfig(type="abf", factor=2, rope_theta=1e6), base))
    ModernBertModel(once).save_pretrained(tmp_path)
    reloaded = ModernBertConfig.from_pretrained(tmp_path)
    again = resolve_rope(RopeConfig(type="yarn", factor=4), reloaded)
    assert again.base == 160000.0 and again.original_length == 8192
