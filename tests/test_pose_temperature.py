"""curriculum.pose_temperature=window: PoSE stages train at YaRN's temperature for the rows' real length, the
model's own temperature comes back afterwards, and the export (the config) keeps the span's."""

import math

import pytest
import torch

from extend.config import CurriculumConfig, DecoderConfig, ModelConfig, RopeConfig, StageConfig
from extend.models import set_attention_scaling
from extend.models.loading import build_random, load_base_config
from extend.models.rotary import rotary_modules
from extend.models.tokenizer import load_tokenizer
from extend.rope import apply_rope, resolve_rope
from extend.train import stage_attention_scaling


def config(temperature: str) -> DecoderConfig:
    cfg = DecoderConfig()
    cfg.rope = RopeConfig(type="yarn", factor=16.0)
    cfg.curriculum = CurriculumConfig(tokens_per_step=1024, pose_temperature=temperature, stages=[
        StageConfig(length=256, steps=1), StageConfig(length=256, span=2048, steps=1)])
    return cfg


def test_window_temperature_is_yarns_at_the_rows_length_in_pose_stages_only():
    window = config("window")
    assert stage_attention_scaling(window, 0, 128) is None  # plain positions: the model's own
    assert stage_attention_scaling(window, 1, 128) == pytest.approx(0.1 * math.log(2) + 1)
    assert stage_attention_scaling(window, 1, 512) == 1.0  # rows no longer than the original: no temperature
    assert stage_attention_scaling(config("span"), 1, 128) is None


def test_set_attention_scaling_scales_cos_and_sin_and_leaves_the_config():
    tokenizer = load_tokenizer("tiny")
    base = load_base_config(ModelConfig(name_or_path="tiny-llama"), tokenizer=tokenizer)
    extended = apply_rope(base, resolve_rope(RopeConfig(type="yarn", factor=16.0), base))
    model = build_random(extended, seed=0)
    rotary = model.model.rotary_emb
    own, saved = rotary.attention_scaling, dict(model.config.rope_parameters)
    assert own == pytest.approx(0.1 * math.log(16) + 1)
    x, positions = torch.zeros(1, 4, 8), torch.arange(4)[None]
    cos_own, sin_own = rotary(x, positions)
    set_attention_scaling(model, 1.07)
    cos, sin = rotary(x, positions)
    assert torch.allclose(cos * own, cos_own * 1.07) and torch.allclose(sin * own, sin_own * 1.07)
    assert model.config.rope_parameters == saved  # what an export would write
    set_attention_scaling(model, None)
    assert rotary.attention_scaling == pytest.approx(own) and torch.allclose(rotary(x, positions)[0], cos_own)


def test_a_pose_run_trains_at_the_window_temperature_and_exports_the_spans(tmp_path, monkeypatch):
    """Every training forward of the PoSE stage sees YaRN's temperature at 64 / 32 = 2; the export's config,
    reloaded, has the x8 temperature."""
    import extend.train as train_module
    from extend.data.prepare import prepare
    from extend.models import load_pretrained
    from training_fixtures import compose_typed

    overrides = ["rope=yarn", "rope.factor=8", "rope.original_max_position_embeddings=32",
                 "curriculum.stages=[{length: 64, span: 256, steps: 2}]", "curriculum.pose_temperature=window",
                 f"data.output_dir={tmp_path / 'data'}", f"output_dir={tmp_path / 'run'}", "train.checkpoint_every=0"]
    prepare(compose_typed(*overrides), log=lambda _: None)
    seen, forward = [], train_module.forward_loss

    def recording(run, inputs):
        seen.extend(m.attention_scaling for m in rotary_modules(run.model))
        return forward(run, inputs)

    monkeypatch.setattr(train_module, "forward_loss", recording)
    final = train_module.train(compose_typed(*overrides))
    assert seen and all(s == pytest.approx(0.1 * math.log(2) + 1) for s in seen)
    assert load_pretrained(final).model.rotary_emb.attention_scaling == pytest.approx(0.1 * math.log(8) + 1)
