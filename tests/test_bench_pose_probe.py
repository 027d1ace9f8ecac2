"""bench/studies/pose_probe.py on a random tiny Llama: the cached greedy decoding at offset positions equals
recomputing the whole sequence at those positions, cells are written as asked, bad cells are refused."""

import importlib
import json

import pytest
import torch

from extend.config import ModelConfig
from extend.models.loading import build_random, load_base_config
from extend.models.tokenizer import load_tokenizer

probe = importlib.import_module("bench.studies.pose_probe")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tokenizer = load_tokenizer("tiny")
    config = load_base_config(ModelConfig(name_or_path="tiny-llama"), tokenizer=tokenizer)
    model = build_random(config, seed=0)
    with torch.no_grad():  # sharper attention and larger logits: greedy tokens then depend on every position
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
        model.lm_head.weight.mul_(50)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@torch.no_grad()
def recomputed(model, ids, offset, steps):
    ids = list(ids)
    for _ in range(steps):
        positions = torch.arange(len(ids))[None] + offset
        ids.append(int(model(input_ids=torch.tensor([ids]), position_ids=positions, use_cache=False).logits[0, -1].argmax()))
    return ids[-steps:]


@pytest.mark.parametrize("offset", [0, 37])
def test_cached_greedy_equals_recomputing_at_the_offset(checkpoint, offset):
    from extend.models import load_pretrained

    model = load_pretrained(checkpoint).eval()
    ids = list(range(5, 40))
    tokens = probe.greedy(model, ids, offset, 12)
    assert tokens == recomputed(model, ids, offset, 12)
    assert len(set(tokens)) > 3  # not one token repeated, which any position would give


def test_offset_changes_what_the_model_reads(checkpoint):
    from extend.models import load_pretrained

    model = load_pretrained(checkpoint).eval()
    ids = list(range(5, 40))
    logits = [model(input_ids=torch.tensor([ids]), position_ids=torch.arange(len(ids))[None] + o).logits for o in (0, 50)]
    assert not torch.allclose(*logits)


def test_cells_are_written(checkpoint, tmp_path):
    out = tmp_path / "probe.json"
    record = probe.main([str(checkpoint), "--cells", "64@0", "64@30", "--items-per-depth", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == record
    assert [(c["length"], c["offset"]) for c in record["cells"]] == [(64, 0), (64, 30)]
    for cell in record["cells"]:
        assert len(cell["items"]) == 5  # one per depth
        assert cell["last_position"] == max(i["tokens"] for i in cell["items"]) - 1 + cell["offset"]
        assert cell["accuracy"] == sum(i["correct"] for i in cell["items"]) / 5


def test_attention_factor_is_applied(checkpoint):
    record = probe.main([str(checkpoint), "--cells", "64@0", "--items-per-depth", "1", "--attention-factor", "1.5"])
    assert record["attention_factor"] == 1.5 and record["checkpoint_attention_factor"] == 1.0


@pytest.mark.parametrize("argv, message", [
    (["--cells", "1024"], "is not LENGTH@OFFSET"),
    (["--items-per-depth", "0"], "--items-per-depth must be at least 1"),
])
def test_bad_arguments_are_refused_in_one_line(checkpoint, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        probe.main([str(checkpoint), *argv])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_a_folder_without_a_checkpoint_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        probe.main([str(tmp_path)])
    assert "has no config.json" in capsys.readouterr().err
