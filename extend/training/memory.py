"""Activation memory at long length, beyond gradient checkpointing: the engine's tiled MLP and activation
offload (train.tiled_mlp, train.checkpoint_offload).

- Tiled MLP (DeepSpeed's `TiledMLP`, deepspeed/runtime/sequence_parallel/ulysses_sp.py, from Arctic Long
  Sequence Training): each decoder layer's MLP runs over ceil(tokens / hidden size) slices of the sequence
  and recomputes each slice in the backward, so the (tokens x intermediate size) activations, the largest
  of a layer, exist for one slice at a time instead of the whole sequence.
- Activation offload (`torch.autograd.graph.save_on_cpu`): every tensor autograd saves during the forward is
  kept in host memory and copied back for the backward. With gradient checkpointing that is one hidden
  state per layer, the part of activation memory that still grows with depth x length. On a CPU-only
  machine host memory is the device's memory and it only costs a copy.

The loss is already tiled: extend/training/loss.py scores train.loss_chunk_size tokens at a time
(DeepSpeed's `TiledFusedLogitsLoss` does the same, and is not needed).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from extend.config import ConfigError

MLP_PARTS = ("gate_proj", "up_proj", "down_proj")


def _run_mlp(mlp: "TiledMLP", x: torch.Tensor) -> torch.Tensor:
    return mlp.inner[0](x)


class TiledMLP(nn.Module):
    """A decoder layer's MLP run by DeepSpeed's TiledMLP. It registers the MLP's own submodules under their
    own names, so parameter names, checkpoints and exports are those of the untiled model; the original
    module (holding the same submodules) computes each slice."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        for name, child in mlp.named_children():
            self.add_module(name, child)
        self.inner = (mlp,)  # a tuple: not registered a second time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledMLP as EngineTiledMLP

        slices = max(1, math.ceil(x.shape[-2] / x.shape[-1]))
        return EngineTiledMLP.apply(_run_mlp, self, x, slices, list(self.parameters()))


def _layers(model: nn.Module) -> nn.ModuleList:
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if layers is None or not all(hasattr(layer, "mlp") for layer in layers):
        raise ConfigError([f"train.tiled_mlp: {type(model).__name__} has no decoder layers with an `mlp`; "
                           "set train.tiled_mlp=false"])
    return layers


def tile_mlps(model: nn.Module) -> int:
    """Run every decoder layer's MLP tiled (model: the transformers causal LM); returns how many."""
    layers = _layers(model)
    for layer in layers:
        if not isinstance(layer.mlp, TiledMLP):
            layer.mlp = TiledMLP(layer.mlp)
    return len(layers)


def untile_mlps(model: nn.Module) -> None:
    """Back to the plain MLPs (before a model is saved or evaluated)."""
    decoder = model.get_decoder()
    for layer in getattr(decoder, "layers", []):
        if isinstance(getattr(layer, "mlp", None), TiledMLP):
            layer.mlp = layer.mlp.inner[0]


def activation_offload(enabled: bool) -> contextlib.AbstractContextManager:
    """train.checkpoint_offload: the context a forward runs in so its saved activations live in host memory."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available())
