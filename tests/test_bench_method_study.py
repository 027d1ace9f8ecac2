"""Smoke test of bench/studies/method_study.py at minimal size: two methods, two seeds, a saved tiny base."""

import importlib
import json

from extend.config import ModelConfig
from extend.models.loading import build_random, load_base_config
from extend.models.tokenizer import load_tokenizer


def test_method_study_runs_at_minimal_size(tmp_path, capsys):
    base = tmp_path / "base"
    build_random(load_base_config(ModelConfig(name_or_path="tiny-llama"), tokenizer=load_tokenizer("tiny")), seed=0).save_pretrained(base)
    bench = importlib.import_module("bench.studies.method_study")
    small = ["model=hf", f"model.name_or_path={base}", "eval.tokenizer=tiny", "data=stdlib", "data.sources.stdlib.max_documents=24",
             "curriculum.tokens_per_step=512", "curriculum.stages=[{length: 64, steps: 2}, {length: 128, steps: 2}]",
             "eval.lengths=[128]", "eval.items_per_cell=1", "eval.depths=[0.5]", "eval.perplexity.max_windows=1",
             "eval.perplexity.max_documents=2", "eval.perplexity.tokens_per_document=null", "rope.factor=2"]
    results = bench.main(["--methods", "linear", "yarn", "--seeds", "0", "1", "--out", str(tmp_path / "study"), "--", *small])
    assert set(results) == {"linear", "yarn"}
    for r in results.values():
        assert set(r["fine_tuned"]) == {0, 1}
        assert r["no_training"]["perplexity"][128] > 0
        assert all(run["perplexity"][128] > 0 for run in r["fine_tuned"].values())
    # Different seeds train on different data: the two fine-tuned models differ.
    linear = results["linear"]["fine_tuned"]
    assert linear[0]["perplexity"][128] != linear[1]["perplexity"][128]
    saved = json.loads((tmp_path / "study" / "results.json").read_text())
    assert saved["command"].startswith("python -m bench.studies.method_study --methods linear yarn --seeds 0 1")
    assert (tmp_path / "study" / "method_study.png").stat().st_size > 0
    assert "| linear | fine-tuned (2 seeds) |" in capsys.readouterr().out

    # A training-free inference method joins the saved study (--add): a no-training row, no fine-tune.
    added = bench.main(["--methods", "self_extend", "--add", "--out", str(tmp_path / "study"), "--", *small])
    assert added["self_extend"]["fine_tuned"] == {} and added["self_extend"]["no_training"]["perplexity"][128] > 0
    saved = json.loads((tmp_path / "study" / "results.json").read_text())
    assert set(saved["results"]) == {"linear", "yarn", "self_extend"} and len(saved["commands"]) == 2
    table = (tmp_path / "study" / "table.md").read_text()
    assert "| self_extend | no training |" in table and "| self_extend | fine-tuned" not in table
    assert "| yarn | fine-tuned (2 seeds) |" in table  # the earlier methods are kept, not rerun

    # Training options (--attention, --precision) add fine-tuned rows, without a training-free one, beside the rest.
    options = bench.main(["--methods", "linear", "self_extend", "--seeds", "0", "--attention", "anchor", "--add",
                          "--out", str(tmp_path / "study"), "--", *small])
    assert set(options) == {"linear · anchor · no"}  # an inference method has no fine-tuned row to add
    assert options["linear · anchor · no"]["no_training"] is None
    saved = json.loads((tmp_path / "study" / "results.json").read_text())
    assert set(saved["results"]) == {"linear", "yarn", "self_extend", "linear · anchor · no"}
    assert saved["commands"][-1].endswith("--attention anchor --precision no -- " + " ".join(small) + " --add")
    table = (tmp_path / "study" / "table.md").read_text()
    assert "| linear · anchor · no | fine-tuned (1 seed) |" in table and "| linear · anchor · no | no training" not in table
    assert "| linear | fine-tuned (2 seeds) |" in table

    # Another seed of a saved row joins it: the row keeps seed 0 and gains seed 1, its result unchanged.
    seed0 = saved["results"]["linear · anchor · no"]["fine_tuned"]["0"]
    bench.main(["--methods", "linear", "--seeds", "1", "--attention", "anchor", "--add",
                "--out", str(tmp_path / "study"), "--", *small])
    row = json.loads((tmp_path / "study" / "results.json").read_text())["results"]["linear · anchor · no"]
    assert set(row["fine_tuned"]) == {"0", "1"} and row["fine_tuned"]["0"] == seed0
    assert "| linear · anchor · no | fine-tuned (2 seeds) |" in (tmp_path / "study" / "table.md").read_text()
