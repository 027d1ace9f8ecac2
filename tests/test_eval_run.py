"""run_eval end to end on tiny models: a copying model aces passkey, a random one fails it; eval.json,
report.md and plots are written; bad input fails with one clear error before any model loads."""

import json
import logging
import re
import subprocess
import sys

import matplotlib.pyplot as plt
import pytest
from transformers import AutoTokenizer

from extend.config import ConfigError, REPO_ROOT
from extend.eval import run_eval
from extend.eval.__main__ import expand_model_shortcut
from extend.eval.plots import curve_figure
from extend.eval.runner import IDENTITY, output_dir
from extend.eval.report import render_report
from extend.eval.schema import validate
from tests.eval_helpers import Copier, CopierConfig, compose_cfg, make_tokenizer, save_tiny_checkpoint


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    """A tiny random Llama for 256 positions, saved with its tokenizer like an exported run."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", tokenizer, max_positions=256)


PASSKEY = ["eval.tasks=[passkey]", "eval.lengths=[128,192]", "eval.depths=[0.0,0.5,1.0]", "eval.items_per_cell=2"]


def test_a_perfect_copier_scores_100_percent_on_passkey(tokenizer, tmp_path):
    cfg = compose_cfg(*PASSKEY, f"eval.output_dir={tmp_path}")
    data = run_eval(cfg, model=Copier(CopierConfig(vocab_size=len(tokenizer))), tokenizer=tokenizer)
    assert data["conditions"][0]["model"] == "<in memory>"
    block = data["results"]["model"]["passkey"]
    assert {k: c["value"] for k, c in block["by_length"].items()} == {"128": 1.0, "192": 1.0}
    assert all(c["value"] == 1.0 for cells in block["by_length_depth"].values() for c in cells.values())
    assert len(block["items"]) == 2 * 3 * 2
    # It answers and keeps going; the scorer accepts text after the answer.
    assert any(len(i["prediction"].strip()) > len(i["answer"]) for i in block["items"])


def test_random_model_fails_and_comparisons_share_items(checkpoint, tmp_path):
    cfg = compose_cfg("model=hf", f"model.name_or_path={checkpoint}", *PASSKEY, "eval.tasks=[passkey,perplexity]",
                      "eval.perplexity.source=files", f"eval.perplexity.paths=[{REPO_ROOT}/extend/eval/*.py]",
                      "eval.comparisons=[{name: yarn x2, rope: {type: yarn, factor: 2}}]")
    data = run_eval(cfg)
    out = output_dir(cfg, model_given=False)  # default: a folder of its own next to the checkpoint
    assert out.parent == checkpoint / "eval" and re.fullmatch(r"passkey\+perplexity-[0-9a-f]{8}", out.name)
    assert validate(json.loads((out / "eval.json").read_text())) == []
    assert data["complete"] is True
    names = [c["name"] for c in data["conditions"]]
    assert names == ["tiny", "yarn x2"]
    assert [c["served_length"] for c in data["conditions"]] == [256, 512]
    accuracy = [c["value"] for r in data["results"].values() for c in r["passkey"]["by_length"].values()]
    assert max(accuracy) <= 0.25  # 5 random digits from a random model: ~0
    items = [[(i["seed"], i["answer"]) for i in r["passkey"]["items"]] for r in data["results"].values()]
    assert items[0] == items[1]
    ppl = [data["results"][n]["perplexity"]["by_length"]["192"]["value"] for n in names]
    assert ppl[0] != ppl[1]  # the rope method really reached the rebuilt model
    for png in ("passkey.png", "passkey_heatmap.png", "perplexity.png"):
        assert (out / png).stat().st_size > 5000
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| yarn x2 |" in report and "## passkey" in report and "](passkey_heatmap.png)" in report
    assert "Partial" not in report
    # What a run stopped after its first model leaves behind.
    partial = dict(data, complete=False, results={"tiny": data["results"]["tiny"]})
    assert validate(partial) == []
    assert "**Partial**: 1 of 2 models" in render_report(partial)


def test_bad_input_is_one_error_listing_every_problem_before_loading(checkpoint, tmp_path):
    cfg = compose_cfg("model=hf", f"model.name_or_path={checkpoint}", "eval.tasks=[passkey,needle]",
                      "eval.lengths=[64,4096]", "eval.depths=[0.5]",
                      "eval.comparisons=[{name: gone, name_or_path: /nonexistent/model}]")
    with pytest.raises(ConfigError) as err:
        run_eval(cfg)
    text = str(err.value)
    assert "unknown task(s) 'needle'" in text and "registered tasks:" in text
    assert "gone: model.name_or_path='/nonexistent/model' does not exist" in text
    assert not (checkpoint / "eval" / "needle").exists()
    with pytest.raises(ConfigError, match="passkey at length 8: its shortest item is"):
        run_eval(compose_cfg("model=hf", f"model.name_or_path={checkpoint}", "eval.tasks=[passkey]",
                             "eval.lengths=[8]", "eval.depths=[0.5]", f"eval.output_dir={tmp_path}"))
    # Lengths are checked once the tasks are known: beyond 128 positions without scaling.
    with pytest.raises(ConfigError, match=r"passkey needs inputs of \d+ tokens but tiny addresses 256.*"
                                          r"eval.extrapolate=true"):
        run_eval(compose_cfg("model=hf", f"model.name_or_path={checkpoint}", "eval.tasks=[passkey]",
                             "eval.lengths=[160,4096]", "eval.depths=[0.5]", f"eval.output_dir={tmp_path}"))
    # ... and scaling makes the same length addressable.
    prepared_ok = compose_cfg("model=hf", f"model.name_or_path={checkpoint}", "eval.tasks=[passkey]",
                              "eval.lengths=[400]", "eval.depths=[0.5]", "eval.items_per_cell=1", "rope=yarn",
                              "rope.factor=2", f"eval.output_dir={tmp_path}")
    assert run_eval(prepared_ok)["conditions"][0]["served_length"] == 512


def test_tokenizer_without_eos_is_refused(checkpoint, tmp_path):
    cfg = compose_cfg("model=hf", f"model.name_or_path={checkpoint}", *PASSKEY, f"eval.output_dir={tmp_path}")
    with pytest.raises(ConfigError, match="has no EOS token"):
        run_eval(cfg, tokenizer=make_tokenizer(eos=False))


def test_hub_sets_offline_are_an_error_not_a_skip(checkpoint, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_cfg("model=hf", f"model.name_or_path={checkpoint}", "eval.tasks=[passkey,abacusai/LongChat-Lines]",
                      "eval.lengths=[128]", "eval.depths=[0.5]")
    with pytest.raises(ConfigError, match="abacusai/LongChat-Lines loads a Hub dataset, but HF_HUB_OFFLINE"):
        run_eval(cfg)


def test_model_shortcut():
    assert expand_model_shortcut(["model=out/run/final", "eval=quick"]) == [
        "model=hf", "model.name_or_path=out/run/final", "eval=quick"]
    assert expand_model_shortcut(["model=tiny_llama"]) == ["model=tiny_llama"]
    assert expand_model_shortcut(["model.dtype=bfloat16"]) == ["model.dtype=bfloat16"]


@pytest.mark.slow
def test_command_line_end_to_end(checkpoint, tmp_path):
    """The documented command, in a fresh process: model=PATH, a training-free rope, a quick look."""
    out = tmp_path / "cli"
    run = subprocess.run(
        [sys.executable, "-m", "extend.eval", f"model={checkpoint}", "eval=quick", "eval.tasks=[passkey,kv]",
         "eval.lengths=[128,192]", "eval.limit=1", "rope=linear", "rope.factor=2", f"eval.output_dir={out}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads((out / "eval.json").read_text())
    assert validate(data) == []
    assert data["conditions"][0]["name"] == "tiny + linear x2"
    assert data["conditions"][0]["rope_parameters"]["rope_type"] == "linear"
    assert {c["n"] for c in data["results"]["tiny + linear x2"]["passkey"]["by_length"].values()} == {3}
    # Another evaluation into the same folder: one line, exit 2, nothing computed or replaced.
    before = (out / "eval.json").read_bytes()
    refused = subprocess.run(
        [sys.executable, "-m", "extend.eval", f"model={checkpoint}", "eval=quick", "eval.tasks=[passkey,kv]",
         "eval.lengths=[128,192]", "eval.limit=2", "rope=linear", "rope.factor=2", f"eval.output_dir={out}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert f"{out} holds another evaluation (differs in: eval.limit): set eval.overwrite=true" in refused.stderr
    assert (out / "eval.json").read_bytes() == before
    bad = subprocess.run([sys.executable, "-m", "extend.eval", "model=/nonexistent/x"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_plot_axes_read_plain_numbers():
    """Lengths read 256/512/1024 (not 2^8) and a perplexity axis 230 (not 2.3x10^2), on every tick."""
    def task(metric, values):
        return {"metric": metric, "by_length": {str(n): {"length": n, "value": v} for n, v in zip((256, 512, 1024), values)}}

    data = {"conditions": [{"name": "a", "served_length": 1024}, {"name": "b", "served_length": 512}],
            "results": {"a": {"perplexity": task("perplexity", [227.5, 231.0, 240.9]), "passkey": task("accuracy", [1, 1, 0.8])},
                        "b": {"perplexity": task("perplexity", [228.0, 233.5, 236.0]), "passkey": task("accuracy", [1, 0.4, 0])}}}
    for name in ("perplexity", "passkey"):
        fig = curve_figure(data, name)
        fig.canvas.draw()
        ax = fig.axes[0]
        labels = {axis: [t.get_text() for minor in (False, True) for t in ax_.get_ticklabels(minor=minor)
                         if t.get_text() and lo <= t.get_position()[i] <= hi]
                  for axis, ax_, i, (lo, hi) in (("x", ax.xaxis, 0, ax.get_xlim()), ("y", ax.yaxis, 1, ax.get_ylim()))}
        plt.close(fig)
        assert labels["x"] == ["256", "512", "1024"]
        assert labels["y"] and not any("$" in text or "^" in text for text in labels["x"] + labels["y"]), labels
        if name == "perplexity":
            assert "230" in labels["y"], labels


class Records(logging.Handler):
    """Every message the `transformers` loggers emit (they do not propagate to the root logger)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_evaluation_prints_no_too_long_sequence_warning(tmp_path):
    """The evaluation tokenises long documents on purpose (it windows them itself): no warning about it."""
    short = make_tokenizer()
    short.model_max_length = 64
    folder = save_tiny_checkpoint(tmp_path / "short", short, max_positions=256)
    records = Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(records)
    try:
        # The same tokenizer, used as it is, does warn: the check below can see the line.
        AutoTokenizer.from_pretrained(folder).encode((REPO_ROOT / "extend/eval/runner.py").read_text())
        assert any("Token indices sequence length is longer" in m for m in records.messages)
        records.messages.clear()
        run_eval(compose_cfg("model=hf", f"model.name_or_path={folder}", *PASSKEY, "eval.tasks=[perplexity,passkey]",
                             "eval.items_per_cell=1", "eval.perplexity.source=files", "eval.perplexity.max_windows=1",
                             f"eval.perplexity.paths=[{REPO_ROOT}/extend/eval/runner.py]",
                             f"eval.output_dir={tmp_path / 'out'}"))
    finally:
        logger.removeHandler(records)
    assert not any("Token indices sequence length" in m for m in records.messages), records.messages


