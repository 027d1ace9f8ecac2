"""One training measurement, ours or the baseline's, in a process of its own (for a clean peak memory).

    python -m bench.lib.training_harness --system ours|baseline|trl --length 2048 --steps 6 [--hidden 256 ...]

Both systems train the same randomly initialised Llama (saved once to a folder, so both load the same
weights) with the same LoRA (r=8 on q/k/v/o) on the same rows: the rows of a data_prep dataset of the
standard-library corpus at --length tokens, one row per optimizer step, batch 1, AdamW, constant lr.

- ours: extend/train.py's own `setup` and `train_step` (chunked cross-entropy, SDPA, and, as in every
  recipe at long length, gradient checkpointing; `--no-checkpointing` turns it off).
- baseline: what users would otherwise write: transformers' `Trainer` on a peft LoRA model, the same rows
  as a `datasets.Dataset` of input_ids and labels, default settings (SDPA, full-sequence logits). It sees
  each packed row as one sequence: its documents attend to each other (less work than keeping them apart).
- trl: TRL's `SFTTrainer` on the same peft LoRA model, with TRL's own settings for pretraining-style rows:
  the rows' documents (split at their position-id restarts) as a pre-tokenised dataset, packed by TRL with
  best-fit decreasing (`packing_strategy="bfd"`, which turns on `padding_free`: one flattened row per batch
  with restarting position ids, no attention mask) to `max_length` = --length, loss on every token
  (`completion_only_loss=False`), gradient checkpointing on unless --no-checkpointing. transformers then
  keeps the documents apart (a block-diagonal mask built from the position ids, since TRL passes
  use_cache=False). Its tokens per step are counted from the batches it actually trains on.

Prints one JSON line: tokens/s over the steps after the first (the first includes one-off work), the same
per CPU-second of the process (steady when other processes share the cores), and the
peak memory the training steps added on top of the loaded model: on CPU the peak resident size (ru_maxrss
after minus the resident size before the first step; torch keeps no CPU allocator statistics), on CUDA
torch.cuda.max_memory_allocated over the steps minus the allocation before them.

`--device cuda --dtype bfloat16` (bench/gpu.sh) loads the weights in bf16 and trains under bf16 autocast on
both sides (ours: model.dtype + train.mixed_precision; baseline: torch_dtype + TrainingArguments.bf16);
`--checkpointing` turns on gradient checkpointing for the baseline too (what users set at long length).
`--loss NAME` picks our loss implementation (train.loss; default auto).
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

REPO = Path(__file__).resolve().parents[2]
CPU_TIMES: list[float] = []  # the CPU seconds (user + system, all threads) of each timed step


def rss_gb() -> float:
    return psutil.Process().memory_info().rss / 2**30


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux


def memory_now_gb(device: str) -> float:
    """What the steps' peak is measured against: allocated memory on CUDA (peak counter reset), else RSS."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**30
    return rss_gb()


def memory_peak_gb(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**30
    return peak_rss_gb()


def save_model(folder: Path, hidden: int, layers: int, heads: int, vocab: int, positions: int,
               intermediate: int | None = None, kv_heads: int | None = None) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or hidden * 3,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                         max_position_embeddings=positions, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder)


