"""`extend plan recipe=NAME [gpus=N] [gpu_memory=80] [overrides]`: will this recipe fit, per GPU?

Composes the decoder config exactly as training does (extend.cli.run_cli), reads the base model's config only
(no weights), and estimates per GPU, for every curriculum stage: parameters, gradients and optimizer states for
the adapter, dtype, ZeRO stage and offload; activations at the stage length; the loss's logits; their total
against `gpu_memory`, and what to change when it does not fit. Pure functions below, a small CLI at the end.

Planner-only arguments (everything else is a Hydra override, as for `extend train`):
  gpus=N                processes (GPUs) the run is launched on (default 1)
  gpu_memory=GB         memory of one GPU in GB (2^30 bytes; default 80)
  base_config=PATH      a config.json (or its folder) with the base's geometry, for a Hub base not on this machine
  offload_activations   the checkpointed layer inputs live in host memory (ALST's checkpoint offload); the
                        same as train.checkpoint_offload=true, which the planner also reads
  tiled_mlp             the MLP runs in sequence tiles (ALST's TiledMLP), its intermediates ~ 0; the same as
                        train.tiled_mlp=true
"""

from __future__ import annotations

import contextlib
import os
import sys
import textwrap
from dataclasses import dataclass, replace

GB = 2**30
# Fits when the total stays under this share of gpu_memory: the rest is the CUDA context, communication
# buffers and allocator fragmentation, which the estimate does not itemise.
USABLE = 0.9
PLAN_KEYS = ("gpus", "gpu_memory", "base_config", "offload_activations", "tiled_mlp")
# LoRA target module -> (in, out) features, from the geometry (Llama/Mistral/Qwen2 names).
_LORA_SHAPES = {
    "q_proj": lambda g: (g.hidden, g.heads * g.head_dim), "k_proj": lambda g: (g.hidden, g.kv_heads * g.head_dim),
    "v_proj": lambda g: (g.hidden, g.kv_heads * g.head_dim), "o_proj": lambda g: (g.heads * g.head_dim, g.hidden),
    "gate_proj": lambda g: (g.hidden, g.intermediate), "up_proj": lambda g: (g.hidden, g.intermediate),
    "down_proj": lambda g: (g.intermediate, g.hidden),
}


class PlanError(ValueError):
    """Bad planner input: one line, exit code 2."""


@dataclass(frozen=True)
class Geometry:
    """The shapes that decide memory, read from a transformers decoder config."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, c) -> "Geometry":
        heads = c.num_attention_heads
        return cls(c.hidden_size, c.num_hidden_layers, heads, getattr(c, "num_key_value_heads", None) or heads,
                   getattr(c, "head_dim", None) or c.hidden_size // heads, c.intermediate_size, c.vocab_size,
                   bool(getattr(c, "tie_word_embeddings", False)))

    def layer_parameters(self) -> int:
        """q, k, v, o projections + gate/up/down MLP + two RMSNorms (no biases)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return 2 * self.hidden * q + 2 * self.hidden * kv + 3 * self.hidden * self.intermediate + 2 * self.hidden

    def parameters(self) -> int:
        return self.layers * self.layer_parameters() + self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def layer_activation_elements(self, tiled_mlp: bool = False) -> int:
        """Elements one decoder layer saves for its backward, per token (fused attention, no dropout).

        Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", sec. 4.1)
        count 34·h bytes per token in 16-bit for a GPT layer with a 4h GELU MLP, plus 5·a·s for attention scores.
        Counted the same way for a Llama layer: two RMSNorms (input and output each, 4h), SDPA's q, k, v and
        output (2q + 2kv), o_proj's contiguous input (q), and the SwiGLU MLP's gate, up, silu(gate) and their
        product (4I). FlashAttention/SDPA keep no scores; `tiled_mlp` (ALST) keeps one tile of the 4I only.
        """
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return 4 * self.hidden + 3 * q + 2 * kv + (0 if tiled_mlp else 4 * self.intermediate)


@dataclass(frozen=True)
class Setup:
    """What the estimate depends on: the composed config reduced to numbers, plus the launch."""

    geometry: Geometry
    adapter: str = "full"  # full, lora, lofit
    lora_r: int = 8
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    train_embeddings: bool = False
    train_norms: bool = False
    weight_bytes: int = 2  # model.dtype
    activation_bytes: int = 2  # 2 under bf16/fp16 weights or autocast, else 4
    zero_stage: int = 0  # 0 = ddp
    offload_optimizer: bool = False
    offload_params: bool = False
    gpus: int = 1
    sp: int = 1
    micro_batch: int = 1
    checkpointing: bool = True
    eager_attention: bool = False
    loss_chunk: int = 1024  # 0 = full logits
    offload_activations: bool = False
    tiled_mlp: bool = False


