"""The module the training loop runs: the causal LM plus a chunked loss, and how to reach what is inside it."""

from __future__ import annotations

import contextlib

from accelerate import Accelerator
from peft import PeftModel
from torch import nn
from transformers.integrations import unset_hf_deepspeed_config

from extend.models.training_attention import decoder_inputs
from extend.training.loss import target_loss_sum


def causal_lm_of(model: nn.Module) -> nn.Module:
    """The transformers causal LM inside a peft wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


class ChunkedCausalLM(nn.Module):
    """The model plus a loss that never builds full-sequence logits; what accelerate wraps for DDP."""

    def __init__(self, model: nn.Module, chunk_size: int, loss: str = "chunked", attention: str = "full"):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.loss = loss  # a name in extend.training.loss.LOSSES (train.loss, resolved for the device)
        self.attention = attention  # train.attention: what the decoder sees of a row (training_attention.py)

    @property
    def causal_lm(self) -> nn.Module:
        return causal_lm_of(self.model)

    @property
    def config(self):
        """The causal LM's config: accelerate sizes DeepSpeed's "auto" buckets from its hidden_size."""
        return self.causal_lm.config

    def forward(self, input_ids, position_ids, targets, document_ids):
        """(loss sum, scored tokens) of packed rows, or of their sequence shards (train.sequence_parallel_size).
        `targets`: next-token targets aligned with input_ids, from the stored position ids (extend/training/
        loss.py next_token_targets), whatever positions the decoder is given; `document_ids`: each token's
        document in its WHOLE row, kept apart as train.attention says (under sequence parallelism the attention
        sees the whole row, and reads the whole row's ids)."""
        lm = self.causal_lm
        decoder = lm.get_decoder()
        dtype = decoder.get_input_embeddings().weight.dtype
        inputs = decoder_inputs(self.attention, lm, position_ids, document_ids, dtype)
        hidden = decoder(input_ids=input_ids, use_cache=False, **inputs).last_hidden_state
        return target_loss_sum(hidden, lm.get_output_embeddings(), targets, self.chunk_size, self.loss)


def adapted_model(accelerator: Accelerator, wrapped: nn.Module) -> nn.Module:
    """The adapted model (peft wrapper or plain causal LM) inside what accelerate prepared."""
    return accelerator.unwrap_model(wrapped).model


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


@contextlib.contextmanager
def gathered(accelerator: Accelerator, params: list[nn.Parameter]):
    """`params` whole on every process for the duration, read only: ZeRO-3 partitions parameters, so this is
    a collective that every process enters with the same list; under other strategies they are whole already."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None or plugin.zero_stage != 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield
