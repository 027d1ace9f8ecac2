"""Extend a model's context window: `accelerate launch extend/train.py recipe=NAME [overrides]`.

Also runs as `python extend/train.py ...` or `python -m extend.train ...`. Reads top to bottom:

    main: compose + validate -> setup (tokenizer, data, model with its position method, adapter,
          optimizer, resume) -> fit (curriculum stages, checkpoints) -> export (merged model, adapter,
          run card) -> optional evaluation -> optional publishing (publish.repo_id)
"""

from __future__ import annotations

import contextlib
import importlib.util
import hashlib
import json
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

if __package__ in (None, ""):  # `python extend/train.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if __name__ == "__main__":  # `--help` and the model=PATH shorthand before the heavy imports (extend/commands.py);
    from extend.commands import command_line  # importing extend first also quiets bitsandbytes (extend/__init__.py)

    sys.argv[1:] = command_line("train")

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import PeftModel
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, PreTrainedConfig, PreTrainedTokenizerBase
from transformers.integrations import unset_hf_deepspeed_config

import extend  # noqa: F401  (registers entropy_abf)
from extend.adapters import Adapter, build_adapter, load_trainable_state, trainable_state
from extend.cli import run_cli
from extend.config import ConfigError, ExtendConfig, RopeConfig
from extend.data.curriculum import check_stage_weights
from extend.data.manifest import read_manifest, verify_dataset
from extend.data.prepare import prepare
from extend.models import attention_for, load_base_config, load_base_model, save_extended, set_rope_theta
from extend.models.packed_attention import restore_attention, use_packed_attention
from extend.models.tokenizer import load_tokenizer
from extend.rope import apply_rope, config_served_lengths, methods_reading, resolve_rope
from extend.training.batches import Stage, StageRows, micro_batches, stages_from_manifest
from extend.training.checkpoint import (
    Checkpoint, TrainState, commit_checkpoint, load_latest, prepare_staging, save_checkpoint, staging_folder,
)
from extend.training.distributed import StopRequest, build_accelerator, check_accelerate, is_deepspeed
from extend.training.loss import causal_lm_loss_sum, shifted_targets
from extend.training.report import StepLog, hardware, peak_memory_gb, write_run_card
from extend.training.schedule import SCHEDULES, build_scheduler

# Keys that change what a run computes; the rest (logging, resume policy, step cap) may differ on resume.
# How the run is distributed is checked against the checkpoint's format instead (check_resumable).
_NOT_FINGERPRINTED = {"train": ("resume", "log_every", "tracker", "max_steps", "checkpoint_every", "keep_checkpoints")}
_NOT_FINGERPRINTED_GROUPS = ("accelerate",)