def check_setup(s: Setup) -> None:
    """One line for the first bad input (the train command checks the rest of the config itself)."""
    if s.gpus < 1:
        raise PlanError(f"gpus={s.gpus}: give the number of GPUs the run is launched on (>= 1)")
    if s.sp < 1 or s.gpus % s.sp:
        raise PlanError(f"accelerate.sequence_parallel_size={s.sp} must be >= 1 and divide gpus={s.gpus}")
    if s.sp > 1 and s.geometry.heads % s.sp:
        raise PlanError(f"accelerate.sequence_parallel_size={s.sp} does not divide the model's {s.geometry.heads} heads")
    unknown = [m for m in s.lora_targets if m not in _LORA_SHAPES] if s.adapter == "lora" else []
    if unknown:
        raise PlanError(f"adapter.target_modules {unknown}: the planner knows {', '.join(_LORA_SHAPES)}")
    if s.adapter not in ("full", "lora", "lofit"):
        raise PlanError(f"adapter.type={s.adapter!r}: the planner knows full, lora and lofit")


def trainable_parameters(s: Setup) -> int:
    """Full: every weight. LoRA (Hu et al. 2021): r·(in + out) per target module per layer, plus peft's
    trainable copies of the embeddings and norms (modules_to_save) when asked. LoFiT: a scale and an
    offset per head dimension per layer (an upper bound: stage 2 trains only the selected heads)."""
    g = s.geometry
    if s.adapter == "full":
        return g.parameters()
    if s.adapter == "lofit":
        return 2 * g.layers * g.heads * g.head_dim
    n = g.layers * sum(s.lora_r * sum(_LORA_SHAPES[m](g)) for m in s.lora_targets)
    return n + (g.vocab * g.hidden if s.train_embeddings else 0) + ((2 * g.layers + 1) * g.hidden if s.train_norms else 0)


def state_bytes(s: Setup) -> dict[str, float]:
    """Parameters, gradients and optimizer states per GPU, in bytes.

    ZeRO (Rajbhandari et al. 2020, sec. 3): mixed-precision Adam holds 2 bytes of 16-bit weights, 2 of 16-bit
    gradients and K = 12 of fp32 master weights, momentum and variance per trainable parameter; stage 1
    shards the 12 over the data-parallel ranks, stage 2 also the gradients, stage 3 also the weights. Under
    ddp the torch AdamW keeps momentum and variance in the weights' own dtype (2 x weight_bytes) and nothing
    is sharded. In float32 DeepSpeed keeps no master copy (8 bytes). ZeRO-Offload (Ren et al. 2021) moves the
    optimizer states and the gradients they consume (offload_optimizer) or the weights (offload_params) to host memory. Sequence-parallel
    ranks take part in ZeRO's sharding (ALST), so states divide by all `gpus`. ZeRO-3 gathers a layer at a
    time: two layers' (or the embedding's) 16-bit weights, the one in use and the prefetched one, are added.
    """
    g, n = s.geometry, s.gpus
    trainable = trainable_parameters(s)
    # peft's modules_to_save keeps the frozen embedding beside its trainable copy.
    total = g.parameters() + (g.vocab * g.hidden if s.adapter == "lora" and s.train_embeddings else 0)
    if s.zero_stage == 0:
        optimizer = trainable * 2 * s.weight_bytes
    else:
        optimizer = trainable * (12 if s.weight_bytes == 2 else 8)
    params = total * s.weight_bytes
    grads = trainable * s.weight_bytes
    gathered = 0.0
    if s.zero_stage >= 1:
        optimizer /= n
    if s.zero_stage >= 2:
        grads /= n
    if s.zero_stage == 3:
        params /= n
        gathered = 2 * max(g.layer_parameters(), g.vocab * g.hidden) * s.weight_bytes
        if s.offload_params:
            params = 0.0
    if s.offload_optimizer:  # ZeRO-Offload reduces gradients into host memory, where the optimizer steps
        optimizer = grads = 0.0
    return {"params": params + gathered, "grads": grads, "optimizer": optimizer}


