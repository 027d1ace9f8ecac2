"""Smoke tests of bench/studies/data_prep.py at minimal size (every pipeline runs and reports sane numbers) and of
the memory sampler of bench/studies/data_prep_scale.py."""

import importlib
import sys

import pytest


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


@pytest.mark.slow
def test_scale_study_samples_the_memory_of_a_process_and_its_children():
    """The sampler behind the scale study's peak-memory figures sees memory held in a child process."""
    scale = importlib.import_module("bench.studies.data_prep_scale")
    code = ("import multiprocessing as mp, time\n"
            "def hold():\n    b = bytearray(300 * 2**20); time.sleep(2)\n"
            "p = mp.get_context('fork').Process(target=hold); p.start(); p.join()\n")
    r = scale.measured([sys.executable, "-c", code], interval=0.1)
    assert r["returncode"] == 0
    assert 300 <= r["peak_pss_mb"] < 600 and 300 <= r["peak_rss_mb"] < 600