def parameter_count(folder: Path) -> int:
    """The saved model's parameters, counted on the meta device (nothing loaded)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)).parameters())


def compose(model: Path, data: Path, out: Path, length: int, steps: int, checkpointing: bool, dtype: str = "float32",
            adapter: str = "lora", loss: str = "auto"):
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf

    from extend.config import CONF_DIR

    overrides = [
        "model=hf", f"model.name_or_path={model}", "rope=none", f"adapter={adapter}", "data=stdlib",
        f"data.output_dir={data}", f"output_dir={out}", f"curriculum.tokens_per_step={length}",
        f"curriculum.stages=[{{length: {length}, steps: {steps}}}]", "train.learning_rate=1e-4",
        "train.checkpoint_every=0", "train.tracker=none", "train.max_grad_norm=0",
        f"train.gradient_checkpointing={str(checkpointing).lower()}", f"model.dtype={dtype}",
        f"train.mixed_precision={'bf16' if dtype == 'bfloat16' else 'no'}", f"train.loss={loss}",
    ]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return OmegaConf.to_object(hydra_compose("config", overrides=overrides))


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step_timer(device: str):
    """A Trainer callback recording each step's wall time (and CPU time in CPU_TIMES) and the memory before
    the first step: the peers' counterpart of our loop's step log."""
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times, self.before = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            if self.before is None:
                self.before = memory_now_gb(device)
            self.started, self.cpu_started = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)
            self.times.append(time.perf_counter() - self.started)
            CPU_TIMES.append(time.process_time() - self.cpu_started)

    return StepTimes()


def measure_ours(cfg, device: str, live: dict | None = None) -> tuple[list[float], float, float]:
    """Our steps, timed. With `live` (a dict), they run under the tensor tracker (bench/lib/live_memory.py)
    from the first step, so optimizer states and gradients count, the loaded weights not; live["peak_gb"]
    is the most tensor bytes alive at once. The tracker slows the steps, and so the times reported."""
    from contextlib import nullcontext

    from bench.lib.live_memory import LiveTensorBytes
    from extend.train import setup, train_step
    from extend.training.batches import StageRows

    run = setup(cfg)
    rows = StageRows(run.stages[0])
    before = memory_now_gb(device)
    times, cpu = [], []
    with LiveTensorBytes() if live is not None else nullcontext() as tracker:
        for step in range(run.stages[0].steps):
            batch = rows.step_rows(step)
            started, cpu_started = time.perf_counter(), time.process_time()
            train_step(run, batch)
            synchronize(device)
            times.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
    if live is not None:
        live["peak_gb"] = tracker.peak / 2**30
    CPU_TIMES[:] = cpu
    return times, before, memory_peak_gb(device)


def measure_baseline(cfg, out: Path, device: str, checkpointing: bool) -> tuple[list[float], float, float]:
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from extend.data.manifest import read_manifest
    from extend.models.loading import NO_HUB_KERNELS
    from extend.training.batches import StageRows, stages_from_manifest

    stage = stages_from_manifest(Path(cfg.data.output_dir), read_manifest(Path(cfg.data.output_dir)))[0]
    rows = StageRows(stage).rows(0, stage.steps * stage.rows_per_step)
    dataset = datasets.Dataset.from_dict({"input_ids": rows["input_ids"].tolist(), "labels": rows["input_ids"].tolist()})
    model = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path, dtype=getattr(torch, cfg.model.dtype),
                                                 attn_implementation="sdpa", **NO_HUB_KERNELS)
    if checkpointing:
        model.enable_input_require_grads()  # peft + checkpointing: the frozen embeddings' output needs grad
    model = get_peft_model(model, LoraConfig(r=cfg.adapter.r, lora_alpha=cfg.adapter.alpha, lora_dropout=0.0,
                                             target_modules=list(cfg.adapter.target_modules), task_type="CAUSAL_LM"))

    timer = step_timer(device)
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=1, max_steps=stage.steps, learning_rate=1e-4,
        lr_scheduler_type="constant", max_grad_norm=0.0, save_strategy="no", report_to=[], logging_strategy="no",
        use_cpu=device == "cpu", dataloader_num_workers=0, disable_tqdm=True, seed=0,
        bf16=cfg.model.dtype == "bfloat16", gradient_checkpointing=checkpointing,
    )
    Trainer(model=model, args=args, train_dataset=dataset, callbacks=[timer]).train()
    return timer.times, timer.before, memory_peak_gb(device)


def documents_of(rows: dict[str, torch.Tensor]) -> list[list[int]]:
    """The documents (pieces) packed into rows: each row split where its position ids restart at 0."""
    docs = []
    for ids, pos in zip(rows["input_ids"].tolist(), rows["position_ids"].tolist()):
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(ids)]
        docs += [ids[a:b] for a, b in zip(starts, starts[1:]) if b > a]
    return docs


def measure_trl(cfg, out: Path, device: str, checkpointing: bool) -> tuple[list[float], float, float, list[int], dict]:
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from extend.data.manifest import read_manifest
    from extend.models.loading import NO_HUB_KERNELS
    from extend.models.tokenizer import load_tokenizer
    from extend.training.batches import StageRows, stages_from_manifest

    stage = stages_from_manifest(Path(cfg.data.output_dir), read_manifest(Path(cfg.data.output_dir)))[0]
    rows = StageRows(stage).rows(0, stage.steps * stage.rows_per_step)
    dataset = datasets.Dataset.from_dict({"input_ids": documents_of(rows)})
    tokenizer = load_tokenizer(cfg.data.tokenizer, cfg.data.cache_dir)  # the one the rows were made with
    model = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path, dtype=getattr(torch, cfg.model.dtype),
                                                 attn_implementation="sdpa", **NO_HUB_KERNELS)
    seen: dict = {}

    def record(module, args, kwargs):  # what TRL hands the model: tokens, position ids, mask
        pos = kwargs.get("position_ids")
        seen.setdefault("tokens", []).append(int(kwargs["input_ids"].numel()))
        seen["attention_mask"] = kwargs.get("attention_mask") is not None
        seen["use_cache"] = kwargs.get("use_cache")
        seen["documents_per_row"] = None if pos is None else int((pos == 0).sum())

    model.register_forward_pre_hook(record, with_kwargs=True)

    timer = step_timer(device)
    args = SFTConfig(
        output_dir=str(out), per_device_train_batch_size=1, max_steps=stage.steps, learning_rate=1e-4,
        lr_scheduler_type="constant", max_grad_norm=0.0, save_strategy="no", report_to=[], logging_strategy="no",
        use_cpu=device == "cpu", dataloader_num_workers=0, disable_tqdm=True, seed=0,
        bf16=cfg.model.dtype == "bfloat16", fp16=False, gradient_checkpointing=checkpointing,
        max_length=cfg.curriculum.stages[0].length, packing=True, packing_strategy="bfd", padding_free=True,
        completion_only_loss=False, dataset_num_proc=None,
    )
    peft_config = LoraConfig(r=cfg.adapter.r, lora_alpha=cfg.adapter.alpha, lora_dropout=0.0,
                             target_modules=list(cfg.adapter.target_modules), task_type="CAUSAL_LM")
    SFTTrainer(model=model, args=args, train_dataset=dataset, peft_config=peft_config, processing_class=tokenizer,
               callbacks=[timer]).train()
    tokens = seen.pop("tokens")
    return timer.times, timer.before, memory_peak_gb(device), tokens, seen


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", choices=["ours", "baseline", "trl"], required=True)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--intermediate", type=int, default=None, help="MLP width (default 3 x hidden)")
    parser.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: --heads)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--no-checkpointing", action="store_true", help="ours without gradient checkpointing")
    parser.add_argument("--checkpointing", action="store_true", help="the baseline with gradient checkpointing")
    parser.add_argument("--loss", default="auto", help="ours: train.loss (auto, chunked, cce, liger, plain)")
    parser.add_argument("--adapter", choices=["lora", "full"], default="lora", help="ours: what trains (default lora)")
    parser.add_argument("--live-memory", action="store_true",
                        help="ours: run the steps under the tensor tracker and report peak_live_tensor_gb (CPU)")
    parser.add_argument("--workdir", type=Path, required=True, help="shared between the runs of one benchmark")
    opts = parser.parse_args(argv)

    model = opts.workdir / (f"model-h{opts.hidden}-l{opts.layers}-i{opts.intermediate}-kv{opts.kv_heads}"
                            f"-v{opts.vocab}-p{max(opts.length, 2048)}")
    if not (model / "config.json").exists():
        save_model(model, opts.hidden, opts.layers, opts.heads, opts.vocab, max(opts.length, 2048),
                   opts.intermediate, opts.kv_heads)
    data = opts.workdir / f"data-{opts.length}-{opts.steps}"
    cfg = compose(model, data, opts.workdir / "run", opts.length, opts.steps, not opts.no_checkpointing, opts.dtype,
                  opts.adapter, opts.loss)
    if not (data / "manifest.json").exists():
        from extend.data.prepare import prepare

        prepare(cfg, log=lambda _: None)
    with tempfile.TemporaryDirectory(dir=opts.workdir) as out:
        cfg.output_dir = out
        tokens, inputs = [opts.length] * opts.steps, None
        live = {} if opts.live_memory else None
        if opts.system == "ours":
            times, before, peak = measure_ours(cfg, opts.device, live)
        elif opts.system == "baseline":
            times, before, peak = measure_baseline(cfg, Path(out), opts.device, opts.checkpointing)
        else:
            times, before, peak, tokens, inputs = measure_trl(cfg, Path(out), opts.device, not opts.no_checkpointing)
    timed, timed_tokens = (times[1:], tokens[1:len(times)]) if len(times) > 1 else (times, tokens[:len(times)])
    result = {
        "system": opts.system, "length": opts.length, "steps": len(times),
        "tokens_per_s": round(sum(timed_tokens) / sum(timed), 1),
        "step_seconds": [round(t, 3) for t in times],
        # Tokens per CPU-second of the process: what the wall-clock figure would be on an otherwise idle
        # machine (one thread), and much steadier when other processes compete for the cores.
        "tokens_per_cpu_s": round(sum(timed_tokens) / sum(CPU_TIMES[1:] if len(CPU_TIMES) > 1 else CPU_TIMES), 1),
        "peak_step_memory_gb": round(max(peak - before, 0.0), 3),
        "parameters": parameter_count(model),
    }
    if inputs is not None:
        result["tokens_per_step"], result["inputs"] = tokens, inputs
    if live:
        result["peak_live_tensor_gb"] = round(live["peak_gb"], 4)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
