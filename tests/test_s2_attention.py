"""S²-Attn (LongLoRA's shifted sparse attention) computes what a plainly written reference computes, is full
attention at one group per row, never crosses documents or looks ahead, and trains a model that exports and
reloads as a plain one."""

from __future__ import annotations

import json
import math

import pytest
import torch
from peft import PeftModel
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from extend.config import TrainConfig
from extend.models import load_base_config, load_base_model
from extend.models.tokenizer import load_tokenizer
from extend.rope import apply_rope, resolve_rope
from extend.models import s2_attention
from extend.models.s2_attention import s2_sdpa_attention
from extend.models.training_attention import restore_attention, use_training_attention
from extend.train import train

from training_fixtures import dataset_dir, make_config, stock_reload_max_diff  # noqa: F401  (fixtures)

SHAPE = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)


def reference(q, k, v, groups, position_ids=None, shift_half=True, wrap=False):
    """S²-Attn written out token by token. Heads [0, H/2) attend within groups [0, G), [G, 2G), ...; heads
    [H/2, H) within groups shifted by G/2: [0, G/2), [G/2, 3G/2), ..., [T - G/2, T) (no wrap-around; no shift
    at one group per row). A token attends to itself and earlier tokens of its group and of its document.
    wrap=True: LongLoRA's roll instead (the row's first G/2 tokens share a group with its last G/2, which come
    first in it); shift_half=False: no head is shifted. Both only to show that the reference can fail."""
    rows, heads, length, dim = q.shape
    k = k.repeat_interleave(heads // k.shape[1], dim=1)
    v = v.repeat_interleave(heads // v.shape[1], dim=1)
    size = length // groups
    out = torch.zeros_like(q)
    for b in range(rows):
        doc, d = [], -1
        for t in range(length):
            if position_ids is not None and position_ids[b, t] == 0:
                d += 1
            doc.append(d)
        for h in range(heads):
            shift = size // 2 if shift_half and h >= heads // 2 and groups > 1 else 0
            if wrap:
                order = [(j - shift) % length for j in range(length)]  # index after rolling the row by -G/2
            else:
                order = list(range(length))
            group = [(order[j] + (0 if wrap else shift)) // size for j in range(length)]
            for i in range(length):
                allowed = [j for j in range(length)
                           if group[j] == group[i] and order[j] <= order[i] and doc[j] == doc[i]]
                scores = torch.stack([q[b, h, i] @ k[b, h, j] / math.sqrt(dim) for j in allowed])
                weights = torch.softmax(scores, dim=0)
                out[b, h, i] = sum(w * v[b, h, j] for w, j in zip(weights, allowed))
    return out.transpose(1, 2)


def qkv(rows=2, heads=4, kv_heads=2, length=24, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, heads, length, dim, generator=g), torch.randn(rows, kv_heads, length, dim, generator=g),
            torch.randn(rows, kv_heads, length, dim, generator=g))


def s2(q, k, v, groups, position_ids=None):
    return s2_sdpa_attention(nn.Module(), q, k, v, None, position_ids, groups=groups, scaling=q.shape[-1] ** -0.5)[0]


@pytest.fixture(params=["masked", "per segment"])
def boundary_path(request, monkeypatch):
    """Groups holding a boundary run as one masked call, or (at long lengths) one causal call per segment."""
    if request.param == "per segment":
        monkeypatch.setattr(s2_attention, "MASKED_BYTES", 0)
    return request.param


@pytest.mark.parametrize("groups", [2, 4, 6])
def test_equals_the_written_out_reference(groups, boundary_path):
    q, k, v = qkv()
    torch.testing.assert_close(s2(q, k, v, groups), reference(q, k, v, groups), rtol=1e-5, atol=1e-5)


def test_equals_the_reference_on_packed_documents(boundary_path):
    q, k, v = qkv(length=24)
    positions = torch.stack([torch.cat([torch.arange(5), torch.arange(11), torch.arange(8)]),  # boundaries in groups
                             torch.cat([torch.arange(3, 15), torch.arange(12)])])  # starts mid-document
    torch.testing.assert_close(s2(q, k, v, 4, positions), reference(q, k, v, 4, positions), rtol=1e-5, atol=1e-5)


def test_explicit_document_ids_keep_documents_apart_under_skipped_positions(boundary_path):
    """The loop's explicit document ids, not the position ids, decide the boundaries: here no position id is 0
    and ids skip inside documents, so the position-0 rule would see one document per row."""
    q, k, v = qkv(length=24)
    plain = torch.stack([torch.cat([torch.arange(5), torch.arange(11), torch.arange(8)]),
                         torch.cat([torch.arange(3, 15), torch.arange(12)])])
    documents = (plain == 0).cumsum(dim=-1)
    skipped = plain + 100 + (plain >= 3) * 40  # no id is 0; every document's second chunk skips 40
    got = s2_sdpa_attention(nn.Module(), q, k, v, None, skipped, documents, groups=4, scaling=q.shape[-1] ** -0.5)[0]
    torch.testing.assert_close(got, reference(q, k, v, 4, plain), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(s2(q, k, v, 4, skipped), got, atol=1e-3)  # without them: documents would mix


def test_the_reference_can_fail():
    """Leaving the heads unshifted, or wrapping the shifted groups around the row end (LongLoRA's roll), is
    told apart: the shifted heads differ, and the wrap differs exactly at the row's first G/2 tokens."""
    q, k, v = qkv(rows=1)
    got = s2(q, k, v, 4)  # G = 6
    assert (got[:, :, 2:] - reference(q, k, v, 4, shift_half=False)[:, :, 2:]).abs().max() > 1e-2
    wrapped = reference(q, k, v, 4, wrap=True)
    assert (got[:, :3, 2:] - wrapped[:, :3, 2:]).abs().max() > 1e-2
    torch.testing.assert_close(got[:, 3:], wrapped[:, 3:], rtol=1e-5, atol=1e-5)


def test_one_group_per_row_is_full_causal_attention():
    q, k, v = qkv(length=32)
    full = nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                                      is_causal=True).transpose(1, 2)
    torch.testing.assert_close(s2(q, k, v, 1), full, rtol=1e-5, atol=1e-6)
    assert (s2(q, k, v, 2) - full).abs().max() > 1e-2  # and two groups are not


def test_no_token_sees_a_later_one_not_even_across_the_row_end(boundary_path):
    """LongLoRA's roll puts the row's first G/2 tokens in one group with its last G/2 (their future); here the
    output at every position has zero gradient from every later key and value."""
    q, k, v = (t.requires_grad_() for t in qkv(rows=1, length=16))
    out = s2(q, k, v, 4)
    for i in range(16):
        gk, gv = torch.autograd.grad(out[0, i].sum(), (k, v), retain_graph=True)
        assert gk[0, :, i + 1 :].abs().sum() == 0 and gv[0, :, i + 1 :].abs().sum() == 0, i


def s2_model(fraction=0.25, seed=0):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE))
    assert use_training_attention(model, TrainConfig(attention="s2", s2_group_fraction=fraction))
    return model


