"""Extend a model's context window: `accelerate launch extend/train.py recipe=NAME [overrides]`.

Also runs as `python extend/train.py ...` or `python -m extend.train ...`; `--check` composes and
validates the config, prints one line and exits (0: ok, 2: the problems), writing nothing. Reads top to
bottom, as a recipe:

    validate (every problem, before anything is written) -> setup_accelerator -> setup_tokenizer ->
    setup_data -> setup_model -> setup_optimizer -> setup_state (resume) -> fit (curriculum stages,
    checkpoints) -> export (merged model, adapter, run card) -> optional evaluation -> optional publishing
"""

from __future__ import annotations

import contextlib
import gc
import signal
import shutil
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
from transformers import PreTrainedConfig, PreTrainedTokenizerBase

import extend  # noqa: F401  (registers entropy_abf)
from extend.adapters import Adapter, build_adapter, load_trainable_state, trainable_state
from extend.cli import given_overrides, run_cli
from extend.config import DecoderConfig, ExtendConfig, RopeConfig  # noqa: F401  (ExtendConfig: the old name)
from extend.data.curriculum import plan_stages
from extend.data.manifest import read_manifest, verify_dataset
from extend.data.prepare import prepare
from extend.models import load_base_config, load_base_model, save_extended, set_attention_scaling, set_rope_theta
from extend.models.training_attention import restore_attention, use_training_attention
from extend.models.tokenizer import load_tokenizer
from extend.rope import METHODS, apply_rope, resolve_rope
from extend.rope.clex import export_clex, train_ode
from extend.training.batches import Stage, StageRows, micro_batches, stages_from_manifest
from extend.training.checkpoint import (
    Checkpoint, TrainState, commit_checkpoint, load_latest, prepare_staging, save_checkpoint, staging_folder,
)
from extend.training.distributed import StopRequest, build_accelerator, is_deepspeed
from extend.training.loss import resolve_loss, shifted_targets
from extend.training.memory import activation_offload, tile_mlps, untile_mlps
from extend.training.model import ChunkedCausalLM, adapted_model, causal_lm_of, gathered, without_zero3_init
from extend.training.nodes import PeerWatch, check_shared_folder, several_nodes
from extend.training.report import StepLog, hardware, peak_memory_gb, write_run_card
from extend.training.run_config import (
    LOGS, config_fingerprint, finished_export, fingerprinted_config, flat_config, record_config, tracker_for,
)
from extend.training.schedule import build_scheduler
from extend.training.sequence_parallel import SequenceParallel, enable_sequence_parallel
from extend.validation import check_training, validate_training  # noqa: F401  (check_training: tests, bench)

__all__ = [
    "Run", "backward_loss", "check_training", "export", "fit", "forward_loss", "setup", "step_inputs", "train", "train_step",
]


@dataclass
class Run:
    cfg: DecoderConfig
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
    sp: SequenceParallel = SequenceParallel()  # this process's place in its sequence-parallel group

    @property
    def total_steps(self) -> int:
        return planned_steps(self.cfg, sum(s.steps for s in self.stages))

    @property
    def adapted(self) -> nn.Module:
        """The adapted model (peft wrapper or plain causal LM) inside what accelerate prepared."""
        return adapted_model(self.accelerator, self.model)


def planned_steps(cfg: DecoderConfig, curriculum_steps: int) -> int:
    """The optimizer steps this run trains: the curriculum's, capped by train.max_steps."""
    return curriculum_steps if cfg.train.max_steps is None else min(curriculum_steps, cfg.train.max_steps)


def train(cfg: DecoderConfig) -> Path:
    """The whole run for a composed, typed config: validate, then run; returns the export folder."""
    validate_training(cfg)
    return run_validated(cfg)