def causal_lm_of(model: nn.Module) -> nn.Module:
    """The transformers causal LM inside a peft wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


class ChunkedCausalLM(nn.Module):
    """The model plus a loss that never builds full-sequence logits; what accelerate wraps for DDP."""

    def __init__(self, model: nn.Module, chunk_size: int):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    @property
    def causal_lm(self) -> nn.Module:
        return causal_lm_of(self.model)

    def forward(self, input_ids, labels, position_ids):
        lm = self.causal_lm
        hidden = lm.get_decoder()(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
        return causal_lm_loss_sum(hidden, lm.get_output_embeddings(), labels, position_ids, self.chunk_size)


@dataclass
class Run:
    cfg: ExtendConfig
    accelerator: Accelerator
    tokenizer: PreTrainedTokenizerBase
    adapter: Adapter
    model: nn.Module  # ChunkedCausalLM, prepared by accelerate
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    stages: list[Stage]
    state: TrainState
    model_config: PreTrainedConfig  # the base's config with the position method, as the export carries it
    manifest: dict
    run_dir: Path

    @property
    def total_steps(self) -> int:
        total = sum(s.steps for s in self.stages)
        return min(total, self.cfg.train.max_steps) if self.cfg.train.max_steps else total


def config_fingerprint(cfg: ExtendConfig) -> str:
    data = asdict(cfg)
    for group in _NOT_FINGERPRINTED_GROUPS:
        data.pop(group)
    for group, keys in _NOT_FINGERPRINTED.items():
        for key in keys:
            data[group].pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_training(cfg: ExtendConfig, world_size: int, addressable: int) -> list[str]:
    """Training-loop problems that do not need the model's weights (data and rope are checked where they load)."""
    t, problems = cfg.train, []
    if t.lr_schedule not in SCHEDULES:
        problems.append(f"train.lr_schedule={t.lr_schedule!r} is unknown; choose one of {', '.join(SCHEDULES)}")
    if t.mixed_precision not in ("no", "bf16", "fp16"):
        problems.append(f"train.mixed_precision={t.mixed_precision!r}: choose no, bf16 or fp16")
    if t.resume not in ("auto", "never"):
        problems.append(f"train.resume={t.resume!r}: choose auto (continue the newest checkpoint) or never")
    if t.micro_batch_size < 1 or t.learning_rate <= 0 or t.keep_checkpoints < 1:
        problems.append("train.micro_batch_size and train.keep_checkpoints must be >= 1, train.learning_rate > 0")
    problems += check_stage_weights(cfg.curriculum, cfg.data.sources)
    stage_bases = [s.rope_theta for s in cfg.curriculum.stages]
    if any(b is not None for b in stage_bases):
        if cfg.rope.type not in methods_reading("rope_theta"):
            problems.append(f"curriculum.stages[].rope_theta needs rope.type {' or '.join(methods_reading('rope_theta'))}, "
                            f"not {cfg.rope.type!r}")
        elif stage_bases[-1] is not None and stage_bases[-1] != cfg.rope.rope_theta:
            problems.append(
                f"the last curriculum stage's rope_theta={stage_bases[-1]} differs from rope.rope_theta="
                f"{cfg.rope.rope_theta}, which the export carries: make them equal"
            )
    for i, stage in enumerate(cfg.curriculum.stages):
        rows = cfg.curriculum.tokens_per_step // stage.length
        if rows % (t.micro_batch_size * world_size):
            problems.append(
                f"curriculum.stages[{i}]: {rows} rows per step do not split into micro-batches of "
                f"{t.micro_batch_size} on {world_size} process(es); change train.micro_batch_size or tokens_per_step"
            )
        if stage.length > addressable:
            problems.append(
                f"curriculum.stages[{i}].length={stage.length} is longer than the {addressable} positions the model "
                "addresses with this rope config: raise rope.factor or shorten the stage"
            )
    return problems


def stage_rope_theta(cfg: ExtendConfig, index: int) -> float | None:
    """The RoPE base of curriculum stage `index`: its own, else rope.rope_theta; None when no stage sets one."""
    bases = [s.rope_theta for s in cfg.curriculum.stages]
    if all(b is None for b in bases):
        return None
    return bases[index] if bases[index] is not None else cfg.rope.rope_theta


# train.tracker -> the package accelerate needs for it.
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def tracker_for(name: str) -> str | None:
    """The accelerate tracker to log to. TensorBoard is the default only where it is installed."""
    if name == "none":
        return None
    if name not in TRACKERS:
        raise ConfigError([f"train.tracker={name!r} is unknown; choose none, {', '.join(TRACKERS)}"])
    if importlib.util.find_spec(TRACKERS[name]) is None:
        if name == "tensorboard":
            print("train.tracker=tensorboard: tensorboard is not installed, logging to the console only "
                  "(pip install tensorboard, or set train.tracker=none to silence this)", file=sys.stderr)
            return None
        raise ConfigError([f"train.tracker={name}: the {TRACKERS[name]} package is not installed (pip install {TRACKERS[name]})"])
    return name


def flat_config(cfg: ExtendConfig) -> dict[str, str | int | float | bool]:
    """The config as flat scalars, for trackers' hyperparameter tables."""
    flat = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = value if isinstance(value, (str, int, float, bool)) else str(value)

    walk("", asdict(cfg))
    return flat