def activation_parts(s: Setup, length: int) -> tuple[float, float]:
    """Activations of one micro-batch at `length` tokens per row, per GPU, in bytes: (kept, recomputed).

    tokens = micro_batch x length / sp: DeepSpeed Ulysses (Jacobs et al. 2023; ALST, Bekman et al. 2025) gives
    every rank of a sequence-parallel group 1/sp of the sequence outside attention (and 1/sp of the heads
    inside it), so activations divide by sp. Without checkpointing every layer keeps its per-token elements
    (Geometry.layer_activation_elements); with it (Chen et al. 2016; per decoder layer, as transformers does)
    every layer keeps only its input (h) and one layer is recomputed at a time. `kept` is what lives from the
    forward through the backward: those, and the decoder's embedding output, final norm and the hidden states
    the loss reads (4h). `recomputed` is what exists only in the backward: the recomputed layer and one
    layer's gradient working set (2h + 2I). Eager attention adds each layer's scores and softmax, heads x
    length^2 x 2 elements per row (Korthikanti's 5as, without the dropout mask), for every layer kept (the
    recomputed one under checkpointing). offload_activations moves the checkpointed inputs to host memory
    (ALST's checkpoint offload).
    """
    g, e = s.geometry, s.activation_bytes
    tokens = s.micro_batch * length / s.sp
    layer = g.layer_activation_elements(s.tiled_mlp)
    working = 2 * g.hidden + (0 if s.tiled_mlp else 2 * g.intermediate)
    scores = s.micro_batch * (g.heads / s.sp) * length**2 * 2 if s.eager_attention else 0
    if s.checkpointing:
        kept = tokens * ((0 if s.offload_activations else g.layers * g.hidden) + 4 * g.hidden)
        recomputed = tokens * (layer + working) + scores
    else:
        kept = tokens * (g.layers * layer + 4 * g.hidden) + g.layers * scores
        recomputed = tokens * working
    return kept * e, recomputed * e


def activation_bytes(s: Setup, length: int) -> float:
    """All activations of one micro-batch (activation_parts, kept + recomputed), per GPU, in bytes."""
    return sum(activation_parts(s, length))


def loss_bytes(s: Setup, length: int) -> float:
    """The cross-entropy's logits, per GPU, in bytes (extend/training/loss.py).

    Through autograd (full logits with loss_chunk_size=0) the backward holds, per logit, float32
    log-probabilities, the dense gradient of the NLL, the gradient of the log-softmax input, and that
    gradient in the compute dtype (e + 12 bytes). The chunked loss turns each chunk's float32 logits into
    their gradient in place (softmax minus one-hot), so one chunk's logits are alive at a time: float32,
    plus a copy in the compute dtype where that is not float32 (4 + e bytes per logit of one chunk), whether
    it computes the gradient in its forward (a plain output layer) or recomputes the chunk under
    checkpointing (ZeRO-3 partitions the output layer). With a plain output layer that trains, a float32
    gradient of its weight (vocab x h x 4) is accumulated over the chunks.
    """
    g = s.geometry
    tokens = s.micro_batch * length / s.sp
    if s.loss_chunk <= 0:
        return tokens * g.vocab * (s.activation_bytes + 12)
    chunk = min(tokens, s.loss_chunk) * g.vocab * (4 + (s.activation_bytes if s.activation_bytes != 4 else 0))
    head_grad = g.vocab * g.hidden * 4 if s.adapter == "full" and s.zero_stage != 3 else 0
    return chunk + head_grad


@dataclass(frozen=True)
class Row:
    length: int
    tokens: float
    params: float
    grads: float
    optimizer: float
    activations: float
    loss: float
    recomputed: float = 0.0  # the part of `activations` that exists only in the backward

    @property
    def total(self) -> float:
        """The peak: the loss's buffers live while the loss scores the chunks (the end of the forward, or the
        start of the backward where it recomputes them), the recomputed layer and the gradient working set
        later in the backward; the two are never alive at once, so the larger of them counts."""
        kept = self.activations - self.recomputed
        return self.params + self.grads + self.optimizer + kept + max(self.recomputed, self.loss)


def plan_rows(s: Setup, lengths: list[int]) -> list[Row]:
    check_setup(s)
    states = state_bytes(s)
    rows = []
    for n in lengths:
        kept, recomputed = activation_parts(s, n)
        rows.append(Row(n, s.micro_batch * n / s.sp, states["params"], states["grads"], states["optimizer"],
                        kept + recomputed, loss_bytes(s, n), recomputed))
    return rows


def fits(s: Setup, lengths: list[int], gpu_memory: float) -> bool:
    return max(r.total for r in plan_rows(s, lengths)) <= USABLE * gpu_memory * GB