def run_validated(cfg: DecoderConfig) -> Path:
    """The run of a config validate_training accepted (the command line validates before calling this)."""
    run_dir = Path(cfg.output_dir)
    done = finished_export(run_dir, config_fingerprint(cfg), planned_steps(cfg, sum(p.steps for p in plan_stages(cfg.curriculum))))
    if done is not None:
        print(f"{done} was already exported by this config: nothing to do. To train again, choose another run_name "
              f"or remove {done}")
        return done
    # Every process must stay alive from setup to the export; a lost one stops the run on every node.
    with PeerWatch(cfg.accelerate.peer_timeout):
        run = setup(cfg)
        with StopRequest() as stop:
            finished = fit(run, stop)
        if not finished:
            run.accelerator.end_training()
            # A process stopped because another one was signalled exits as if it had been sent SIGTERM too.
            raise SystemExit(128 + (stop.signal or signal.SIGTERM))
        final = export(run)
    main = run.accelerator.is_main_process
    # The evaluation loads the export onto the GPU(s) (eval.device): give back what training held first
    # (before end_training, which ends the process group DeepSpeed's engine still reports through).
    run.accelerator.free_memory()
    run.accelerator.end_training()
    del run
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if cfg.eval.after_training and main:
        evaluate_export(cfg, final)
    if cfg.publish.repo_id is not None and main:
        publish_export(cfg, run_dir)
    return final


# ----------------------------------------------------------------------------------------------- setup


def setup(cfg: DecoderConfig) -> Run:
    """Everything the loop needs, for a validated config."""
    accelerator, tracker = setup_accelerator(cfg)
    tokenizer, model_config = setup_tokenizer(cfg, accelerator)
    manifest, stages = setup_data(cfg, accelerator, tokenizer)
    adapter, model = setup_model(cfg, accelerator, model_config)
    sp = enable_sequence_parallel(causal_lm_of(model), cfg.accelerate.sequence_parallel_size, cfg.train.micro_batch_size)
    optimizer, scheduler = setup_optimizer(cfg, model, stages)
    state, checkpoint = setup_state(cfg, accelerator)
    if tracker is not None:
        # TensorBoard writes into <output_dir>/logs; other trackers take the run name as their project.
        accelerator.init_trackers(LOGS if tracker == "tensorboard" else cfg.run_name, config=flat_config(cfg))
    loss = resolve_loss(cfg.train.loss, accelerator.device.type)
    if loss != cfg.train.loss:
        accelerator.print(f"train.loss={cfg.train.loss}: {loss} on {accelerator.device.type}")
    module = ChunkedCausalLM(model, cfg.train.loss_chunk_size, loss, cfg.train.attention)
    wrapped, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    run = Run(cfg, accelerator, tokenizer, adapter, wrapped, optimizer, scheduler, stages, state, model_config, manifest,
              Path(cfg.output_dir), sp)
    if checkpoint is not None:
        resume(run, checkpoint)
    return run


def setup_accelerator(cfg: DecoderConfig) -> tuple[Accelerator, str | None]:
    """The Accelerator for conf/accelerate/ (refusing a launch it cannot see), the seed, and the run record."""
    tracker = tracker_for(cfg.train.tracker)
    accelerator = build_accelerator(cfg, tracker)
    if several_nodes():  # checkpoints and the export are written by several processes into one folder
        check_shared_folder(Path(cfg.output_dir), accelerator.process_index)
    set_seed(cfg.seed)
    if accelerator.is_main_process:
        record_config(cfg, Path(cfg.output_dir), given_overrides())
    return accelerator, tracker


def setup_tokenizer(cfg: DecoderConfig, accelerator: Accelerator) -> tuple[PreTrainedTokenizerBase, PreTrainedConfig]:
    """The tokenizer and the base's config with the position method. What is built once and cached (the
    tiny tokenizer, the tiny base) is built by the main process while the others wait."""
    with accelerator.main_process_first():
        tokenizer = load_tokenizer(cfg.data.tokenizer, cfg.data.cache_dir)
        base_config = load_base_config(cfg.model, tokenizer=tokenizer)
    return tokenizer, apply_rope(base_config, resolve_rope(cfg.rope, base_config))


def setup_data(cfg: DecoderConfig, accelerator: Accelerator, tokenizer) -> tuple[dict, list[Stage]]:
    """The prepared dataset (prepared here on a single process when missing), verified against the config."""
    folder = Path(cfg.data.output_dir)
    if read_manifest(folder) is None:  # validation refused this on several processes
        accelerator.print(f"{folder} has no dataset yet: preparing it (python -m data_prep does the same)")
        prepare(cfg)
    manifest = verify_dataset(folder, cfg, tokenizer)
    return manifest, stages_from_manifest(folder, manifest)


