"""How a run is spread over processes: the Accelerator for conf/accelerate/, its checks, and preemption.

The engines do the distributing (torch DDP, DeepSpeed ZeRO through accelerate); this module only builds
them from the typed config and refuses the combinations that would silently do something else:

- a launcher that started N processes while accelerate sees one (each rank would train alone, all thinking
  they are rank 0: accelerate #2816, and what `Accelerator(cpu=True)` does to DeepSpeed);
- sequence-parallel sizes that do not divide the processes, heads or stage lengths.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

import torch
from accelerate import Accelerator, DeepSpeedPlugin
from accelerate.state import AcceleratorState
from accelerate.utils import InitProcessGroupKwargs

from extend.config import ConfigError, ExtendConfig

STRATEGIES = ("ddp", "deepspeed")
OFFLOAD_DEVICES = ("none", "cpu")


def launched_processes() -> int:
    """The process count the launcher (torchrun, accelerate launch, srun) announced to this process."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_accelerate(cfg: ExtendConfig, num_heads: int | None = None, world_size: int | None = None,
                     launched: bool | None = None, kv_heads: int | None = None) -> list[str]:
    """Problems with conf/accelerate/ for this run, found before any model loads. `launched`: whether a
    launcher starts the processes (default: whether this process was started by one); `num_heads`,
    `kv_heads`: the model's query and key/value heads (None: not known)."""
    a, problems = cfg.accelerate, []
    world_size = launched_processes() if world_size is None else world_size
    launched = "LOCAL_RANK" in os.environ if launched is None else launched
    if a.strategy not in STRATEGIES:
        problems.append(f"accelerate.strategy={a.strategy!r} is unknown; choose ddp or deepspeed")
    if a.strategy == "deepspeed":
        if a.zero_stage not in (1, 2, 3):
            problems.append(f"accelerate.zero_stage={a.zero_stage}: choose 1, 2 or 3")
        for key in ("offload_optimizer", "offload_params"):
            if getattr(a, key) not in OFFLOAD_DEVICES:
                problems.append(f"accelerate.{key}={getattr(a, key)!r}: choose none or cpu")
        if a.offload_params != "none" and a.zero_stage != 3:
            problems.append("accelerate.offload_params needs accelerate.zero_stage=3 (only ZeRO-3 shards parameters)")
        if cfg.adapter.quantize:
            problems.append("adapter.quantize (QLoRA) runs under accelerate=ddp; DeepSpeed cannot shard quantized weights")
        if cfg.adapter.type == "lofit" and a.zero_stage == 3:
            problems.append("adapter.type=lofit runs under accelerate=ddp or zero2: its head ranking reads the scalings "
                            "whole, which ZeRO-3 shards (and a frozen base needs no parameter sharding)")
        if not launched:
            problems.append(f"accelerate={a.name} (DeepSpeed) needs a launcher, even for one process: "
                            "./launch.sh --processes N ... (or torchrun / accelerate launch)")
    sp = a.sequence_parallel_size
    if sp < 1:
        problems.append(f"accelerate.sequence_parallel_size={sp} must be >= 1")
    elif sp > 1:
        problems += _sequence_parallel_problems(cfg, sp, num_heads, kv_heads, world_size)
    return problems


def _sequence_parallel_problems(cfg: ExtendConfig, sp: int, num_heads: int | None, kv_heads: int | None,
                                world_size: int) -> list[str]:
    """What DeepSpeed Ulysses on our loop needs (extend/training/sequence_parallel.py)."""
    if cfg.accelerate.strategy != "deepspeed":  # the rest depends on it: one line
        return [f"accelerate.sequence_parallel_size={sp} needs a DeepSpeed option: add accelerate=zero2 or zero3"]
    problems = []
    if world_size % sp:
        problems.append(f"accelerate.sequence_parallel_size={sp} does not divide the {world_size} launched processes")
    if num_heads is not None and num_heads % sp:
        problems.append(f"accelerate.sequence_parallel_size={sp} does not divide the model's {num_heads} attention heads")
    if kv_heads is not None and kv_heads % sp and sp % kv_heads:
        problems.append(f"accelerate.sequence_parallel_size={sp} and the model's {kv_heads} key/value heads: one must "
                        "divide the other")
    for i, stage in enumerate(cfg.curriculum.stages):
        if stage.length % sp:
            problems.append(f"curriculum.stages[{i}].length={stage.length} does not split into {sp} equal sequence shards")
    if cfg.train.attention != "full":
        problems.append(f"accelerate.sequence_parallel_size={sp} runs with train.attention=full only (the engine's "
                        f"all-to-all hands each process a subset of the heads, which train.attention="
                        f"{cfg.train.attention} does not expect): set train.attention=full or sequence_parallel_size=1")
    if not cfg.train.packed_attention or cfg.model.attn_implementation != "sdpa":
        problems.append(f"accelerate.sequence_parallel_size={sp} runs DeepSpeed Ulysses around extend's per-document "
                        "SDPA: set train.packed_attention=true and model.attn_implementation=sdpa")
    return problems


