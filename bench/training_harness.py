"""One training measurement, ours or the baseline's, in a process of its own (for a clean peak memory).

    python -m bench.training_harness --system ours|baseline --length 2048 --steps 6 [--hidden 256 ...]

Both systems train the same randomly initialised Llama (saved once to a folder, so both load the same
weights) with the same LoRA (r=8 on q/k/v/o) on the same rows: the rows of a data_prep dataset of the
standard-library corpus at --length tokens, one row per optimizer step, batch 1, AdamW, constant lr.

- ours: extend/train.py's own `setup` and `train_step` (chunked cross-entropy, SDPA, and, as in every
  recipe at long length, gradient checkpointing; `--no-checkpointing` turns it off).
- baseline: what users would otherwise write: transformers' `Trainer` on a peft LoRA model, the same rows
  as a `datasets.Dataset` of input_ids and labels, default settings (SDPA, full-sequence logits).

Prints one JSON line: tokens/s over the steps after the first (the first includes one-off work), and the
peak resident memory the training steps added on top of the loaded model (ru_maxrss after minus the
resident size before the first step; on CPU torch keeps no allocator statistics).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parent.parent


def rss_gb() -> float:
    return psutil.Process().memory_info().rss / 2**30


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux


def save_model(folder: Path, hidden: int, layers: int, heads: int, vocab: int, positions: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=positions,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder)


def compose(model: Path, data: Path, out: Path, length: int, steps: int, checkpointing: bool):
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf

    from extend.config import CONF_DIR

    overrides = [
        "model=hf", f"model.name_or_path={model}", "rope=none", "adapter=lora", "data=stdlib",
        f"data.output_dir={data}", f"output_dir={out}", f"curriculum.tokens_per_step={length}",
        f"curriculum.stages=[{{length: {length}, steps: {steps}}}]", "train.learning_rate=1e-4",
        "train.checkpoint_every=0", "train.tracker=none", "train.max_grad_norm=0",
        f"train.gradient_checkpointing={str(checkpointing).lower()}",
    ]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return OmegaConf.to_object(hydra_compose("config", overrides=overrides))


def measure_ours(cfg) -> tuple[list[float], float, float]:
    from extend.train import setup, train_step
    from extend.training.batches import StageRows

    run = setup(cfg)
    rows = StageRows(run.stages[0])
    before = rss_gb()
    times = []
    for step in range(run.stages[0].steps):
        batch = rows.step_rows(step)
        started = time.perf_counter()
        train_step(run, batch)
        times.append(time.perf_counter() - started)
    return times, before, peak_rss_gb()


def measure_baseline(cfg, out: Path) -> tuple[list[float], float, float]:
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from extend.data.manifest import read_manifest
    from extend.training.batches import StageRows, stages_from_manifest

    stage = stages_from_manifest(Path(cfg.data.output_dir), read_manifest(Path(cfg.data.output_dir)))[0]
    rows = StageRows(stage).rows(0, stage.steps * stage.rows_per_step)
    dataset = datasets.Dataset.from_dict({"input_ids": rows["input_ids"].tolist(), "labels": rows["input_ids"].tolist()})
    model = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path)
    model = get_peft_model(model, LoraConfig(r=cfg.adapter.r, lora_alpha=cfg.adapter.alpha, lora_dropout=0.0,
                                             target_modules=list(cfg.adapter.target_modules), task_type="CAUSAL_LM"))

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times, self.before = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            if self.before is None:
                self.before = rss_gb()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.started)

    timer = StepTimes()
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=1, max_steps=stage.steps, learning_rate=1e-4,
        lr_scheduler_type="constant", max_grad_norm=0.0, save_strategy="no", report_to=[], logging_strategy="no",
        use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=0,
    )
    Trainer(model=model, args=args, train_dataset=dataset, callbacks=[timer]).train()
    return timer.times, timer.before, peak_rss_gb()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", choices=["ours", "baseline"], required=True)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--no-checkpointing", action="store_true", help="ours without gradient checkpointing")
    parser.add_argument("--workdir", type=Path, required=True, help="shared between the runs of one benchmark")
    opts = parser.parse_args(argv)

    model = opts.workdir / f"model-h{opts.hidden}-l{opts.layers}-v{opts.vocab}-p{opts.length}"
    if not (model / "config.json").exists():
        save_model(model, opts.hidden, opts.layers, opts.heads, opts.vocab, max(opts.length, 2048))
    data = opts.workdir / f"data-{opts.length}-{opts.steps}"
    cfg = compose(model, data, opts.workdir / "run", opts.length, opts.steps, not opts.no_checkpointing)
    if not (data / "manifest.json").exists():
        from extend.data.prepare import prepare

        prepare(cfg, log=lambda _: None)
    with tempfile.TemporaryDirectory(dir=opts.workdir) as out:
        cfg.output_dir = out
        times, before, peak = measure_ours(cfg) if opts.system == "ours" else measure_baseline(cfg, Path(out))
    timed = times[1:] or times
    result = {
        "system": opts.system, "length": opts.length, "steps": len(times),
        "tokens_per_s": round(opts.length * len(timed) / sum(timed), 1),
        "step_seconds": [round(t, 3) for t in times],
        "peak_step_memory_gb": round(max(peak - before, 0.0), 3),
        "parameters": sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(model).parameters()),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