def setup(cfg: ExtendConfig) -> Run:
    tracker = tracker_for(cfg.train.tracker)
    problems = check_accelerate(cfg)
    if problems:
        raise ConfigError(problems)
    accelerator = build_accelerator(cfg, tracker)
    set_seed(cfg.seed)
    run_dir = Path(cfg.output_dir)

    # Everything that can be wrong is found before any weights load. What is built once and cached (the
    # tiny tokenizer, the tiny base) is built by the main process while the others wait.
    with accelerator.main_process_first():
        tokenizer = load_tokenizer(cfg.data.tokenizer, cfg.data.cache_dir)
        base_config = load_base_config(cfg.model, tokenizer=tokenizer)
    resolved = resolve_rope(cfg.rope, base_config)
    model_config = apply_rope(base_config, resolved)
    addressable = config_served_lengths(model_config, None)["transformers"]
    adapter = build_adapter(cfg.adapter)
    problems = check_training(cfg, accelerator.num_processes, addressable)
    problems += adapter.check_steps(sum(s.steps for s in cfg.curriculum.stages))
    problems += check_accelerate(cfg, getattr(model_config, "num_attention_heads", None), accelerator.num_processes)
    if cfg.publish.repo_id is not None:  # a bad repository id or a missing token fails now, not after training
        from extend.publish import training_problems

        problems += training_problems(cfg)
    if cfg.eval.after_training:
        from extend.eval.runner import check_eval_config

        problems += check_eval_config(cfg.eval)
        too_long = [n for n in cfg.eval.lengths if n > addressable]
        if too_long and not cfg.eval.extrapolate:
            problems.append(f"eval.lengths {too_long} exceed the {addressable} positions the export will address; "
                            "drop them or set eval.extrapolate=true")
    # The adapter checks module names on a weightless copy of the model (meta device): no memory, no I/O.
    with without_zero3_init(accelerator), torch.device("meta"):
        problems += adapter.check(AutoModelForCausalLM.from_config(model_config, attn_implementation=attention_for(model_config, "sdpa")))
    if problems:
        raise ConfigError(problems)
    if read_manifest(Path(cfg.data.output_dir)) is None:
        # Tokenising inside a multi-process job races the distributed timeout (LongLoRA #45): only a
        # single process prepares a missing dataset itself.
        if accelerator.num_processes > 1:
            raise ConfigError([f"{cfg.data.output_dir} has no prepared dataset; run `python -m data_prep` with the "
                               "same recipe and overrides before launching on several processes"])
        accelerator.print(f"{cfg.data.output_dir} has no dataset yet: preparing it (python -m data_prep does the same)")
        prepare(cfg)
    manifest = verify_dataset(cfg.data.output_dir, cfg, tokenizer)
    stages = stages_from_manifest(Path(cfg.data.output_dir), manifest)

    model = load_base_model(cfg.model, model_config, seed=cfg.seed, quantize=cfg.adapter.quantize)
    if cfg.train.packed_attention:
        use_packed_attention(model)
    model = adapter.attach(model)
    if cfg.train.gradient_checkpointing:
        causal_lm_of(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    accelerator.print(f"{cfg.adapter.type}: {adapter.trainable_summary(model)}")

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.train.learning_rate, betas=tuple(cfg.train.adam_betas), weight_decay=cfg.train.weight_decay
    )
    total_steps = sum(s.steps for s in stages)
    scheduler = build_scheduler(optimizer, cfg.train.lr_schedule, cfg.train.warmup_steps, total_steps, cfg.train.min_lr_ratio)
    state = TrainState(
        config_fingerprint=config_fingerprint(cfg),
        format="deepspeed" if is_deepspeed(accelerator) else "trainable",
        processes=accelerator.num_processes,
        accelerate=cfg.accelerate.name,
    )
    checkpoint = load_latest(run_dir / "checkpoints")
    if checkpoint is not None:
        check_resumable(cfg, checkpoint, state)

    if tracker is not None:
        accelerator.init_trackers(cfg.run_name, config=flat_config(cfg))
    wrapped, optimizer, scheduler = accelerator.prepare(ChunkedCausalLM(model, cfg.train.loss_chunk_size), optimizer, scheduler)
    run = Run(cfg, accelerator, tokenizer, adapter, wrapped, optimizer, scheduler, stages, state, model_config, manifest, run_dir)
    if checkpoint is not None:
        resume(run, checkpoint)
    return run


