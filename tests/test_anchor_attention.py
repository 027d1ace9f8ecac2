"""AnchorAttention (train.attention=anchor): the row's first token is seen by every token, documents never see
each other, attention is causal, positions run 0..T-1; documents come from the row's explicit document ids
(as PoSE rows carry them), never from position ids. Checked against a hand-written mask, against each document
run on its own behind the anchor, and by gradients; cross_document is the row as one causal sequence."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from extend.config import TrainConfig
from extend.models import anchor_attention
from extend.models.anchor_attention import ANCHOR_SDPA, anchor_mask
from extend.models.training_attention import decoder_inputs, restore_attention, use_training_attention
from extend.training.loss import next_token_targets
from extend.training.model import ChunkedCausalLM

SHAPE = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)
LENGTHS = (20, 25, 15)
DOCUMENTS = torch.cat([torch.full((n,), i) for i, n in enumerate(LENGTHS)])[None]


def stored_positions(kind: str) -> torch.Tensor:
    """A row's stored position ids: plain packing restarts each document at 0; PoSE-style rows skip inside
    documents; `none` carries no boundary at all (0..T-1), so only the explicit ids tell the documents apart."""
    if kind == "packed":
        return torch.cat([torch.arange(n) for n in LENGTHS])[None]
    if kind == "pose":
        return torch.cat([torch.cat([torch.arange(n // 2), torch.arange(n // 2, n) + 40]) for n in LENGTHS])[None]
    return torch.arange(sum(LENGTHS))[None]


def anchor_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE))
    assert use_training_attention(model, TrainConfig(attention="anchor"))
    return model


def test_mask_matches_a_hand_written_reference_and_follows_the_explicit_ids():
    documents = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2]])  # three packed documents: 3, 2 and 3 tokens
    want = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 0, 0, 1, 0, 0, 0, 0],
        [1, 0, 0, 1, 1, 0, 0, 0],
        [1, 0, 0, 0, 0, 1, 0, 0],
        [1, 0, 0, 0, 0, 1, 1, 0],
        [1, 0, 0, 0, 0, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(anchor_mask(documents)[0, 0], want)
    # The decoder gets 0..T-1 (the anchor alone at 0) and the explicit ids, whatever the stored positions say:
    # here they skip (PoSE) and restart nowhere but at the first token.
    stored = torch.tensor([[0, 1, 9, 10, 11, 12, 20, 21]])
    inputs = decoder_inputs("anchor", anchor_model(), stored, documents, torch.float32)
    assert inputs["position_ids"].tolist() == [list(range(8))]
    assert inputs["document_ids"].tolist() == documents.tolist()
    # cross_document: the same positions, no document ids (one causal sequence).
    assert decoder_inputs("cross_document", anchor_model(), stored, documents, torch.float32).keys() == {"position_ids"}
    # full keeps the stored positions.
    restore_attention(model := anchor_model())
    assert decoder_inputs("full", model, stored, documents, torch.float32)["position_ids"] is stored


def _packed_and_alone(model, ids, stored):
    """Logits and gradients of the packed row under anchor attention, and the same from each document run alone
    as [anchor, document] at its row positions [0, s..e-1] (the first document as it is)."""
    starts = [0, *torch.tensor(LENGTHS).cumsum(0).tolist()]
    spans = list(zip(starts, starts[1:]))

    model.zero_grad()  # `model` runs anchor attention (anchor_model)
    inputs = decoder_inputs("anchor", model, stored, DOCUMENTS, torch.float32)
    logits = model(input_ids=ids, use_cache=False, **inputs).logits
    logits.square().mean().backward()
    packed = logits.detach(), [p.grad.clone() for p in model.parameters()]

    restore_attention(model)
    model.zero_grad()
    pieces = []
    for s, e in spans:
        index = torch.arange(s, e) if s == 0 else torch.cat([torch.tensor([0]), torch.arange(s, e)])
        # An explicit mask: without one, transformers reads the jump in position ids as a packed boundary.
        out = model(input_ids=ids[:, index], position_ids=index[None], attention_mask=torch.ones(1, len(index)),
                    use_cache=False).logits
        mine = out if s == 0 else out[:, 1:]  # the anchor's own logits count once, in the first document
        (mine.square().sum() / logits.numel()).backward()
        pieces.append(mine.detach())
    return packed, (torch.cat(pieces, dim=1), [p.grad.clone() for p in model.parameters()])


@pytest.mark.parametrize("positions", ["packed", "pose", "none"])
@pytest.mark.parametrize("per_document", [True, False], ids=["one call per document", "one masked call"])
@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16 autocast"])
def test_logits_and_gradients_equal_each_document_alone_behind_the_anchor(positions, per_document, bf16, monkeypatch):
    if per_document:
        monkeypatch.setattr(anchor_attention, "MASKED_BYTES", 0)
    model = anchor_model()
    ids = torch.randint(0, 300, (1, sum(LENGTHS)), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        (got, got_grads), (want, want_grads) = _packed_and_alone(model, ids, stored_positions(positions))
    tolerance = dict(rtol=2e-2, atol=2e-2) if bf16 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.float(), want.float(), **tolerance)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, **(dict(rtol=5e-2, atol=5e-3) if bf16 else dict(rtol=1e-4, atol=1e-6)))
    # And it is not what documents without the anchor would compute (the test can fail).
    with torch.no_grad():
        alone = model(input_ids=ids[:, 20:45], position_ids=torch.arange(20, 45)[None], attention_mask=torch.ones(1, 25),
                      use_cache=False).logits
    assert (alone - want[:, 20:45].float()).abs().max() > 1e-2


@pytest.mark.parametrize("per_document", [True, False], ids=["one call per document", "one masked call"])
@pytest.mark.parametrize("positions", ["packed", "pose", "none"])
def test_no_tokens_loss_depends_on_another_documents_tokens_but_the_anchor(positions, per_document, monkeypatch):
    """As the plain packing test, through the training module (ChunkedCausalLM): the loss of each document's
    tokens has zero gradient with respect to every other document's input embeddings except the anchor's
    (the row's first token), which every document sees; under cross_document they do see each other."""
    if per_document:
        monkeypatch.setattr(anchor_attention, "MASKED_BYTES", 0)
    model = anchor_model()
    length, stored = sum(LENGTHS), stored_positions(positions)
    starts = [0, *torch.tensor(LENGTHS).cumsum(0).tolist()]
    embeddings = model.get_input_embeddings()

    def gradient(doc: int, attention: str) -> torch.Tensor:
        captured = {}

        def keep(module, args, output):
            output.retain_grad()
            captured["x"] = output

        hook = embeddings.register_forward_hook(keep)
        labels = torch.full((1, length), -100)
        a, b = starts[doc], starts[doc + 1]
        # Targets inside the document only (the loss's own boundary rule is not under test here).
        labels[0, a + 1 : b] = torch.randint(0, 300, (b - a - 1,), generator=torch.Generator().manual_seed(doc))
        loss, _ = ChunkedCausalLM(model, 0, attention=attention)(torch.randint(0, 300, (1, length)), stored,
                                                                   next_token_targets(labels, stored), DOCUMENTS)
        hook.remove()
        loss.backward()
        return captured["x"].grad[0].abs().sum(-1)

    for doc in range(len(LENGTHS)):
        a, b = starts[doc], starts[doc + 1]
        grad = gradient(doc, "anchor")
        assert grad[a:b].sum() > 0 and grad[0] > 0, doc
        others = torch.cat([grad[1:a], grad[b:]])
        assert others.sum() == 0, doc
    restore_attention(model)  # cross_document runs the model's own kernel
    assert gradient(2, "cross_document")[1:45].min() > 0  # the check can fail: one sequence sees everything


def test_refuses_inference_inputs_and_restores_plain_attention():
    model = anchor_model()
    assert model.config._attn_implementation == ANCHOR_SDPA
    with pytest.raises(ValueError, match="for training on packed rows"):
        model(input_ids=torch.ones(1, 8, dtype=torch.long))  # no document ids given
    restore_attention(model)
    assert model.config._attn_implementation == "sdpa"
    custom = LlamaForCausalLM._from_config(LlamaConfig(**SHAPE), attn_implementation="flex_attention")
    with pytest.raises(ValueError, match="cannot stand in"):
        use_training_attention(custom, TrainConfig(attention="anchor"))
    # cross_document keeps whatever kernel the model runs.
    assert not use_training_attention(custom, TrainConfig(attention="cross_document"))
