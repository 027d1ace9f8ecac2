"""bench/studies/pose_probe.py on a random tiny Llama: the cached greedy decoding at shifted positions equals
recomputing the whole sequence at those positions, a gap moves only the question, an offset changes nothing
(rotary attention is relative), cells are written as asked, bad cells are refused."""

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
def recomputed(model, ids, positions, steps):
    ids, positions = list(ids), list(positions)
    for _ in range(steps):
        mask = torch.ones(1, len(ids), dtype=torch.long)  # one sequence across the gap (see probe.greedy)
        logits = model(input_ids=torch.tensor([ids]), position_ids=torch.tensor([positions]), attention_mask=mask,
                       use_cache=False).logits
        ids.append(int(logits[0, -1].argmax()))
        positions.append(positions[-1] + 1)
    return ids[-steps:]


@pytest.mark.parametrize("cell", ["35", "35@37", "35+200"])
def test_cached_greedy_equals_recomputing_at_the_cells_positions(checkpoint, cell):
    from extend.models import load_pretrained

    model = load_pretrained(checkpoint).eval()
    ids = list(range(5, 40))
    positions = probe.position_ids(len(ids), probe.parse_cell(cell), cut=30)
    tokens = probe.greedy(model, ids, positions, 12)
    assert tokens == recomputed(model, ids, positions, 12)
    assert len(set(tokens)) > 3  # not one token repeated, which any position would give


def test_a_gap_shifts_the_question_only():
    cell = probe.parse_cell("6+100")
    assert probe.position_ids(6, cell, cut=4) == [0, 1, 2, 3, 104, 105]
    assert probe.position_ids(6, probe.parse_cell("6@10"), cut=4) == [10, 11, 12, 13, 14, 15]


def test_the_question_starts_where_the_eval_prompt_has_it():
    tokenizer = load_tokenizer("tiny")
    from extend.tasks import synthetic

    item = synthetic.passkey(tokenizer, 200, 0.5, seed=3)
    ids = tokenizer(item.prompt)["input_ids"]
    cut = probe.question_start(tokenizer, item.prompt)
    assert tokenizer.decode(ids[cut:]).strip() == synthetic.PASSKEY_QUESTION
    assert ids[:cut] == tokenizer(item.prompt[: -len(synthetic.PASSKEY_QUESTION)].rstrip())["input_ids"]


def test_an_offset_changes_nothing_and_a_gap_does(checkpoint):
    """Rotary attention sees position differences only: an offset cell is the plain cell up to rounding,
    while a gap changes the distances the question reads at."""
    from extend.models import load_pretrained

    model = load_pretrained(checkpoint).eval()
    ids = list(range(5, 40))

    def logits(cell):
        positions = probe.position_ids(len(ids), probe.parse_cell(cell), cut=30)
        mask = torch.ones(1, len(ids), dtype=torch.long)
        return model(input_ids=torch.tensor([ids]), position_ids=torch.tensor([positions]), attention_mask=mask).logits[0, -1]

    plain = logits("35")
    assert torch.allclose(logits("35@50"), plain, rtol=1e-3, atol=1e-2)
    assert not torch.allclose(logits("35+50"), plain, rtol=1e-3, atol=1e-2)


def test_cells_are_written(checkpoint, tmp_path):
    out = tmp_path / "probe.json"
    record = probe.main([str(checkpoint), "--cells", "64", "64@30", "64+40", "--items-per-depth", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == record
    assert [(c["cell"], c["length"], c["offset"], c["gap"]) for c in record["cells"]] == [
        ("64", 64, 0, 0), ("64@30", 64, 30, 0), ("64+40", 64, 0, 40)]
    for cell in record["cells"]:
        assert len(cell["items"]) == 5  # one per depth
        assert cell["last_position"] == max(i["tokens"] for i in cell["items"]) - 1 + cell["offset"] + cell["gap"]
        assert cell["accuracy"] == sum(i["correct"] for i in cell["items"]) / 5


def test_attention_factor_is_applied(checkpoint):
    record = probe.main([str(checkpoint), "--cells", "64@0", "--items-per-depth", "1", "--attention-factor", "1.5"])
    assert record["attention_factor"] == 1.5 and record["checkpoint_attention_factor"] == 1.0


@pytest.mark.parametrize("argv, message", [
    (["--cells", "1024@"], "is not LENGTH, LENGTH+GAP or LENGTH@OFFSET"),
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


def test_misses_count_the_first_digit_guesses():
    def item(answer, prediction):
        return {"answer": answer, "prediction": prediction, "correct": answer == prediction}

    records = [item("46568", "56568"), item("13687", "53687"), item("21369", "31369"), item("50133", "50333"),
               item("74646", "7464"), item("12345", "12345")]
    assert probe.misses(records) == {"total": 5, "first_digit_only": 3, "common_first_digit": "5",
                                     "common_first_digit_count": 2}
    assert probe.misses([item("12345", "12345")]) == {"total": 0, "first_digit_only": 0, "common_first_digit": None,
                                                     "common_first_digit_count": 0}


def test_cells_report_accuracy_by_depth(checkpoint):
    record = probe.main([str(checkpoint), "--cells", "64", "--items-per-depth", "2"])
    cell = record["cells"][0]
    assert list(cell["by_depth"]) == [str(d) for d in probe.DEPTHS]
    for depth, accuracy in cell["by_depth"].items():
        hits = [i["correct"] for i in cell["items"] if str(i["depth"]) == depth]
        assert len(hits) == 2 and accuracy == sum(hits) / 2
    assert cell["misses"]["total"] == sum(not i["correct"] for i in cell["items"])
