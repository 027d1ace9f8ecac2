"""LoFiT (Yin et al., 2024, "LoFiT: Localized Fine-tuning on LLM Representations") as an adapter.

On each attention layer the output of every head h (the input of o_proj, before the heads are mixed)
becomes h' = (1 + A) * h + v, with one A and one v per head (head_dim numbers each):

- stage 1, the first `select_steps` optimizer steps: only A trains, on every head, with an L1 penalty;
  then heads are ranked by ||A||2 and the top K are kept;
- stage 2, the rest of the run: A is reset, and only v (and, if asked, a fresh A) of the K heads trains.

The per-layer tensors live in a small module attached to each attention module (`self_attn.lofit`) and
act through a forward pre-hook on `o_proj`, torch's supported hook point: no modeling file is forked.
Stage 1's A (`probe`) and stage 2's tensors (`scale`, `offset`) are separate parameters. Stage 2's get
exactly zero gradient through stage 1 (the forward masks them out), so they enter stage 2 at zero with zero
optimizer moments under any engine (DDP or DeepSpeed), without editing the optimizer's state; in stage 2
the probe's gradient is dropped before the optimizer step, so momentum does not move it either (under
DeepSpeed, which owns the gradients, it may drift, unused: the forward and the export ignore it then).
Which stage is active and which heads were selected are buffers, restored on resume from the checkpoint's
adapter state (the ranking and the selected heads).

Export folds everything into o_proj: (1 + A) scales o_proj's input columns and W v becomes o_proj's bias
(`attention_bias: true`; the q/k/v biases that flag also creates are saved as zeros), so the result loads in
stock transformers and vLLM. Models whose o_proj cannot take a bias (Mistral, Qwen2) can train scalings only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel

from extend.adapters.base import AdapterHooks
from extend.config import AdapterConfig, ConfigError

OUTPUT_PROJECTION = "o_proj"
# Attention projections that `attention_bias: true` gives a bias (Llama, Qwen3 and their relatives).
BIASED_BY_FLAG = ("q_proj", "k_proj", "v_proj", "o_proj")


class HeadOffsets(nn.Module):
    """A and v of one attention layer: (heads, head_dim) each, applied to o_proj's input."""

    def __init__(self, num_heads: int, head_dim: int, train_scales: bool, train_offsets: bool):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.train_scales, self.train_offsets = train_scales, train_offsets
        self.probe = nn.Parameter(torch.zeros(num_heads, head_dim))   # stage 1's A, every head
        self.scale = nn.Parameter(torch.zeros(num_heads, head_dim))   # stage 2's A, selected heads
        self.offset = nn.Parameter(torch.zeros(num_heads, head_dim))  # stage 2's v, selected heads
        self.register_buffer("probing", torch.ones(()))               # 1 in stage 1, 0 in stage 2
        self.register_buffer("selected", torch.zeros(num_heads, 1))   # 1 for the heads kept for stage 2

    def effective(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (A, v) the forward applies now, (heads, head_dim) each."""
        scale = self.probing * self.probe + self.selected * self.scale * float(self.train_scales)
        return scale, self.selected * self.offset * float(self.train_offsets)

    def forward(self, heads_output: torch.Tensor) -> torch.Tensor:
        scale, offset = self.effective()
        h = heads_output.unflatten(-1, (self.num_heads, self.head_dim))
        return (h * (1 + scale.to(h.dtype)) + offset.to(h.dtype)).flatten(-2)


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Attention modules with a per-head output: an `o_proj` linear layer and a `head_dim`."""
    found = []
    for name, module in model.named_modules():
        o_proj = getattr(module, OUTPUT_PROJECTION, None)
        if isinstance(o_proj, nn.Linear) and isinstance(getattr(module, "head_dim", None), int):
            found.append((name, module))
    return found


@dataclass
class LofitAdapter(AdapterHooks):
    cfg: AdapterConfig
    name: str = "lofit"
    # Filled at head selection (or restored on resume): [[layer, head, ||A||2], ...] best first, and the kept heads.
    ranking: list[list[float]] = field(default_factory=list)
    chosen: list[list[int]] = field(default_factory=list)

    # ---- checks -------------------------------------------------------------------------------------
    def total_heads(self, model: nn.Module) -> int:
        return sum(m.o_proj.in_features // m.head_dim for _, m in attention_modules(model))

    def heads_to_keep(self, total: int) -> int:
        k = self.cfg.lofit.heads
        return int(k) if k >= 1 else max(1, round(k * total))

    def check(self, model: PreTrainedModel) -> list[str]:
        lofit, problems = self.cfg.lofit, []
        layers = attention_modules(model)
        if not layers:
            return [f"adapter.type=lofit needs attention modules with a per-head output before {OUTPUT_PROJECTION} "
                    f"(an {OUTPUT_PROJECTION} linear layer and a head_dim); {type(model).__name__} has none"]
        total = self.total_heads(model)
        if lofit.heads <= 0 or (lofit.heads >= 1 and lofit.heads != int(lofit.heads)):
            problems.append(f"adapter.lofit.heads={lofit.heads}: give a count (a whole number >= 1) or a fraction in (0, 1)")
        elif self.heads_to_keep(total) > total:
            problems.append(f"adapter.lofit.heads={int(lofit.heads)} is more than the model's {total} attention heads "
                            f"({len(layers)} layers)")
        if lofit.l1 < 0:
            problems.append(f"adapter.lofit.l1={lofit.l1} must be >= 0")
        if lofit.select_steps < 1:
            problems.append(f"adapter.lofit.select_steps={lofit.select_steps} must be >= 1 (stage 1 ranks the heads)")
        if not (lofit.train_offsets or lofit.train_scales):
            problems.append("adapter.lofit: stage 2 trains nothing; set train_offsets or train_scales to true")
        if lofit.train_offsets and not hasattr(model.config, "attention_bias"):
            problems.append(f"adapter.lofit.train_offsets: {type(model).__name__}'s {OUTPUT_PROJECTION} cannot take a "
                            "bias in stock transformers, so the offsets could not be exported; set "
                            "adapter.lofit.train_offsets=false and train_scales=true (scalings fold into the weights)")
        if self.cfg.quantize:
            problems.append("adapter.quantize is for adapter.type=lora; LoFiT trains a few thousand numbers on a full-precision base")
        return problems

    def check_steps(self, total_steps: int) -> list[str]:
        if self.cfg.lofit.select_steps >= total_steps:
            return [f"adapter.lofit.select_steps={self.cfg.lofit.select_steps} leaves no steps for stage 2 of a "
                    f"{total_steps}-step run: lower it or lengthen the curriculum"]
        return []

    # ---- training -----------------------------------------------------------------------------------
    def attach(self, model: PreTrainedModel) -> nn.Module:
        problems = self.check(model)
        if problems:
            raise ConfigError(problems)
        model.requires_grad_(False)
        for _, attention in attention_modules(model):
            o_proj = attention.o_proj
            offsets = HeadOffsets(o_proj.in_features // attention.head_dim, attention.head_dim,
                                  self.cfg.lofit.train_scales, self.cfg.lofit.train_offsets)
            offsets.to(device=o_proj.weight.device)
            attention.lofit = offsets  # registered as a submodule: named, saved, moved and synced with the model
            offsets.hook = o_proj.register_forward_pre_hook(lambda _, args, f=offsets: (f(args[0]), *args[1:]))
        return model

    def layers(self, model: nn.Module) -> list[HeadOffsets]:
        return [attention.lofit for _, attention in attention_modules(model)]

    def in_stage_one(self, model: nn.Module) -> bool:
        return bool(self.layers(model)[0].probing.item())

    def regularization(self, model: nn.Module) -> torch.Tensor | None:
        """Stage 1's L1 penalty on A, added once per optimizer step."""
        if not self.in_stage_one(model) or self.cfg.lofit.l1 == 0:
            return None
        return self.cfg.lofit.l1 * sum(layer.probe.abs().sum() for layer in self.layers(model))

    def before_optimizer_step(self, model: nn.Module) -> None:
        """In stage 2, stage 1's A stops: without a gradient, not even momentum moves it."""
        if not self.in_stage_one(model):
            for layer in self.layers(model):
                layer.probe.grad = None

    def after_step(self, model: nn.Module, step: int) -> None:
        if step == self.cfg.lofit.select_steps:
            self.select_heads(model)

    def select_heads(self, model: nn.Module) -> None:
        """Rank every head by ||A||2 of stage 1 and switch to stage 2 on the top K."""
        layers = self.layers(model)
        norms = [(float(n), li, hi) for li, layer in enumerate(layers) for hi, n in enumerate(layer.probe.detach().norm(dim=-1))]
        order = sorted(norms, key=lambda t: (-t[0], t[1], t[2]))  # ties: lower layer, then lower head
        self.ranking = [[li, hi, n] for n, li, hi in order]
        self.chosen = sorted([li, hi] for _, li, hi in order[: self.heads_to_keep(len(norms))])
        self._set_stage_two(layers)

    def _set_stage_two(self, layers: list[HeadOffsets]) -> None:
        with torch.no_grad():
            for layer in layers:
                layer.probing.zero_()
                layer.selected.zero_()
            for li, hi in self.chosen:
                layers[li].selected[hi] = 1.0

    def state(self) -> dict:
        """What a checkpoint carries besides the tensors: the stage-1 ranking and the selected heads."""
        return {"ranking": self.ranking, "selected_heads": self.chosen}

    def load_state(self, model: nn.Module, state: dict) -> None:
        self.ranking = [list(r) for r in state.get("ranking", [])]
        self.chosen = [list(c) for c in state.get("selected_heads", [])]
        if self.chosen:
            self._set_stage_two(self.layers(model))

    def trainable_summary(self, model: nn.Module) -> str:
        lofit, total, head_dim = self.cfg.lofit, self.total_heads(model), self.layers(model)[0].head_dim
        kept = self.heads_to_keep(total)
        stage_two = [name for name, on in (("v", lofit.train_offsets), ("A", lofit.train_scales)) if on]
        return (f"{total * head_dim:,} trainable in stage 1 (A on all {total} heads, {lofit.select_steps} steps), "
                f"{kept * head_dim * len(stage_two):,} in stage 2 ({' and '.join(stage_two)} on {kept} heads)")

    def describe(self, model: nn.Module) -> dict:
        """For the run card: the selected heads and what trained."""
        head_dim = self.layers(model)[0].head_dim
        per_head = head_dim * (int(self.cfg.lofit.train_offsets) + int(self.cfg.lofit.train_scales))
        return {
            "stage1_trainable_parameters": self.total_heads(model) * head_dim,
            "stage2_trainable_parameters": len(self.chosen) * per_head,
            "selected_heads": [{"layer": li, "head": hi} for li, hi in self.chosen],
            "ranking": [{"layer": li, "head": hi, "norm": n} for li, hi, n in self.ranking],
        }

    # ---- export -------------------------------------------------------------------------------------
    def merged(self, model: nn.Module) -> PreTrainedModel:
        """Fold A into o_proj's input columns and v into o_proj's bias; the hooks and tensors go away."""
        fold_bias = self.cfg.lofit.train_offsets
        with torch.no_grad():
            for _, attention in attention_modules(model):
                offsets: HeadOffsets = attention.lofit
                scale, offset = (t.flatten().to(attention.o_proj.weight.dtype) for t in offsets.effective())
                o_proj = attention.o_proj
                weight = o_proj.weight.detach().clone()
                o_proj.weight.mul_(1 + scale)
                if fold_bias:
                    for name in BIASED_BY_FLAG:
                        linear = getattr(attention, name)
                        if linear.bias is None:
                            linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype,
                                                                   device=linear.weight.device))
                    o_proj.bias.add_(weight @ offset)
                offsets.hook.remove()
                del attention.lofit
        if fold_bias:
            model.config.attention_bias = True
        model.requires_grad_(True)
        return model

    def save(self, model: nn.Module, folder: Path) -> None:
        """lofit.safetensors (A and v of every layer, as applied) and lofit.json (selected heads, ranking)."""
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for i, layer in enumerate(self.layers(model)):
            scale, offset = layer.effective()
            tensors[f"layers.{i}.scale"] = scale.detach().cpu().contiguous()
            tensors[f"layers.{i}.offset"] = offset.detach().cpu().contiguous()
        save_file(tensors, folder / "lofit.safetensors")
        (folder / "lofit.json").write_text(json.dumps(self.describe(model), indent=2) + "\n")