def setup_model(cfg: DecoderConfig, accelerator: Accelerator, model_config: PreTrainedConfig) -> tuple[Adapter, nn.Module]:
    """The base's weights under the position method, with the adapter attached."""
    adapter = build_adapter(cfg.adapter)
    model = load_base_model(cfg.model, model_config, seed=cfg.seed, quantize=cfg.adapter.quantize)
    use_training_attention(model, cfg.train)
    model = adapter.attach(model)
    train_ode(model)  # CLEX's ODE trains under every adapter (none for other methods)
    if cfg.train.gradient_checkpointing:
        causal_lm_of(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.train.tiled_mlp:
        tile_mlps(causal_lm_of(model))
    # from_pretrained returns the model in eval mode; transformers checkpoints a layer, and dropout (LoRA's
    # among it) applies, only in training mode.
    model.train()
    accelerator.print(f"{cfg.adapter.type}: {adapter.trainable_summary(model)}")
    return adapter, model


def setup_optimizer(cfg: DecoderConfig, model: nn.Module, stages: list[Stage]):
    """AdamW over the trainable parameters and the learning-rate schedule over the whole curriculum."""
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.learning_rate, betas=tuple(t.adam_betas), weight_decay=t.weight_decay)
    total_steps = sum(s.steps for s in stages)
    return optimizer, build_scheduler(optimizer, t.lr_schedule, t.warmup_steps, total_steps, t.min_lr_ratio)


def setup_state(cfg: DecoderConfig, accelerator: Accelerator) -> tuple[TrainState, Checkpoint | None]:
    """A fresh train state and the newest checkpoint to continue (validation checked it belongs to this run)."""
    state = TrainState(
        config_fingerprint=config_fingerprint(cfg), config=fingerprinted_config(cfg),
        format="deepspeed" if is_deepspeed(accelerator) else "trainable",
        processes=accelerator.num_processes,
        accelerate=cfg.accelerate.name,
    )
    return state, load_latest(Path(cfg.output_dir) / "checkpoints")


def resume(run: Run, checkpoint: Checkpoint) -> None:
    """Restore the trained weights, optimizer, scheduler, RNG and position in the curriculum."""
    acc = run.accelerator
    if checkpoint.state.format == "deepspeed":
        acc.load_state(str(checkpoint.folder / "deepspeed"))
    else:
        load_trainable_state(run.adapted, checkpoint.trainable())
        checkpoint.restore_optimizer(run.optimizer, run.scheduler)
        checkpoint.restore_rng()
    run.adapter.load_state(run.adapted, checkpoint.state.adapter_state)
    # The run's own process count and option are recorded from here on (a ddp run may change count).
    # The current config is recorded too: it computes what the checkpoint's did (resume_problems), but may
    # name keys added since, and the export's fingerprint is the config that finished the run.
    run.state = replace(checkpoint.state, processes=run.state.processes, accelerate=run.state.accelerate,
                        config_fingerprint=run.state.config_fingerprint, config=run.state.config)
    acc.print(f"resumed from {checkpoint.folder} (step {run.state.step})")


# ------------------------------------------------------------------------------------------------- fit


def stage_rope_theta(cfg: DecoderConfig, index: int) -> float | None:
    """The RoPE base of curriculum stage `index`: its own, else rope.rope_theta; None when no stage sets one."""
    bases = [s.rope_theta for s in cfg.curriculum.stages]
    if all(b is None for b in bases):
        return None
    return bases[index] if bases[index] is not None else cfg.rope.rope_theta


def stage_attention_scaling(cfg: DecoderConfig, index: int, original_length: int) -> float | None:
    """curriculum.pose_temperature=window: the position method's temperature at the real length of stage
    `index`'s rows (None, the model's own, for a stage without a PoSE span or under `span`)."""
    stage = cfg.curriculum.stages[index]
    if cfg.curriculum.pose_temperature != "window" or stage.span is None:
        return None
    return METHODS[cfg.rope.type].temperature(stage.length / original_length)