def deepspeed_config(cfg: ExtendConfig, hidden_size: int | None = None) -> dict:
    """The DeepSpeed config for accelerate=zero*: our loop accumulates micro-batches itself (one engine step
    per optimizer step) and uses a torch optimizer, which every ZeRO stage and offload accepts.

    Communication buckets are sized from the model as transformers' Trainer does (hidden_size², 0.9 x that
    for ZeRO-3's prefetch, 10 x hidden_size for parameters kept whole): "auto", which accelerate fills from the
    prepared model's config, or integers from `hidden_size` for an engine built directly. DeepSpeed's own
    defaults (5e8 elements for the reduce bucket: 2 GB in float32) are sized for billions of parameters and
    would dwarf a small model's activations."""
    a, t = cfg.accelerate, cfg.train
    zero: dict = {"stage": a.zero_stage}
    square = "auto" if hidden_size is None else hidden_size * hidden_size
    zero["reduce_bucket_size"] = square
    if a.zero_stage == 3:
        zero["stage3_prefetch_bucket_size"] = "auto" if hidden_size is None else int(0.9 * square)
        zero["stage3_param_persistence_threshold"] = "auto" if hidden_size is None else 10 * hidden_size
    if a.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": a.offload_optimizer}
    if a.offload_params != "none":
        zero["offload_param"] = {"device": a.offload_params}
    if a.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "zero_optimization": zero,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": t.max_grad_norm,
        "zero_force_ds_cpu_optimizer": False,
        "bf16": {"enabled": t.mixed_precision == "bf16"},
        "fp16": {"enabled": t.mixed_precision == "fp16"},
        "steps_per_print": 1 << 30,
    }


def build_accelerator(cfg: ExtendConfig, tracker: str | None) -> Accelerator:
    """The Accelerator for cfg.accelerate; refuses a launch whose processes it cannot see."""
    on_cpu = not torch.cuda.is_available()
    kwargs: dict = dict(mixed_precision=cfg.train.mixed_precision, log_with=tracker, project_dir=cfg.output_dir)
    if cfg.accelerate.strategy == "deepspeed":
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(
            hf_ds_config=deepspeed_config(cfg), zero3_init_flag=cfg.accelerate.zero_stage == 3
        )
        if on_cpu and launched_processes() > 1:
            # accelerate only starts DeepSpeed's process group on CPU when told to use gloo.
            kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
    elif on_cpu and launched_processes() > 1:
        kwargs["cpu"] = True  # accelerate's multi-process CPU path (gloo); without it each rank trains alone
    # accelerate keeps one AcceleratorState per process and refuses a second Accelerator with another
    # mixed precision; a run started in a process that ran another (a study, a notebook) must get its own.
    # The process group (PartialState) is kept.
    AcceleratorState._reset_state()
    accelerator = Accelerator(**kwargs)
    if accelerator.num_processes != launched_processes():
        raise ConfigError([
            f"the launcher started {launched_processes()} processes but accelerate sees {accelerator.num_processes}: "
            "launch with ./launch.sh or torchrun (on CPU, `accelerate launch --cpu` starts one process)"
        ])
    return accelerator


def is_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.state.deepspeed_plugin is not None


class StopRequest:
    """SIGTERM / SIGINT (cluster preemption, Ctrl-C) ask the loop to checkpoint at the next step boundary
    and exit cleanly, instead of dying mid-step. A second signal of the same kind stops at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, sig: int, frame: FrameType | None) -> None:
        if self.signal == sig:
            raise KeyboardInterrupt if sig == signal.SIGINT else SystemExit(128 + sig)
        self.signal = sig
        print(f"\n{signal.Signals(sig).name}: checkpointing at the end of this step, then exiting "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    def agreed(self, accelerator: Accelerator) -> bool:
        """Whether any process was asked to stop (all processes must stop at the same step)."""
        flag = torch.tensor(float(self.signal is not None), device=accelerator.device)
        if accelerator.num_processes > 1:
            flag = accelerator.reduce(flag, reduction="sum")
        return bool(flag.item() > 0)
