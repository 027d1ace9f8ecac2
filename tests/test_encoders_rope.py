"""Encoders with RoPE (extend/encoders/rotary.py): ModernBERT (RoPE per attention type, bidirectional) and a
decoder-based embedder (Mistral, last-token pooling) extended through the position-method library: only
the global layers are rescaled, dynamic scaling leaves short inputs exactly as they were, last-token
pooling reads the appended EOS whatever the padding, a fine-tune step changes only the intended weights,
the export reloads in stock transformers with the method, and one small end-to-end run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, GPT2Config, MistralConfig, MistralModel, ModernBertConfig, ModernBertModel

from extend.config import ConfigError, EncoderConfig, EncoderRootConfig, RopeConfig
from extend.encoders.encode import Reader, embed
from extend.encoders.export import save_encoder
from extend.encoders.extension import plan_extension
from extend.encoders.positions import load_encoder
from extend.encoders.run import check_encoder, model_path, run_encoder
from extend.encoders.tasks import passkey, special_tail
from extend.encoders.train import fine_tune
from extend.models.tokenizer import load_tokenizer

ORIGINAL = 64
MODERNBERT = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=ORIGINAL, local_attention=16, global_attn_every_n_layers=3,
                  vocab_size=30522, pad_token_id=0, bos_token_id=101, eos_token_id=102, cls_token_id=101,
                  sep_token_id=102, embedding_dropout=0.0, attention_dropout=0.0, mlp_dropout=0.0,
                  initializer_range=0.5)  # peaked attention, so that positions visibly matter in a random model
MISTRAL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=64, max_position_embeddings=ORIGINAL, vocab_size=4096, pad_token_id=0,
               bos_token_id=1, eos_token_id=2, sliding_window=None)


@pytest.fixture(scope="module")
def modernbert_dir(tmp_path_factory) -> str:
    """A tiny random ModernBERT with the all-MiniLM-L6-v2 (BERT WordPiece) tokenizer, saved like a checkpoint."""
    folder = tmp_path_factory.mktemp("modernbert")
    torch.manual_seed(0)
    ModernBertModel(ModernBertConfig(**MODERNBERT)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(model_path("all-minilm-l6-v2")).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory) -> str:
    """A tiny random Mistral (a decoder-based embedder's shape) with the built-in byte-level tokenizer."""
    folder = tmp_path_factory.mktemp("mistral")
    torch.manual_seed(0)
    MistralModel(MistralConfig(**MISTRAL)).save_pretrained(folder)
    load_tokenizer("tiny").save_pretrained(folder)
    return str(folder)


def extended(folder: str, rope: RopeConfig, target: int = ORIGINAL * 4):
    base = load_encoder(folder)
    extension = plan_extension(EncoderConfig(target_length=target), rope, base.config)
    return base, extension, extension.build(base, folder, "sdpa")


def test_modernbert_rescales_only_its_global_layers(modernbert_dir):
    base, extension, model = extended(modernbert_dir, RopeConfig(type="yarn"))
    assert (extension.variant, extension.factor, extension.rope.attention_type) == ("yarn", 4.0, "full_attention")
    expected, attention = extension.rope.inv_freq()
    torch.testing.assert_close(model.rotary_emb.full_attention_inv_freq, expected, rtol=1e-6, atol=0)
    assert model.rotary_emb.full_attention_attention_scaling == pytest.approx(attention)
    torch.testing.assert_close(model.rotary_emb.sliding_attention_inv_freq, base.rotary_emb.sliding_attention_inv_freq,
                               rtol=0, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), base.state_dict().values()))
    assert model.config.rope_parameters["full_attention"]["original_max_position_embeddings"] == ORIGINAL