def step_inputs(run: Run, rows: dict[str, torch.Tensor]) -> tuple[list[dict[str, torch.Tensor]], int]:
    """This process's share of one step's rows: its micro-batches as model inputs (under sequence
    parallelism, its shard of each row), and the scored tokens of the whole step."""
    acc = run.accelerator
    step_tokens = int((shifted_targets(rows["labels"], rows["position_ids"]) != -100).sum())
    batches = micro_batches(rows, run.cfg.train.micro_batch_size, *run.sp.data_parallel(acc.process_index, acc.num_processes))
    return [{k: v.to(acc.device) for k, v in run.sp.shard(batch).items()} for batch in batches], step_tokens


def backward_loss(run: Run, loss_sum: torch.Tensor, step_tokens: int) -> torch.Tensor:
    """What a micro-batch back-propagates for its summed token loss.

    Normalising by the tokens of the whole step (all processes see all rows) makes the gradient the same
    however the step is split into micro-batches, processes and sequence shards. The engines average
    gradients over all processes (under sequence parallelism too: extend/training/sequence_parallel.py
    says why), hence the factor num_processes."""
    return loss_sum * run.accelerator.num_processes / max(step_tokens, 1)


def forward_loss(run: Run, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The summed token loss of one micro-batch (train.checkpoint_offload: its activations kept in host memory)."""
    with activation_offload(run.cfg.train.checkpoint_offload):
        loss_sum, _ = run.model(**inputs)
    return loss_sum


def train_step(run: Run, rows: dict[str, torch.Tensor]) -> float:
    """One optimizer step over one step's rows; returns the mean loss per scored token."""
    acc, cfg = run.accelerator, run.cfg
    batches, step_tokens = step_inputs(run, rows)
    inner = run.adapted
    loss_total = torch.zeros((), device=acc.device)
    for i, batch in enumerate(batches):
        sync = i == len(batches) - 1
        acc.sync_gradients = sync  # DeepSpeed steps its engine on the backward of the last micro-batch
        with contextlib.nullcontext() if sync else acc.no_sync(run.model):
            loss_sum = forward_loss(run, batch)
            loss = backward_loss(run, loss_sum, step_tokens)
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
        causal_lm = acc.unwrap_model(run.model).causal_lm
        stage_base = stage_rope_theta(cfg, stage.index)
        if stage_base is not None:
            set_rope_theta(causal_lm, stage_base)
        if cfg.curriculum.pose_temperature == "window":
            original = causal_lm.config.rope_parameters["original_max_position_embeddings"]
            set_attention_scaling(causal_lm, stage_attention_scaling(cfg, stage.index, original))
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
            run.adapter.after_step(run.adapted, state.step)
            state.adapter_state = run.adapter.state()
            if state.step % cfg.train.log_every == 0 or state.step == run.total_steps:
                log_step(run, stage, loss, elapsed, progress)
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


def log_step(run: Run, stage: Stage, loss: float, elapsed: float, progress) -> None:
    acc, state = run.accelerator, run.state
    log = StepLog(
        state.step, run.total_steps, stage.index, len(run.stages), stage.length, loss,
        run.scheduler.get_last_lr()[0], stage.rows_per_step * stage.length / elapsed, peak_memory_gb(),
    )
    if acc.is_main_process:
        progress.write(log.line())
    acc.log(log.metrics(), step=state.step)


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
        save_checkpoint(root, run.state, trainable_state(run.adapted), run.optimizer, run.scheduler, keep)
    acc.wait_for_everyone()


# ---------------------------------------------------------------------------------------------- export


def trained_model(run: Run) -> nn.Module | None:
    """The adapted model with its trained weights, whole, on the main process (None on the others).

    Under DeepSpeed the main process loads the base once more, whole (its frozen weights as they were
    loaded, in model.dtype), and the trained parameters are copied into it one at a time: each is gathered
    whole (ZeRO-3 shards it; every process takes part), copied, and released. Host memory on the main process
    therefore stays at the model plus one parameter, where gathering the whole state dict first would hold
    a second copy of the model (docs/training.md, "Export").
    """
    acc = run.accelerator
    if run.state.format != "deepspeed":
        return run.adapted if acc.is_main_process else None
    model = None
    if acc.is_main_process:
        with without_zero3_init(acc):
            model = run.adapter.attach(load_base_model(run.cfg.model, run.model_config, seed=run.cfg.seed))
            train_ode(model)
    targets = dict(model.named_parameters()) if model is not None else {}
    trained = [(name, p) for name, p in run.adapted.named_parameters() if p.requires_grad]
    if model is not None and {n for n, _ in trained} != {n for n, p in targets.items() if p.requires_grad}:
        raise ValueError("the trained model and the reloaded base differ in their trainable parameters: "
                         "the adapter attached differently")
    for name, param in trained:  # the same order on every process: each gather is a collective
        with gathered(acc, [param]), torch.no_grad():
            if model is not None:
                targets[name].copy_(param.data)
    if model is not None:
        run.adapter.load_state(model, run.state.adapter_state)
    return model


def export(run: Run) -> Path:
    """outputs/<run>/final/: merged model + portable rope config, tokenizer, adapter/, run_card.json."""
    acc, cfg = run.accelerator, run.cfg
    acc.wait_for_everyone()
    final = run.run_dir / "final"
    inner = trained_model(run)
    if acc.is_main_process:
        untile_mlps(causal_lm_of(inner))
        tmp = run.run_dir / "final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if cfg.adapter.type != "full":
            run.adapter.save(inner, tmp / "adapter")
        adapter_card = run.adapter.describe(inner)
        if cfg.adapter.quantize is not None:
            # Merging into quantized weights would round the result: fold the adapter into the base
            # reloaded at full precision instead.
            base = load_base_model(cfg.model, run.model_config, seed=cfg.seed)
            merged = PeftModel.from_pretrained(base, tmp / "adapter").merge_and_unload()
        else:
            merged = run.adapter.merged(inner)
        restore_attention(merged)
        export_clex(merged, trained=inner)  # CLEX: longrope factors + the ODE's weights into config.json
        save_extended(merged, run.tokenizer, tmp)
        write_run_card(tmp, run_card(run, adapter_card))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        acc.print(f"exported {final}")
    acc.wait_for_everyone()
    return final


def run_card(run: Run, adapter_card: dict | None) -> dict:
    cfg, state = run.cfg, run.state
    return {
        "run_name": cfg.run_name,
        "config": asdict(cfg),
        "config_fingerprint": state.config_fingerprint,
        "data_manifest": {k: run.manifest[k] for k in ("config_fingerprint", "tokenizer_fingerprint") if k in run.manifest},
        "steps": state.step,
        "tokens": state.tokens_seen,
        "train_seconds": round(state.train_seconds, 2),
        "processes": run.accelerator.num_processes,
        "accelerate": asdict(cfg.accelerate),
        **({"adapter": adapter_card} if adapter_card else {}),
        "hardware": hardware(),
        "final_loss": state.losses[-1] if state.losses else None,
        "losses": state.losses,
    }


# ------------------------------------------------------------------------------- evaluation, publishing


def evaluate_export(cfg: DecoderConfig, final: Path) -> None:
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


def publish_export(cfg: DecoderConfig, run_dir: Path) -> None:
    """publish.repo_id: the export (and its evaluation) verified and uploaded, as `python -m extend.publish` does."""
    from extend.publish import PublishError, publish_run

    try:
        publish_run(cfg.publish, run_dir=run_dir)
    except PublishError as err:
        raise PublishError(f"{err}\nThe export {run_dir / 'final'} is complete: publish it again with `python -m "
                           f"extend.publish run={run_dir} repo_id={cfg.publish.repo_id}`") from err


def main(argv: list[str] | None = None) -> None:
    """The command line: compose the decoder root, validate (--check stops here), run."""
    run_cli(run_validated, job_name="train", argv=argv, program="decoder", validate=validate_training)


if __name__ == "__main__":
    main()
