"""Smoke test of bench/studies/eval_smollm2.py at minimal size: a tiny random checkpoint instead of SmolLM2."""

import json

from bench.studies.eval_smollm2 import main
from extend.eval.schema import validate
from tests.eval_helpers import make_tokenizer, save_tiny_checkpoint


def test_bench_runs_every_method_and_writes_the_table(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "tiny", make_tokenizer(), max_positions=64)
    table = main(["--model", str(ckpt), "--lengths", "128", "256", "--out", str(tmp_path / "out"), "--threads", "1"])
    header, rule, *rows = table.splitlines()
    assert header == "| task | length | tiny | dynamic x2 | yarn x2 | ntk x2 |"
    assert [r.split(" | ")[:2] for r in rows] == [["| perplexity", "128"], ["| perplexity", "256"],
                                                   ["| passkey", "128"], ["| passkey", "256"]]
    assert all(cell.endswith("/1") for r in rows[2:] for cell in r.strip("| ").split(" | ")[2:])
    for task in ("perplexity", "passkey"):
        assert validate(json.loads((tmp_path / "out" / task / "eval.json").read_text())) == []
        for name in ("eval.json", "report.md"):  # committed results name the model, never this machine's paths
            assert str(tmp_path) not in (tmp_path / "out" / task / name).read_text()
    assert (tmp_path / "out" / "table.md").read_text().strip() == table
