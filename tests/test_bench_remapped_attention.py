"""Smoke test of bench/studies/remapped_attention.py on the tiny Llama's shape at two short lengths."""

import importlib
import json


def test_remapped_attention_timings_are_written(tmp_path):
    bench = importlib.import_module("bench.studies.remapped_attention")
    out = tmp_path / "cost.json"
    record = bench.main(["--model", "tiny-llama", "--lengths", "32", "128", "--out", str(out)])
    assert json.loads(out.read_text()) == record
    assert (record["heads"], record["kv_heads"], record["head_dim"]) == (4, 2, 16)
    assert [row["length"] for row in record["seconds"]] == [32, 128]
    assert all(row[key] > 0 for row in record["seconds"] for key in ("lm_infinite", "self_extend", "sdpa"))
