"""Smoke test of bench/studies/data_prep.py at minimal size: every pipeline runs and reports sane numbers."""

import importlib


def test_bench_runs_at_minimal_size(request, capsys):
    bench = importlib.import_module("bench.studies.data_prep")
    cache = str(request.config.cache.mkdir("extend-cache"))
    results = bench.main(["--max-files", "12", "--length", "128", "--repeats", "1", "--cache-dir", cache])
    table = capsys.readouterr().out
    assert len(results) == 4 and all(name in table for name in results)
    base = results["baseline: datasets.map(tokenize) + group_texts"]
    ours = results["ours, pretrain packing (in memory)"]
    # Same corpus and tokenizer: ours has the same tokens plus one EOS per document.
    assert ours["tokens"] - base["tokens"] == 12
    assert ours["efficiency"] == 1.0
    assert results["ours, sft packing of docstring chats (in memory)"]["efficiency"] >= 0.9
    assert all(r["seconds"] > 0 for r in results.values())