def test_evaluations_get_folders_of_their_own_and_never_replace_another(checkpoint, tmp_path):
    model = ["model=hf", f"model.name_or_path={checkpoint}", "eval.tasks=[passkey]", "eval.lengths=[128]",
             "eval.depths=[0.5]"]
    first, second = compose_cfg(*model, "eval.items_per_cell=1"), compose_cfg(*model, "eval.items_per_cell=2")
    run_eval(first)
    one = output_dir(first, model_given=False)
    kept = (one / "eval.json").read_bytes()
    run_eval(second)
    two = output_dir(second, model_given=False)
    assert one.parent == two.parent == checkpoint / "eval" and one != two
    assert (one / "eval.json").read_bytes() == kept and (two / "eval.json").is_file()
    assert json.loads((one / IDENTITY).read_text())["eval"]["items_per_cell"] == 1
    # The same evaluation again is found in its own folder and rerun there.
    run_eval(compose_cfg(*model, "eval.items_per_cell=1", "eval.batch_size=2"))
    assert sorted(p.name for p in (checkpoint / "eval").iterdir() if p.name.startswith("passkey-")) == sorted([one.name, two.name])
    kept = (one / "eval.json").read_bytes()
    # A folder asked for by name that holds another evaluation: refused before anything is computed.
    into_one = [*model, "eval.items_per_cell=2", f"eval.output_dir={one}"]
    with pytest.raises(ConfigError) as err:
        run_eval(compose_cfg(*into_one))
    assert err.value.problems == [f"{one} holds another evaluation (differs in: eval.items_per_cell): set "
                                  "eval.overwrite=true to replace it, or give this one its own folder (eval.name=NAME "
                                  "or eval.output_dir=PATH)"]
    assert (one / "eval.json").read_bytes() == kept
    run_eval(compose_cfg(*into_one, "eval.overwrite=true"))
    assert json.loads((one / "eval.json").read_text())["config"]["items_per_cell"] == 2
    # eval.name names the folder (and the model in the report).
    named = compose_cfg(*model, "eval.items_per_cell=1", "eval.name=my check")
    assert output_dir(named, model_given=False) == checkpoint / "eval" / "my_check"