@contextlib.contextmanager
def without_zero3_init(accelerator: Accelerator):
    """A context in which models build whole, even under ZeRO-3 (whose plugin makes transformers partition
    every new model). accelerate's own zero3_init_context_manager leaves transformers' flag set."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None or not plugin.is_zero3_init_enabled():
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def check_resumable(cfg: ExtendConfig, checkpoint: Checkpoint, state: TrainState) -> None:
    """Refuse a checkpoint this run cannot continue exactly, saying how to continue it."""
    found, folder = checkpoint.state, checkpoint.folder
    if cfg.train.resume == "never":
        raise ConfigError([f"{folder.parent.parent} already has checkpoints; set train.resume=auto or choose another run_name"])
    if found.config_fingerprint != state.config_fingerprint:
        raise ConfigError([f"{folder} was written by a different config; resume with the same recipe and overrides, "
                           "or choose another run_name"])
    if found.format != state.format:
        raise ConfigError([f"{folder} holds a {found.format} checkpoint (accelerate={found.accelerate}); resume with "
                           f"accelerate={found.accelerate}"])
    if found.format == "deepspeed" and (found.processes, found.accelerate) != (state.processes, state.accelerate):
        raise ConfigError([
            f"{folder} holds DeepSpeed shards of accelerate={found.accelerate} on {found.processes} processes; this "
            f"launch is accelerate={state.accelerate} on {state.processes}. Resume with the same option and process "
            "count (a ddp run's checkpoints resume on any count)"
        ])


def resume(run: Run, checkpoint: Checkpoint) -> None:
    """Restore the trained weights, optimizer, scheduler, RNG and position in the curriculum."""
    acc = run.accelerator
    if checkpoint.state.format == "deepspeed":
        acc.load_state(str(checkpoint.folder / "deepspeed"))
    else:
        load_trainable_state(acc.unwrap_model(run.model).model, checkpoint.trainable())
        checkpoint.restore_optimizer(run.optimizer, run.scheduler)
        checkpoint.restore_rng()
    run.adapter.load_state(acc.unwrap_model(run.model).model, checkpoint.state.adapter_state)
    # The run's own process count and option are recorded from here on (a ddp run may change count).
    run.state = replace(checkpoint.state, processes=run.state.processes, accelerate=run.state.accelerate)
    acc.print(f"resumed from {checkpoint.folder} (step {run.state.step})")


def train_step(run: Run, rows: dict[str, torch.Tensor]) -> float:
    """One optimizer step over one step's rows; returns the mean loss per scored token."""
    acc, cfg = run.accelerator, run.cfg
    # Normalise by the tokens of the whole step (all processes see all rows), so the gradient is the
    # same however the step is split into micro-batches and processes.
    step_tokens = int((shifted_targets(rows["labels"], rows["position_ids"]) != -100).sum())
    batches = micro_batches(rows, cfg.train.micro_batch_size, acc.process_index, acc.num_processes)
    inner = acc.unwrap_model(run.model).model
    loss_total = torch.zeros((), device=acc.device)
    for i, batch in enumerate(batches):
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        sync = i == len(batches) - 1
        acc.sync_gradients = sync  # DeepSpeed steps its engine on the backward of the last micro-batch
        with contextlib.nullcontext() if sync else acc.no_sync(run.model):
            loss_sum, _ = run.model(**batch)
            loss = loss_sum * acc.num_processes / max(step_tokens, 1)
            penalty = run.adapter.regularization(inner) if sync else None
            acc.backward(loss if penalty is None else loss + penalty)  # the penalty once per step
        loss_total += loss_sum.detach()
    run.adapter.before_optimizer_step(inner)
    if cfg.train.max_grad_norm > 0:
        acc.clip_grad_norm_(run.model.parameters(), cfg.train.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return (acc.reduce(loss_total, reduction="sum") / max(step_tokens, 1)).item()


def fit(run: Run, stop: StopRequest | None = None) -> bool:
    """Train to the end of the curriculum; returns False when a stop request ended it early (after a
    checkpoint at the step where it arrived)."""
    acc, cfg, state = run.accelerator, run.cfg, run.state
    progress = tqdm(total=run.total_steps, initial=state.step, desc="train", disable=not acc.is_main_process)
    for stage in run.stages[state.stage :]:
        rows = StageRows(stage)
        stage_base = stage_rope_theta(cfg, stage.index)
        if stage_base is not None:
            set_rope_theta(acc.unwrap_model(run.model).causal_lm, stage_base)
        while state.stage_step < stage.steps and state.step < run.total_steps:
            started = time.perf_counter()
            loss = train_step(run, rows.step_rows(state.stage_step))
            elapsed = time.perf_counter() - started
            state.step += 1
            state.stage_step += 1
            state.tokens_seen += stage.rows_per_step * stage.length
            state.train_seconds += elapsed
            state.losses.append(loss)
            progress.update(1)
            run.adapter.after_step(acc.unwrap_model(run.model).model, state.step)
            state.adapter_state = run.adapter.state()
            if state.step % cfg.train.log_every == 0 or state.step == run.total_steps:
                log = StepLog(
                    state.step, run.total_steps, stage.index, len(run.stages), stage.length, loss,
                    run.scheduler.get_last_lr()[0], stage.rows_per_step * stage.length / elapsed, peak_memory_gb(),
                )
                if acc.is_main_process:
                    progress.write(log.line())
                acc.log(log.metrics(), step=state.step)
            if cfg.train.checkpoint_every and state.step % cfg.train.checkpoint_every == 0:
                checkpoint(run)
            if stop is not None and stop.agreed(acc) and state.step < run.total_steps:
                if not cfg.train.checkpoint_every or state.step % cfg.train.checkpoint_every:
                    checkpoint(run)
                progress.close()
                acc.print(f"stopped at step {state.step}/{run.total_steps} with a checkpoint; rerun the same command "
                          "to continue")
                return False
        if state.step >= run.total_steps:
            break
        state.stage += 1
        state.stage_step = 0
    progress.close()
    return True


def checkpoint(run: Run) -> None:
    acc, root, keep = run.accelerator, run.run_dir / "checkpoints", run.cfg.train.keep_checkpoints
    acc.wait_for_everyone()
    if run.state.format == "deepspeed":
        # Every process writes its own ZeRO shards into the staging folder; the main process then marks it
        # complete and renames it into place.
        tmp = staging_folder(root, run.state.step)
        if acc.is_main_process:
            prepare_staging(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp / "deepspeed"))
        acc.wait_for_everyone()
        if acc.is_main_process:
            commit_checkpoint(root, tmp, run.state, keep)
    elif acc.is_main_process:
        inner = acc.unwrap_model(run.model).model
        save_checkpoint(root, run.state, trainable_state(inner), run.optimizer, run.scheduler, keep)
    acc.wait_for_everyone()