def advice(s: Setup, lengths: list[int], gpu_memory: float) -> list[str]:
    """One line per change that alone makes the longest stage fit (or helps most), with its new peak."""
    changes: list[tuple[str, Setup]] = []
    if not s.checkpointing:
        changes.append(("train.gradient_checkpointing=true", replace(s, checkpointing=True)))
    for sp in range(2, s.gpus + 1):
        if s.gpus % sp == 0 and s.geometry.heads % sp == 0 and sp > s.sp and all(n % sp == 0 for n in lengths):
            changes.append((f"accelerate.sequence_parallel_size={sp} (needs accelerate=zero2 or zero3)", replace(s, sp=sp)))
            if fits(replace(s, sp=sp), lengths, gpu_memory):
                break
    if s.zero_stage < 3 and s.gpus > 1:
        changes.append(("accelerate=zero3", replace(s, zero_stage=3)))
    if not s.offload_optimizer:
        changes.append(("accelerate=zero3_offload (optimizer and parameters in host memory)",
                        replace(s, zero_stage=3, offload_optimizer=True, offload_params=True)))
    if s.micro_batch > 1:
        changes.append(("train.micro_batch_size=1", replace(s, micro_batch=1)))
    if s.loss_chunk <= 0:
        changes.append(("train.loss_chunk_size=1024", replace(s, loss_chunk=1024)))
    if s.eager_attention:
        changes.append(("model.attn_implementation=sdpa", replace(s, eager_attention=False)))
    lines = []
    for text, changed in changes:
        peak = max(r.total for r in plan_rows(changed, lengths)) / GB
        verdict = "fits" if peak <= USABLE * gpu_memory else "still over"
        lines.append(f"  {text}: {peak:.1f} GB per GPU ({verdict})")
    return lines


def setup_from_config(cfg, geometry: Geometry, gpus: int, offload_activations: bool = False,
                      tiled_mlp: bool = False) -> Setup:
    """The Setup of a composed ExtendConfig (typed fields only)."""
    a, t, ad = cfg.accelerate, cfg.train, cfg.adapter
    weight = 2 if cfg.model.dtype in ("bfloat16", "float16") else 4
    return Setup(
        geometry=geometry, adapter=ad.type, lora_r=ad.r, lora_targets=tuple(ad.target_modules),
        train_embeddings=ad.train_embeddings, train_norms=ad.train_norms, weight_bytes=weight,
        activation_bytes=2 if weight == 2 or t.mixed_precision in ("bf16", "fp16") else 4,
        zero_stage=a.zero_stage if a.strategy == "deepspeed" else 0,
        offload_optimizer=a.offload_optimizer != "none", offload_params=a.offload_params != "none",
        gpus=gpus, sp=a.sequence_parallel_size, micro_batch=t.micro_batch_size,
        checkpointing=t.gradient_checkpointing, eager_attention=cfg.model.attn_implementation == "eager",
        loss_chunk=t.loss_chunk_size, offload_activations=offload_activations or t.checkpoint_offload,
        tiled_mlp=tiled_mlp or t.tiled_mlp,
    )