def test_no_tokens_loss_depends_on_another_documents_tokens(boundary_path):
    """As the plain packing test: a packed row of three documents (boundaries inside groups); the loss of each
    document's tokens has zero gradient with respect to every other document's input embeddings, and the
    check fails when the positions do not restart (one document)."""
    model = s2_model()
    length, spans = 96, [(0, 30), (30, 80), (80, 96)]
    embeds = model.get_input_embeddings()(torch.randint(0, 300, (1, length))).detach()
    positions = torch.cat([torch.arange(b - a) for a, b in spans])[None]

    def gradient(doc, position_ids):
        x = embeds.clone().requires_grad_()
        logits = model(inputs_embeds=x, position_ids=position_ids, use_cache=False).logits
        a, b = spans[doc]
        logits[0, a:b].logsumexp(-1).sum().backward()
        return x.grad[0].abs().sum(-1)

    for doc, (a, b) in enumerate(spans):
        grad = gradient(doc, positions)
        assert grad[a:b].sum() > 0
        assert grad[:a].sum() == 0 and grad[b:].sum() == 0, doc
    assert gradient(1, torch.arange(length)[None])[:30].max() > 0  # the check can fail


def test_model_at_one_group_equals_full_attention_and_restores_sdpa():
    ids = torch.randint(0, 300, (2, 64))
    model = s2_model(fraction=1.0)
    with torch.no_grad():
        got = model(ids, use_cache=False).logits
        restore_attention(model)
        assert model.config._attn_implementation == "sdpa"
        want = model(ids, use_cache=False).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_refuses_a_row_that_does_not_split_and_a_kernel_it_cannot_replace():
    with pytest.raises(ValueError, match="multiple of the group count"):
        s2_model()(torch.randint(0, 300, (1, 30)), use_cache=False)
    torch.manual_seed(0)
    custom = LlamaForCausalLM._from_config(LlamaConfig(**SHAPE), attn_implementation="flex_attention")
    with pytest.raises(ValueError, match="cannot stand in"):
        use_training_attention(custom, TrainConfig(attention="s2"))


@pytest.mark.slow  # trains two tiny runs and reloads the export in a fresh interpreter (~30 s)
def test_s2_trained_export_reloads_in_stock_transformers_with_plain_attention(make_config, tmp_path):
    cfg = make_config("train.attention=s2", "train.max_steps=2", "train.checkpoint_every=0")
    final = train(cfg)
    full = train(make_config("train.max_steps=2", "train.checkpoint_every=0", f"output_dir={tmp_path / 'full'}"))
    losses = json.loads((final / "run_card.json").read_text())["losses"]
    assert losses[0] != pytest.approx(json.loads((full / "run_card.json").read_text())["losses"][0], abs=1e-6)
    saved = json.loads((final / "config.json").read_text())
    assert not any("attn" in key for key in saved), saved  # no kernel recorded: loaders choose their own
    ids = torch.randint(0, 4000, (1, 128), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = PeftModel.from_pretrained(base_model(cfg), final / "adapter")(ids, use_cache=False).logits
    plain = "m.config._attn_implementation == 'sdpa'"
    assert stock_reload_max_diff(final, ids, expected, tmp_path, check=plain) <= 1e-5


def base_model(cfg):
    tokenizer = load_tokenizer(cfg.data.tokenizer, cfg.data.cache_dir)
    config = load_base_config(cfg.model, tokenizer=tokenizer)
    return load_base_model(cfg.model, apply_rope(config, resolve_rope(cfg.rope, config)))