def trained_model(run: Run) -> nn.Module | None:
    """The adapted model with its trained weights, whole, on the main process (None on the others).

    Under DeepSpeed the weights may be sharded (ZeRO-3): every process takes part in gathering them, and
    the main process loads what trained into a fresh, unsharded copy of the base.
    """
    acc = run.accelerator
    if run.state.format != "deepspeed":
        return acc.unwrap_model(run.model).model if acc.is_main_process else None
    names = [name for name, p in acc.unwrap_model(run.model).model.named_parameters() if p.requires_grad]
    full = acc.get_state_dict(run.model)  # collective
    if not acc.is_main_process:
        return None
    with without_zero3_init(acc):
        model = run.adapter.attach(load_base_model(run.cfg.model, run.model_config, seed=run.cfg.seed))
    load_trainable_state(model, {name: full[f"model.{name}"] for name in names})
    run.adapter.load_state(model, run.state.adapter_state)
    return model


def export(run: Run) -> Path:
    """outputs/<run>/final/: merged model + portable rope config, tokenizer, adapter/, run_card.json."""
    acc, cfg = run.accelerator, run.cfg
    acc.wait_for_everyone()
    final = run.run_dir / "final"
    inner = trained_model(run)
    if acc.is_main_process:
        tmp = run.run_dir / "final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if cfg.adapter.type != "full":
            run.adapter.save(inner, tmp / "adapter")
        adapter_card = run.adapter.describe(inner)
        if cfg.adapter.quantize:
            # Merging into quantized weights would round the result: fold the adapter into the base
            # reloaded at full precision instead.
            base = load_base_model(cfg.model, run.model_config, seed=cfg.seed)
            merged = PeftModel.from_pretrained(base, tmp / "adapter").merge_and_unload()
        else:
            merged = run.adapter.merged(inner)
        restore_attention(merged)
        save_extended(merged, run.tokenizer, tmp)
        write_run_card(tmp, {
            "run_name": cfg.run_name,
            "config": asdict(cfg),
            "config_fingerprint": run.state.config_fingerprint,
            "data_manifest": {k: run.manifest[k] for k in ("config_fingerprint", "tokenizer_fingerprint") if k in run.manifest},
            "steps": run.state.step,
            "tokens": run.state.tokens_seen,
            "train_seconds": round(run.state.train_seconds, 2),
            "processes": acc.num_processes,
            "accelerate": asdict(cfg.accelerate),
            **({"adapter": adapter_card} if adapter_card else {}),
            "hardware": hardware(),
            "final_loss": run.state.losses[-1] if run.state.losses else None,
            "losses": run.state.losses,
        })
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        acc.print(f"exported {final}")
    acc.wait_for_everyone()
    return final


