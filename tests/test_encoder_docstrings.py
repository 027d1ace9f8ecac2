"""The stdlib-docstrings retrieval set (extend/encoders/docstrings.py): prose extraction, a seeded draw,
held-out files only, one relevant document per query, the written files read back as a local set, and
bad input."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from extend.config import EncoderConfig, EncoderEvalConfig
from extend.corpus import python_version, stdlib_heldout_files, stdlib_root, stdlib_training_files
from extend.encoders.docstrings import Pair, all_pairs, docstring_set, main, split_docstring, unambiguous, write_set
from extend.encoders.eval import build_sets
from extend.encoders.run import check_encoder, model_path
from extend.encoders.tasks import local_set

DOCSTRING = """Return the frobnicated value of x.

Frobnication doubles every digit of the value, from the lowest to the highest. It never fails for
integers and raises TypeError otherwise. The result is an integer.

Usage::

    frobnicate(12)  # an indented example is code, not prose

>>> frobnicate(3)
6

:param x: the value
Args:
    x: the value again, as a table
"""


@pytest.fixture(scope="module")
def pairs():
    return all_pairs()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(model_path("all-minilm-l6-v2"))


def test_query_is_the_summary_and_the_document_only_the_prose():
    query, doc = split_docstring(DOCSTRING)
    assert query == "Return the frobnicated value of x."
    assert doc == ("Frobnication doubles every digit of the value, from the lowest to the highest. It never fails "
                   "for integers and raises TypeError otherwise. The result is an integer.")
    assert split_docstring(DOCSTRING.replace(" The result is an integer.", "")) is None, \
        "a document under MIN_WORDS words does not qualify"
    repeated = DOCSTRING.replace("The result is an integer.", "Return the frobnicated value of x.")
    assert split_docstring(repeated) is None, "a document that repeats the summary does not qualify"
    assert split_docstring("One line only.") is None


def test_identical_pairs_count_once_and_a_shared_query_or_document_is_dropped():
    found = [Pair("a:1", "q1", "d1"), Pair("b:1", "q2", "d2"), Pair("a:9", "q1", "d1"), Pair("c:1", "q2", "d3"),
             Pair("d:1", "q4", "d4"), Pair("e:1", "q5", "d4"), Pair("f:1", "q6", "d6")]
    assert [p.id for p in unambiguous(found)] == ["a:1", "f:1"]


def test_every_query_has_one_document_which_does_not_repeat_it(pairs):
    assert len(pairs) >= 50
    assert len({p.id for p in pairs}) == len({p.query for p in pairs}) == len({p.doc for p in pairs}) == len(pairs)
    for p in pairs:
        assert " ".join(p.query.lower().split()) not in " ".join(p.doc.lower().split())
        assert ">>>" not in p.doc


def test_only_held_out_files_are_read(pairs):
    root = stdlib_root()
    heldout = {p.relative_to(root).as_posix() for p in stdlib_heldout_files()}
    training = {p.relative_to(root).as_posix() for p in stdlib_training_files()}
    sources = {p.id.split(":")[0] for p in pairs}
    assert sources <= heldout and not sources & training


def test_the_draw_is_seeded_and_every_document_stays_a_candidate(pairs):
    corpus, queries, qrels = docstring_set(10, seed=1)
    assert (corpus, queries, qrels) == docstring_set(10, seed=1)
    assert queries != docstring_set(10, seed=2)[1]
    assert len(corpus) == len(pairs) and len(queries) == 10
    assert qrels == [{"query_id": q["id"], "doc_id": q["id"]} for q in queries]
    assert len(docstring_set()[1]) == len(pairs)


def test_written_set_reads_back_as_a_local_set_and_the_model_reads_documents_whole(tmp_path, tokenizer, pairs):
    out = tmp_path / "set"
    assert write_set(out, 5, seed=3) == (5, len(pairs))
    data = local_set(tokenizer, str(out))
    queries = [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]
    ids = [p.id for p in pairs]
    assert data.name == "local:set" and len(data.docs) == len(pairs)
    assert data.relevant == [{ids.index(q["id"])} for q in queries]
    assert max(map(len, data.docs)) < 512
    built_in = build_sets(tokenizer, [], [], 2, 0, ["stdlib-docstrings"])[0]
    assert built_in.name == "local:stdlib-docstrings" and len(built_in.queries) == len(pairs)
    assert write_set(out, 6, seed=3) == (6, len(pairs)), "a previous set is replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"], "no temporary folder is left"


def test_bad_count_or_output_is_one_error_line(tmp_path, capsys, pairs):
    for count in (0, len(pairs) + 1):
        with pytest.raises(SystemExit) as exit_:
            main([str(tmp_path / "out"), "--count", str(count)])
        assert exit_.value.code == 2
        assert capsys.readouterr().err == (f"error: count {count}: must lie in [1, {len(pairs)}] (the held-out "
                                           f"docstrings of Python {python_version()} give "
                                           f"{len(pairs)} queries)\n")
    (tmp_path / "file").write_text("x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    for bad in ("file", "busy"):
        with pytest.raises(SystemExit):
            main([str(tmp_path / bad)])
        err = capsys.readouterr().err
        assert err.startswith(f"error: {tmp_path / bad}: exists and is not a folder") and err.count("\n") == 1
    assert (tmp_path / "busy" / "notes.txt").exists() and not (tmp_path / "out").exists()


def test_run_accepts_the_built_in_name_and_names_it_for_an_unknown_folder():
    from transformers import BertConfig
    bert = BertConfig(max_position_embeddings=512)
    assert check_encoder(EncoderConfig(eval=EncoderEvalConfig(local_sets=["stdlib-docstrings"])), bert) == []
    problems = check_encoder(EncoderConfig(eval=EncoderEvalConfig(local_sets=["no-such-set"])), bert)
    assert problems == ["encoder.eval.local_sets: no-such-set is neither a folder (corpus.jsonl, queries.jsonl, "
                        "qrels.jsonl) nor a built-in set (stdlib-docstrings)"]
