"""SmolLM2-135M extended 8k -> 32k: the fine-tuned export next to the base as it is and training-free YaRN x4.

    nice python -m bench.studies.smollm2_32k --finetuned outputs/smollm2_32k/final   # every cell, resumable
    python -m bench.studies.smollm2_32k --table-only                                    # the table of what is done
    python -m bench.studies.smollm2_32k --lm-eval outputs/smollm2_32k/final             # lm-eval reads the export

Every (model, task, length) is one cell, evaluated through `extend.eval.run_eval` into its own folder under
--out (eval.json, report.md) and skipped when that folder already holds a result, so an interrupted study
resumes where it stopped. Cells run in priority order (perplexity first, then the 32k passkey, then the
shorter passkeys), because one 32k forward of this model takes minutes on a 2-core CPU.

- Perplexity: the same 32,768 held-out tokens at every length (`eval.perplexity.tokens_per_document`): the
  start of `pydoc_data/topics.py`, the largest file the `stdlib` data source holds out (English prose of
  the Python reference), scored with windows of 8k, 16k or 32k tokens.
- Passkey: 5 depths (0.1 ... 0.9), 2 items per depth at 8k and 16k and 1 at 32k, seed 0, greedy, exact
  match. Items are seeded per (length, depth, index), so the 32k items are the first item of each depth.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from bench.lib.paths import RESULTS, scrub_folder
from bench.studies.eval_smollm2 import convert_smollm2
from extend.config import CONF_DIR, PerplexityDataConfig
from extend.eval import run_eval
from extend.eval.texts import stdlib_heldout

LENGTHS = (8192, 16384, 32768)
DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
SCORED_TOKENS = 32768
# The models compared: overrides on top of `model=hf model.name_or_path=...` (the base unless given).
MODELS = {
    "base": ["eval.extrapolate=true"],  # as it is: addresses 8192, evaluated past it on purpose
    "yarn4": ["rope=yarn", "rope.factor=4"],  # training-free YaRN x4 (original 8192)
    "finetuned": [],  # the export carries its own YaRN x4 in config.json
}


def cells(models: list[str]) -> list[tuple[str, str, int]]:
    """(model, task, length) in the order they run: what decides the comparison first."""
    order = [(m, "perplexity", n) for m in models for n in LENGTHS]
    order += [(m, "passkey", 32768) for m in models if m != "base"]
    order += [(m, "passkey", n) for n in (16384, 8192) for m in models if m != "base"]
    order += [("base", "passkey", n) for n in LENGTHS if "base" in models]
    return order


def overrides(model: str, path: str, tokenizer: str, task: str, length: int, out: Path) -> list[str]:
    items = 1 if length == 32768 else 2
    return [
        "model=hf", f"model.name_or_path={path}", f"eval.tokenizer={tokenizer}", *MODELS[model],
        f"eval.tasks=[{task}]", f"eval.lengths=[{length}]", "eval.batch_size=1",
        f"eval.depths=[{','.join(map(str, DEPTHS))}]", f"eval.items_per_cell={items}",
        "eval.perplexity.source=stdlib_heldout", "eval.perplexity.max_documents=1",
        f"eval.perplexity.tokens_per_document={SCORED_TOKENS}", "eval.perplexity.max_windows=8",
        f"eval.name={model}", f"eval.output_dir={out}", "eval.overwrite=true",
    ]


def run_cell(model: str, path: str, tokenizer: str, task: str, length: int, root: Path) -> dict:
    out = root / model / f"{task}_{length}"
    done = out / "eval.json"
    if done.exists():
        return json.loads(done.read_text())
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides(model, path, tokenizer, task, length, out))
    start = time.time()
    result = run_eval(cfg)
    seconds = round(time.time() - start)
    (out / "timing.json").write_text(json.dumps({"seconds": seconds, "threads": torch.get_num_threads()}) + "\n")
    scrub_folder(out)
    print(f"{model} {task} {length}: {seconds} s", flush=True)
    return result


# lm-eval's rolling log-likelihood over one held-out document, as a task of its own (no Hub dataset).
LM_EVAL_TASK = """\
task: extend_heldout_perplexity
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
LM_EVAL_TOKENS = 16384  # the document lm-eval scores: the start of the perplexity text, past the base's 8,192


def lm_eval_export(export: str, root: Path) -> dict:
    """Run `lm_eval --model hf` on the export as a user would (max_length 32,768, one process, CPU) over the
    first LM_EVAL_TOKENS tokens of the held-out perplexity text; its results JSON goes to root/lm_eval/."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export)
    text = stdlib_heldout(PerplexityDataConfig(max_documents=1))[0]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:LM_EVAL_TOKENS]
    out = root / "lm_eval"
    with tempfile.TemporaryDirectory() as tmp:
        tasks = Path(tmp)
        (tasks / "doc.jsonl").write_text(json.dumps({"text": tokenizer.decode(ids)}) + "\n")
        (tasks / "task.yaml").write_text(LM_EVAL_TASK.format(data=tasks / "doc.jsonl"))
        start = time.time()
        subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf",
                        "--model_args", f"pretrained={export},max_length=32768,dtype=float32",
                        "--tasks", "extend_heldout_perplexity", "--include_path", str(tasks), "--device", "cpu",
                        "--batch_size", "1", "--output_path", str(tasks / "out")], check=True)
        found = json.loads(next((tasks / "out").rglob("results*.json")).read_text())
    summary = {"export": export, "document_tokens": len(ids), "max_length": 32768,
               "seconds": round(time.time() - start), "lm_eval_version": version("lm_eval"),
               "results": found["results"]["extend_heldout_perplexity"]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def value(root: Path, model: str, task: str, length: int) -> str:
    done = root / model / f"{task}_{length}" / "eval.json"
    if not done.exists():
        return "–"
    cell = json.loads(done.read_text())["results"][model][task]["by_length"][str(length)]
    if task == "perplexity":
        return f"{cell['value']:.2f}"
    return f"{round(cell['value'] * cell['n'])}/{cell['n']}"


def table(root: Path, models: list[str]) -> str:
    rows = ["| task | length | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for task in ("perplexity", "passkey"):
        for n in LENGTHS:
            rows.append(f"| {task} | {n} | " + " | ".join(value(root, m, task, n) for m in models) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="base checkpoint folder (default: SmolLM2-135M-Instruct from its GGUF)")
    parser.add_argument("--finetuned", help="the extended export (outputs/RUN/final); without it, base and YaRN only")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), help="evaluate only these")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "smollm2_32k")
    parser.add_argument("--table-only", action="store_true", help="print the table of finished cells")
    parser.add_argument("--lm-eval", metavar="EXPORT", help="only run lm-eval on this export (results in OUT/lm_eval/)")
    args = parser.parse_args(argv)
    if args.lm_eval:
        print(json.dumps(lm_eval_export(args.lm_eval, args.out), indent=2))
        return
    models = args.models or [m for m in MODELS if m != "finetuned" or args.finetuned]
    if "finetuned" in models and not args.finetuned:
        parser.error("--models finetuned needs --finetuned FOLDER")
    if not args.table_only:
        torch.set_num_threads(args.threads)
        base = args.base or str(convert_smollm2())
        paths = {"base": base, "yarn4": base, "finetuned": args.finetuned}
        for model, task, length in cells(models):
            run_cell(model, paths[model], base, task, length, args.out)
    text = table(args.out, list(MODELS))
    (args.out).mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
