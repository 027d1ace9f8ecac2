"""Scorers on hand-made predictions, and the eval.json schema validator."""

import pytest

from extend.eval.schema import validate
from extend.eval.scoring import exact, first_number, presence


@pytest.mark.parametrize("prediction, correct, partial", [
    (" 12345", True, 1.0),
    ("12345", True, 1.0),
    (" 12345. Remember it.", True, 1.0),  # extra tokens after the answer
    (" 12345 is the pass key", True, 1.0),
    (" 123456", False, 1.0),  # runs on: not the answer
    (" 1234", False, 0.8),  # partial answer
    (" 12845", False, 0.4),
    (" The pass key is 12345", False, 0.0),
    ("", False, 0.0),
])
def test_exact(prediction, correct, partial):
    assert exact(prediction, " 12345") == (correct, pytest.approx(partial))


def test_exact_answers_ending_in_punctuation_may_be_followed_by_anything():
    assert exact(' "ab12"\nnext', ' "ab12"')[0]
    assert exact(" <4711>x", " <4711>")[0]
    assert not exact(" <4711", " <4711>")[0]


def test_first_number_and_presence():
    assert first_number(" The <REGISTER_CONTENT> is <25318>.", "25318") == (True, 1.0)
    assert first_number(" line 7 holds 25318", "25318")[0] is False
    assert first_number(" no digits", "25318") == (False, 0.0)
    assert first_number(" 2531", "25318") == (False, pytest.approx(0.8))
    assert presence(" It was founded in 1887 by settlers.", "1887")[0]
    assert presence(" the ROYAL navy", "Royal Navy")[0]
    assert not presence(" 1888", "1887")[0]


def test_empty_answers_are_an_error_not_a_free_point():
    with pytest.raises(ValueError):
        exact("anything", "  ")
    with pytest.raises(ValueError):
        first_number("1", "no number")


def _cell(**kw):
    return {"value": 0.5, "length": 64, "n": 2, **kw}


def _valid():
    return {
        "schema_version": 1, "created": "2026-01-01T00:00:00+00:00", "model": "m", "tokenizer": "t", "config": {},
        "conditions": [{"name": "m", "model": "m", "rope": None, "rope_parameters": {}, "served_length": 64}],
        "complete": True,
        "results": {"m": {"passkey": {"metric": "accuracy", "by_length": {"64": _cell()},
                                      "by_length_depth": {"64": {"0.5": _cell()}}}}},
    }


def test_schema_accepts_a_conforming_document_and_names_each_departure():
    assert validate(_valid()) == []
    broken = _valid()
    del broken["tokenizer"]
    broken["results"]["m"]["passkey"]["by_length"]["64"]["value"] = "50%"
    broken["results"]["m"]["passkey"]["by_length"]["64"]["n"] = True
    broken["conditions"][0]["colour"] = "red"
    problems = validate(broken)
    assert "eval.json: missing key 'tokenizer'" in problems
    assert any("by_length.64.value" in p for p in problems)
    assert any("by_length.64.n: expected" in p and "bool" in p for p in problems)
    assert any("unexpected key 'colour'" in p for p in problems)
    assert len(problems) == 4


def test_readme_documents_every_schema_key():
    from extend.config import REPO_ROOT
    from extend.eval.schema import CELL, CONDITION, EVAL_JSON, ITEM, TASK_RESULT

    section = (REPO_ROOT / "docs/evaluation.md").read_text().split("## eval.json")[1].split("\n## ")[0]
    for spec in (EVAL_JSON, CONDITION, TASK_RESULT, CELL, ITEM):
        for key in spec:
            assert f"`{key}`" in section, key
