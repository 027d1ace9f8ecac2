"""The lm-eval hand-off: an exported checkpoint (here with YaRN x2 in its config) is read by
`lm_eval --model hf --model_args pretrained=PATH,max_length=N` (lm-eval comes with the `dev` extra, as
.ci/install installs it). Run as `python -m lm_eval` so that it is this interpreter's lm-eval."""

import json
import subprocess
import sys

import pytest

from extend.models import build_random
from extend.rope import apply_rope, resolve_rope
from tests.eval_helpers import make_tokenizer, tiny_config

pytestmark = pytest.mark.slow  # a separate lm_eval process

TASK_YAML = """\
task: extend_local_perplexity
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
"""


def test_lm_eval_reads_an_exported_checkpoint(tmp_path):
    tokenizer = make_tokenizer()
    config = tiny_config(len(tokenizer), 64)
    config = apply_rope(config, resolve_rope({"type": "yarn", "factor": 2.0}, config))
    build_random(config, seed=0).save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    docs = [{"text": "The grass is green. The sky is blue. " * 8}, {"text": "The pass key is 12345. " * 10}]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "local.yaml").write_text(TASK_YAML.format(data=tmp_path / "docs.jsonl"))
    run = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={tmp_path / 'ckpt'},max_length=128",
         "--tasks", "extend_local_perplexity", "--include_path", str(tmp_path / "tasks"), "--device", "cpu",
         "--batch_size", "1", "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results*.json")).read_text())
    metrics = results["results"]["extend_local_perplexity"]
    assert 1.0 < metrics["word_perplexity,none"] < float("inf")
    assert str(results["config"]["model_args"]["max_length"]) == "128"