def evaluate_export(cfg: ExtendConfig, final: Path) -> None:
    """eval.after_training: the exported folder, loaded as a user would, next to eval.comparisons."""
    from extend.eval import run_eval  # the evaluation stack is only needed when asked for
    from extend.eval.runner import AFTER_TRAINING

    evaluated = replace(
        cfg,
        model=replace(cfg.model, name_or_path=str(final)),
        rope=RopeConfig(),  # the export's config already carries the method
        eval=replace(cfg.eval, output_dir=cfg.eval.output_dir or str(final / "eval" / AFTER_TRAINING),
                     name=cfg.eval.name or cfg.run_name),
    )
    run_eval(evaluated)


def train(cfg: ExtendConfig) -> Path:
    """The whole run for a composed, typed config; returns the export folder."""
    run = setup(cfg)
    with StopRequest() as stop:
        finished = fit(run, stop)
    if not finished:
        run.accelerator.end_training()
        # A process stopped because another one was signalled exits as if it had been sent SIGTERM too.
        raise SystemExit(128 + (stop.signal or signal.SIGTERM))
    final = export(run)
    run.accelerator.end_training()
    if cfg.eval.after_training and run.accelerator.is_main_process:
        evaluate_export(cfg, final)
    if cfg.publish.repo_id is not None and run.accelerator.is_main_process:
        publish_export(cfg, run.run_dir)
    return final


def publish_export(cfg: ExtendConfig, run_dir: Path) -> None:
    """publish.repo_id: the export (and its evaluation) verified and uploaded, as `python -m extend.publish` does."""
    from extend.publish import PublishError, publish_run

    try:
        publish_run(cfg.publish, run_dir=run_dir)
    except PublishError as err:
        raise PublishError(f"{err}\nThe export {run_dir / 'final'} is complete: publish it again with `python -m "
                           f"extend.publish run={run_dir} repo_id={cfg.publish.repo_id}`") from err


if __name__ == "__main__":
    run_cli(train, job_name="train")