def render(s: Setup, lengths: list[int], gpu_memory: float, title: str) -> str:
    rows = plan_rows(s, lengths)
    limit = USABLE * gpu_memory
    head = ["length", "tokens/GPU", "weights", "grads", "optimizer", "activations", "loss", "total", f"fits {gpu_memory:g} GB"]
    body = [[f"{r.length:,}", f"{r.tokens:,.0f}", *(f"{x / GB:.2f}" for x in (r.params, r.grads, r.optimizer,
             r.activations, r.loss, r.total)), "yes" if r.total / GB <= limit else "NO"] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    g = s.geometry
    zero = "ddp" if s.zero_stage == 0 else f"ZeRO-{s.zero_stage}"
    offload = ", ".join(k for k, v in (("optimizer", s.offload_optimizer), ("params", s.offload_params),
                                       ("activations", s.offload_activations)) if v) or "none"
    size = f"{g.parameters() / 1e9:.2f}B" if g.parameters() >= 1e9 else f"{g.parameters() / 1e6:.1f}M"
    lines = [title, f"  {size} parameters ({g.layers} layers, hidden {g.hidden}, {g.heads}/{g.kv_heads} "
             f"heads, MLP {g.intermediate}, vocab {g.vocab}); {s.adapter}: {trainable_parameters(s) / 1e6:,.1f}M trainable",
             f"  {s.gpus} GPU(s), {zero}, offload {offload}, sequence parallel {s.sp}, micro-batch {s.micro_batch}, "
             f"checkpointing {'on' if s.checkpointing else 'off'}, attention {'eager' if s.eager_attention else 'fused'}, "
             f"loss chunk {s.loss_chunk or 'off (full logits)'}", "", fmt(head), fmt(["-" * w for w in widths])]
    lines += [fmt(b) for b in body]
    if max(r.total for r in rows) / GB > limit:
        lines += ["", f"Does not fit {limit:.0f} GB ({USABLE:.0%} of {gpu_memory:g}). Each change alone, peak per GPU:"]
        lines += advice(s, lengths, gpu_memory)
    lines += ["", f"GB = 2^30 bytes, per GPU; fits = total <= {USABLE:.0%} of gpu_memory (the rest: CUDA context, "
              "communication buffers, fragmentation). weights: 16-bit (or float32) weights, under ZeRO-3 a 1/gpus "
              "shard plus two gathered layers; optimizer: AdamW (fp32 master + moments under DeepSpeed mixed "
              "precision, 12 B/param; moments in the weights' dtype under ddp); activations: one micro-batch, "
              "fused (SDPA/flash) attention keeps no scores; loss: one chunk's logits; total: activations and loss "
              "without double counting (the loss's buffers and the backward's recomputed layer are never alive at "
              "once: the larger counts). Not counted: the CUDA "
              "context, DDP gradient buckets, host memory. Formulas: extend/plan.py."]
    return "\n".join(lines[:-1] + [_wrap(lines[-1])])


def _wrap(text: str, width: int = 110) -> str:
    return "\n".join(textwrap.wrap(text, width))


def split_plan_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """The planner's own key=value arguments (PLAN_KEYS) and the Hydra overrides, in order."""
    own, rest = {}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if key in PLAN_KEYS:
            own[key] = value if sep else "true"
        else:
            rest.append(arg)
    return own, rest


def _number(own: dict[str, str], key: str, default: float, kind=float) -> float:
    try:
        return kind(own.get(key, default))
    except ValueError:
        raise PlanError(f"{key}={own[key]!r} is not a number") from None


def _flag(own: dict[str, str], key: str) -> bool:
    value = own.get(key, "false").lower()
    if value not in ("true", "false"):
        raise PlanError(f"{key}={own[key]!r}: give true or false (or the bare word for true)")
    return value == "true"


def geometry_for(cfg, base_config: str | None) -> Geometry:
    """The base's geometry from its config.json only: `base_config` when given, else as training loads it."""
    from extend.config import ConfigError
    from extend.models import load_base_config

    if base_config:
        from pathlib import Path

        from transformers import AutoConfig

        path = Path(base_config).expanduser()
        if not path.exists():
            raise PlanError(f"base_config={base_config}: no such file or folder; give a config.json or its folder")
        return Geometry.from_config(AutoConfig.from_pretrained(str(path.parent if path.is_file() else path)))
    try:
        return Geometry.from_config(load_base_config(cfg.model))
    except ConfigError as err:
        raise PlanError(f"{err.problems[0]}; or give the planner the base's config.json: base_config=PATH") from None


def main(argv: list[str] | None = None) -> None:
    with hub_offline():
        _main(argv)


@contextlib.contextmanager
def hub_offline():
    """The planner reads configs already on this machine and never downloads. transformers was imported by the
    package already, so the library's constant is set too, not only the environment; both are restored after,
    so a caller in the same process (a test, a notebook) keeps its own setting."""
    import huggingface_hub.constants

    saved = os.environ.get("HF_HUB_OFFLINE"), huggingface_hub.constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved[0]
        huggingface_hub.constants.HF_HUB_OFFLINE = saved[1]


def _main(argv: list[str] | None) -> None:
    from extend.commands import command_line

    own, rest = split_plan_args(command_line("plan", sys.argv[1:] if argv is None else argv))
    try:
        gpus = int(_number(own, "gpus", 1))
        gpu_memory = _number(own, "gpu_memory", 80.0)
        if gpus < 1:
            raise PlanError(f"gpus={own['gpus']}: give the number of GPUs the run is launched on (>= 1)")
        if gpu_memory <= 0:
            raise PlanError(f"gpu_memory={own['gpu_memory']}: give one GPU's memory in GB (> 0)")
        flags = {k: _flag(own, k) for k in ("offload_activations", "tiled_mlp")}
    except PlanError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

    def body(cfg) -> None:
        from extend.config import ConfigError

        try:
            setup = setup_from_config(cfg, geometry_for(cfg, own.get("base_config")), gpus, **flags)
            title = f"extend plan: {cfg.run_name} on {cfg.model.name_or_path}"
            print(render(setup, [st.length for st in cfg.curriculum.stages], gpu_memory, title))
        except (PlanError, ConfigError) as err:  # one line: the (first) problem
            print(f"error: {err.problems[0] if isinstance(err, ConfigError) else err}", file=sys.stderr)
            sys.exit(2)

    from extend.cli import run_cli

    run_cli(body, job_name="plan", quiet=True, argv=rest)


if __name__ == "__main__":
    main()
