"""Per-document SDPA computes what SDPA with transformers' block-diagonal packed mask computes."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from extend.models import packed_attention
from extend.models.packed_attention import (
    PACKED_SDPA, document_spans, documents_from_positions, restore_attention, use_packed_attention,
)

SHAPE = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)


def test_document_spans():
    def spans(positions):
        return document_spans(documents_from_positions(torch.tensor(positions)))

    assert spans([0, 1, 2, 0, 1, 0]) == [(0, 3), (3, 5), (5, 6)]
    assert spans([5, 6, 0, 1]) == [(0, 2), (2, 4)]  # a row that starts mid-document
    # Explicit ids: skipped positions (PoSE) do not start documents, ids do.
    assert document_spans(torch.tensor([0, 0, 0, 1, 1, 2])) == [(0, 3), (3, 5), (5, 6)]


@pytest.mark.parametrize("per_document", [True, False], ids=["one call per document", "one masked call"])
@pytest.mark.parametrize("family", [(LlamaConfig, LlamaForCausalLM), (Qwen2Config, Qwen2ForCausalLM)])
def test_same_logits_and_gradients_as_the_block_mask(family, per_document, monkeypatch):
    if per_document:
        monkeypatch.setattr(packed_attention, "MASKED_BYTES", 0)
    config_class, model_class = family
    torch.manual_seed(0)
    model = model_class(config_class(**SHAPE))
    ids = torch.randint(0, 300, (2, 96))
    positions = torch.stack([torch.cat([torch.arange(30), torch.arange(50), torch.arange(16)]),
                             torch.cat([torch.arange(7, 47), torch.arange(56)])])

    def run():
        model.zero_grad()
        logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        (logits.square().mean()).backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters()]

    want, want_grads = run()
    assert use_packed_attention(model) and model.config._attn_implementation == PACKED_SDPA
    got, got_grads = run()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    restore_attention(model)
    assert model.config._attn_implementation == "sdpa"


def test_refuses_padding_masks_and_leaves_other_kernels_alone():
    model = LlamaForCausalLM(LlamaConfig(**SHAPE))
    use_packed_attention(model)
    with pytest.raises(ValueError, match="for training on packed rows"):
        model(input_ids=torch.ones(1, 8, dtype=torch.long), attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1]]))
    eager = LlamaForCausalLM._from_config(LlamaConfig(**SHAPE), attn_implementation="eager")
    assert not use_packed_attention(eager) and eager.config._attn_implementation == "eager"