def test_dynamic_scaling_leaves_inputs_up_to_the_original_length_unchanged(modernbert_dir):
    """Dynamic NTK changes the base only past L: at <= L the extended encoder is the original one."""
    base, _, model = extended(modernbert_dir, RopeConfig(type="dynamic"))
    tokenizer = AutoTokenizer.from_pretrained(modernbert_dir)
    short = passkey(tokenizer, ORIGINAL, 3, seed=2).docs + passkey(tokenizer, 40, 2, seed=3).docs
    torch.testing.assert_close(embed(model, short, Reader(ORIGINAL * 4), 0), embed(base, short, Reader(ORIGINAL * 4), 0),
                               atol=1e-6, rtol=0)
    long = passkey(tokenizer, ORIGINAL * 3, 2, seed=4).docs
    assert (embed(model, long, Reader(ORIGINAL * 4), 0) - embed(base, long, Reader(ORIGINAL * 4), 0)).abs().max() > 1e-2


def test_last_token_pooling_reads_the_appended_eos_whatever_the_padding(mistral_dir):
    tokenizer = AutoTokenizer.from_pretrained(mistral_dir)
    _, _, model = extended(mistral_dir, RopeConfig(type="ntk"))
    reader = Reader(ORIGINAL * 4, tail=special_tail(tokenizer), eos_id=tokenizer.eos_token_id)
    rows = [passkey(tokenizer, n, 1, seed=n).docs[0] for n in (50, 130, 256, 300)]
    together = embed(model, rows, reader, tokenizer.pad_token_id, pooling="last", batch_size=4)
    alone = torch.cat([embed(model, [r], reader, tokenizer.pad_token_id, pooling="last") for r in rows])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    cut = reader.prepare(rows[-1])  # 300 tokens: cut to 255, then the EOS
    assert len(cut) == ORIGINAL * 4 and cut[-1] == tokenizer.eos_token_id and cut[:-1] == rows[-1][:255]
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([cut])).last_hidden_state[0, -1]
    torch.testing.assert_close(alone[-1], torch.nn.functional.normalize(hidden, dim=-1), atol=1e-5, rtol=0)


def test_fine_tune_step_changes_only_the_trainable_parameters(modernbert_dir):
    tokenizer = AutoTokenizer.from_pretrained(modernbert_dir)
    _, _, model = extended(modernbert_dir, RopeConfig(type="yarn"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fine_tune(model, tokenizer, Reader(ORIGINAL * 4), steps=2, batch_size=3, lengths=[96, 256], learning_rate=1e-2,
              temperature=0.05, trainable=["layers.0.attn"], min_query_tokens=4, seed=1, pooling="mean")
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("layers.0.attn.") for k in changed)


FRESH_LOAD = """
import json, sys, torch
from transformers import AutoModel
folder, ids = sys.argv[1], json.loads(sys.argv[2])
model = AutoModel.from_pretrained(folder).eval()
with torch.no_grad():
    hidden = model(input_ids=torch.tensor([ids])).last_hidden_state
assert "extend" not in sys.modules
print(json.dumps({"rope": model.config.rope_parameters, "vec": torch.nn.functional.normalize(hidden[0, -1], dim=-1).tolist()}))
"""


@pytest.mark.slow
def test_export_reloads_in_stock_transformers_with_the_method(tmp_path, mistral_dir):
    tokenizer = AutoTokenizer.from_pretrained(mistral_dir)
    _, extension, model = extended(mistral_dir, RopeConfig(type="yarn"))
    enc = EncoderConfig(target_length=ORIGINAL * 4, pooling="last", append_eos=True)
    folder = save_encoder(model, tokenizer, tmp_path / "final", enc, extension.note())
    reader = Reader(ORIGINAL * 4, tail=0, eos_id=tokenizer.eos_token_id)
    ids = reader.prepare(passkey(tokenizer, ORIGINAL * 4, 1, seed=3).docs[0])
    expected = embed(model, [ids], Reader(ORIGINAL * 4, tail=0), tokenizer.pad_token_id, pooling="last")[0]
    out = subprocess.run([sys.executable, "-c", FRESH_LOAD, str(folder), json.dumps(ids)], capture_output=True,
                         text=True, check=True, cwd=tmp_path)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["rope"]["rope_type"] == "yarn" and got["rope"]["factor"] == 4.0
    torch.testing.assert_close(torch.tensor(got["vec"]), expected, atol=1e-5, rtol=0)
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_lasttoken"] is True and pooling["pooling_mode_mean_tokens"] is False
    note = json.loads((folder / "extend_encoder.json").read_text())
    assert note["method"].startswith("RoPE yarn") and note["append_eos"] is True and note["target_length"] == 256


@pytest.mark.slow
def test_small_end_to_end_run_on_a_tiny_modernbert(tmp_path, modernbert_dir):
    cfg = EncoderRootConfig(run_name="modernbert_smoke", output_dir=str(tmp_path / "run"))
    cfg.rope = RopeConfig(type="yarn")
    cfg.encoder = EncoderConfig(model=modernbert_dir, target_length=ORIGINAL * 4)
    cfg.encoder.eval.lengths, cfg.encoder.eval.candidates = [ORIGINAL, ORIGINAL * 4], 4
    cfg.encoder.train.steps, cfg.encoder.train.batch_size = 2, 2
    cfg.encoder.train.lengths, cfg.encoder.train.trainable = [ORIGINAL, ORIGINAL * 4], ["layers"]
    data = run_encoder(cfg)
    out = Path(cfg.output_dir)
    assert set(data["results"]) == {"original", "yarn", "fine-tuned"} and data["factor"] == 4
    assert data["variants"]["original"]["read_length"] == ORIGINAL
    assert "full_attention layers" in data["variants"]["yarn"]["description"]
    exported = json.loads((out / "final" / "config.json").read_text())
    assert exported["rope_parameters"]["full_attention"]["rope_type"] == "yarn"
    assert exported["rope_parameters"]["sliding_attention"]["rope_type"] == "default"
    assert json.loads((out / "final" / "tokenizer_config.json").read_text())["model_max_length"] == ORIGINAL * 4
    assert "RoPE yarn" in (out / "report.md").read_text()


def test_bad_input_is_one_clear_error_before_any_weights(tmp_path, modernbert_dir):
    modernbert, bert = ModernBertConfig(**MODERNBERT), BertConfig(max_position_embeddings=512)
    cases = [
        (EncoderConfig(target_length=256), RopeConfig(), modernbert, "rope.type is none, but modernbert encoders"),
        (EncoderConfig(target_length=64), RopeConfig(type="yarn"), modernbert,
         "encoder.target_length: 64 must be larger than the model's original length 64"),
        (EncoderConfig(target_length=256), RopeConfig(type="yarn", factor=2), modernbert,
         "rope.factor=2 disagrees with encoder.target_length=256"),
        (EncoderConfig(target_length=2048), RopeConfig(type="yarn"), bert, "rope.type=yarn: bert encoders have a learned"),
        (EncoderConfig(target_length=2048), RopeConfig(), GPT2Config(), "supported: bert, roberta, xlm-roberta"),
    ]
    for enc, rope, config, message in cases:
        problems = check_encoder(enc, config, rope)
        assert len(problems) == 1 and message in problems[0], problems
    enc = EncoderConfig(target_length=256)
    enc.train.steps, enc.train.trainable = 1, ["position_embeddings"]
    enc.eval.lengths = enc.train.lengths = [64, 256]
    assert check_encoder(enc, modernbert, RopeConfig(type="yarn")) == [
        "encoder.train.trainable: ['position_embeddings'] matches no parameter of modernbert; use parts of names "
        "such as embeddings, final_norm, layers"]
    cfg = EncoderRootConfig(output_dir=str(tmp_path / "never"))
    cfg.rope = RopeConfig(type="yarn")
    cfg.encoder = EncoderConfig(model=modernbert_dir, target_length=256, append_eos=True)
    cfg.encoder.eval.lengths = [64, 256]
    with pytest.raises(ConfigError, match="encoder.append_eos: the tokenizer of .* has no EOS token"):
        run_encoder(cfg)
    assert not (tmp_path / "never").exists()
