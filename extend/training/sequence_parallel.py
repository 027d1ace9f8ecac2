"""Sequence parallelism (accelerate.sequence_parallel_size > 1): DeepSpeed Ulysses on extend's own loop.

A group of `size` processes shares every row: rank r of the group holds tokens [r*T/size, (r+1)*T/size) of
each row, with their position ids and next-token targets. The engine's attention
(deepspeed/runtime/sequence_parallel/ulysses_sp.py, `UlyssesSPAttentionHF`) exchanges query/key/value with
an all-to-all, so each rank attends over the whole row for size-th of the heads, then swaps back; every
other layer works on the rank's own tokens. What this module adds around the engine:

- Rows are cut here, not by `UlyssesSPDataLoaderAdapter`: our loop serves each optimizer step's rows as a
  pure function of (stage, step) (extend/training/batches.py), which is what makes a resume exact, so the
  cut is a function of the rank too. Micro-batches are dealt over data-parallel groups (processes / size),
  and every rank of a group cuts the same micro-batches.
- Labels become next-token targets BEFORE the cut (extend/training/loss.py `next_token_targets`): the last
  token of a shard is scored against the first label of the next shard.
- Packed documents stay apart: the core attention behind the engine's all-to-all is our per-document SDPA
  (extend/models/packed_attention.py), and every rank passes it the WHOLE row's document ids (the loop's
  `document_ids`, from the shards' seq_lens), so it splits the gathered row exactly where documents change,
  PoSE's skipped positions included. Ulysses passes keyword arguments through to the core unchanged (it
  only all-gathers `position_ids`). (Plain `sdpa`, which accelerate's `ParallelismConfig` path requires,
  drops the mask under Ulysses and would attend across documents: that is why the engine is called directly.)
- Gradients: the ZeRO engine is NOT given the sequence-parallel groups (the `mpu` of
  `register_with_transformers`), so every ZeRO stage averages gradients over all processes, as without
  sequence parallelism. Each rank's backward yields its own tokens' share of the gradient (the all-to-all's
  backward routes every other share back to its owner), so the loop's loss scale (scored tokens of the rank
  x processes / scored tokens of the step) gives the exact gradient at stages 1, 2 and 3 alike. With the
  `mpu`, stages 1 and 2 divide by the data-parallel size only and ZeRO-3 by all processes: one loss scale
  would be right for ZeRO-3 and size x too large for the others.

Nothing here is specific to CPU or gloo: gloo runs the engine's all-to-all as is (contiguous tensors).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from extend.config import ConfigError
from extend.models.packed_attention import PACKED_SDPA
from extend.training.batches import DOCUMENT_IDS
from extend.training.loss import next_token_targets


@dataclass(frozen=True)
class SequenceParallel:
    """Where this process sits: `size` ranks per row (1 = off), `rank` within its group."""

    size: int = 1
    rank: int = 0

    def data_parallel(self, process_index: int, num_processes: int) -> tuple[int, int]:
        """(this process's data-parallel rank, number of data-parallel groups). Groups are consecutive
        process indices, as DeepSpeed's `initialize_sequence_parallel` builds them."""
        return process_index // self.size, num_processes // self.size

    def shard(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model inputs of this rank for a micro-batch of whole rows (input_ids, labels, position_ids,
        document_ids): its slice of input_ids, position_ids and next-token targets, and the WHOLE row's
        document ids, which the core attention reads after the all-to-all has gathered the whole row."""
        targets = next_token_targets(batch["labels"], batch["position_ids"])
        cut = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "targets": targets}
        if self.size > 1:
            length = targets.shape[1] // self.size
            cut = {k: v[:, self.rank * length : (self.rank + 1) * length].contiguous() for k, v in cut.items()}
        return {**cut, DOCUMENT_IDS: batch[DOCUMENT_IDS]}


def enable_sequence_parallel(model: nn.Module, size: int, micro_batch_size: int) -> SequenceParallel:
    """Route the model's attention through DeepSpeed Ulysses for groups of `size` processes (a no-op for 1).

    The model must run extend's per-document SDPA (train.packed_attention); the engine replaces that
    registered function (our training-only key: the exported model's `sdpa` is untouched) with its wrapper
    around it. Call after the distributed backend is up and before the engine is built, once per process.
    """
    if size == 1:
        return SequenceParallel()
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

    attention = model.config._attn_implementation
    if attention != PACKED_SDPA:
        raise ConfigError([
            f"accelerate.sequence_parallel_size={size} needs per-document attention on a model that runs sdpa "
            f"(this one runs {attention!r}): set train.packed_attention=true and model.attn_implementation=sdpa"
        ])
    mpu = UlyssesSPAttentionHF.register_with_transformers(
        model_name_or_path=model, core_attn_implementation=PACKED_SDPA, sequence_parallel_size=size,
        micro_batch_size=micro_batch_size, seq_length_is_variable=True,
    )
    return SequenceParallel(size=size, rank=mpu.get_sequence_parallel_rank())
