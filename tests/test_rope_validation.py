"""Bad input gets one clear error naming the key and the fix, before any model is built."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hydra.errors import ConfigCompositionException
from transformers import LlamaConfig

from extend.config import ConfigError, ModelConfig, RopeConfig
from extend.models import load_base_config
from extend.rope import resolve_rope


@pytest.fixture
def base():
    return load_base_config(ModelConfig(name_or_path="tiny-llama"))


@pytest.mark.parametrize(
    "rope,message",
    [
        (RopeConfig(type="rotary_magic"), "rope.type='rotary_magic' is not a known position method; choose one of: none, linear"),
        (RopeConfig(type="linear", factor=0.5), "rope.factor=0.5 must be >= 1"),
        (RopeConfig(type="truncated", factor=4, truncation_length=0.0), "rope.truncation_length=0.0 must be > 0"),
        (RopeConfig(type="truncated", factor=4, truncation_length=-3.0), "rope.truncation_length=-3.0 must be > 0"),
        (RopeConfig(type="truncated", factor=4), "rope.truncation_length is required for truncated"),
        (RopeConfig(type="entropy_abf", factor=4, rope_theta=5e5, exempt_layers=2), "rope.exempt_layers=2 must be in [0, 2)"),
        (RopeConfig(type="entropy_abf", factor=4, rope_theta=5e5), "rope.exempt_layers=2 must be in [0, 2)"),  # the default
        (RopeConfig(type="abf", factor=4), "rope.rope_theta is required for abf"),
        (RopeConfig(type="linear", factor=4, beta_fast=16.0), "rope.beta_fast is not a parameter of linear (read by: yarn)"),
        (RopeConfig(type="yarn", factor=4, beta_fast=1.0, beta_slow=2.0), "rope.beta_fast must be larger than rope.beta_slow"),
        (RopeConfig(type="longrope", factor=4, short_factor=[1.0] * 3, long_factor=[1.0] * 8), "rope.short_factor has 3 values; this model needs rotary_dim / 2 = 8"),
        (RopeConfig(type="linear", factor=1.01), "is not a whole number of positions"),
        (RopeConfig(type="none", factor=4), "rope.type is none but"),
    ],
)
def test_bad_rope_settings(base, rope, message):
    with pytest.raises(ConfigError) as err:
        resolve_rope(rope, base)
    assert message in str(err.value)


def test_every_problem_is_reported_at_once(base):
    with pytest.raises(ConfigError) as err:
        resolve_rope(RopeConfig(type="truncated", factor=0.5, beta_fast=3.0), base)
    assert len(err.value.problems) == 3  # factor, beta_fast not read, truncation_length missing


def test_missing_original_length():
    # A model config with no max_position_embeddings at all (some architectures name it otherwise).
    config = SimpleNamespace(
        hidden_size=64, num_attention_heads=4, num_hidden_layers=2, rope_parameters={"rope_type": "default", "rope_theta": 1e4}
    )
    with pytest.raises(ConfigError, match="rope.original_max_position_embeddings is missing"):
        resolve_rope(RopeConfig(type="linear", factor=4), config)
    resolved = resolve_rope(RopeConfig(type="linear", factor=4, original_max_position_embeddings=512), config)
    assert resolved.extended_length == 2048


def test_odd_rotary_dim():
    # head_dim 16 with partial_rotary_factor 9/16 gives 9 rotary dims, which transformers lets through.
    config = LlamaConfig(
        hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64, vocab_size=32,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 9 / 16},
    )
    with pytest.raises(ConfigError, match="rotary dimension is 9"):
        resolve_rope(RopeConfig(type="linear", factor=4), config)


def _per_type_config():
    from transformers import ModernBertConfig

    return ModernBertConfig(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, intermediate_size=64)


@pytest.mark.parametrize(
    "rope,message",
    [
        (RopeConfig(type="yarn", factor=2, attention_type="global"),
         "rope.attention_type='global': this model keeps RoPE parameters per attention type (full_attention, "
         "sliding_attention); set rope.attention_type to one of them"),
        (RopeConfig(type="entropy_abf", factor=2, rope_theta=1e6),
         "rope.type=entropy_abf scales the queries of every layer past rope.exempt_layers, not one attention type"),
        (RopeConfig(type="none", attention_type="full_attention"), "rope.type is none but ['attention_type'] is set"),
    ],
)
def test_bad_attention_type_on_a_per_type_model(rope, message):
    with pytest.raises(ConfigError) as err:
        resolve_rope(rope, _per_type_config())
    assert len(err.value.problems) == 1 and message in err.value.problems[0]


def test_attention_type_on_a_model_with_one_set_is_refused(base):
    with pytest.raises(ConfigError, match="keeps one set of RoPE parameters for every layer; remove rope.attention_type"):
        resolve_rope(RopeConfig(type="yarn", factor=2, attention_type="full_attention"), base)


def test_already_scaled_base_is_refused():
    config = LlamaConfig(
        hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64, vocab_size=32,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
    )
    with pytest.raises(ConfigError, match="already uses rope_type='linear'"):
        resolve_rope(RopeConfig(type="yarn", factor=4), config)


def test_integer_factor_is_accepted_as_float(base, compose_config):
    cfg = compose_config("rope=linear", "rope.factor=8")
    assert isinstance(cfg.rope.factor, float) and cfg.rope.factor == 8.0
    assert resolve_rope(cfg.rope, base).params.factor == 8.0
    assert resolve_rope({"type": "linear", "factor": 2}, base).extended_length == 128


def test_unknown_recipe_key_fails_at_composition(compose_config):
    with pytest.raises(ConfigCompositionException) as err:
        compose_config("rope.facter=2")
    assert "rope.facter" in str(err.value)


def test_unknown_key_in_a_recipe_file_names_file_and_key(compose_config, tmp_path):
    (tmp_path / "recipe").mkdir()
    (tmp_path / "recipe" / "typo.yaml").write_text("# @package _global_\nrope:\n  type: linear\n  factr: 4\n")
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(f"hydra.searchpath=[file://{tmp_path}]", "recipe=typo")
    text = str(err.value) + str(err.value.__cause__)
    assert "factr" in text and "recipe/typo" in text


def test_unknown_group_option_lists_the_choices(compose_config):
    with pytest.raises(Exception) as err:
        compose_config("rope=rotary_magic")
    assert "Available options in 'rope'" in str(err.value) and "yarn" in str(err.value)


def test_missing_model_folder():
    with pytest.raises(ConfigError, match="does not exist"):
        load_base_config(ModelConfig(name_or_path="./no/such/model"))
