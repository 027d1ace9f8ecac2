"""The chunked cross-entropy equals the full one, in value and gradient, and never crosses documents; every
installed implementation of train.loss matches the plain loss."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from extend.training.loss import AUTO, IGNORE_INDEX, LOSSES, causal_lm_loss_sum, loss_problem, resolve_loss, shifted_targets


class WrappedHead(nn.Module):
    """An output layer that is not a plain nn.Linear (as peft wraps one): the checkpointed path."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(32, 500, bias=True)

    @property
    def weight(self):
        return self.inner.weight

    def forward(self, x):
        return self.inner(x)


def loss_and_grads(head, hidden, labels, position_ids, chunk):
    """(loss, scored tokens, gradient of the hidden states, gradient of the head's weight) at one chunk size."""
    head.zero_grad()
    hidden.grad = None
    loss, n = causal_lm_loss_sum(hidden, head, labels, position_ids, chunk_size=chunk)
    loss.backward()
    return loss.detach(), n, hidden.grad.clone(), head.weight.grad.clone()


@pytest.mark.parametrize("make_head", [lambda: nn.Linear(32, 500, bias=False), lambda: nn.Linear(32, 500, bias=True),
                                       WrappedHead], ids=["linear", "linear+bias", "wrapped"])
def test_chunked_equals_full_loss_and_gradients(make_head):
    torch.manual_seed(0)
    head = make_head()
    hidden = torch.randn(2, 37, 32, requires_grad=True)
    labels = torch.randint(0, 500, (2, 37))
    labels[0, :5] = IGNORE_INDEX
    position_ids = torch.cat([torch.arange(20), torch.arange(17)]).repeat(2, 1)

    (full, n_full, gh_full, gw_full), (chunked, n_chunked, gh_chunked, gw_chunked) = [
        loss_and_grads(head, hidden, labels, position_ids, chunk) for chunk in (0, 7)]
    assert n_full == n_chunked == 2 * 36 - 4 - 2  # 4 ignored labels, 2 document starts
    assert torch.allclose(full, chunked, rtol=1e-6, atol=1e-6)
    assert torch.allclose(gh_full, gh_chunked, atol=1e-6)
    assert torch.allclose(gw_full, gw_chunked, atol=1e-6)


def test_frozen_head_gets_no_gradient_and_bf16_works():
    torch.manual_seed(0)
    head = nn.Linear(16, 100, bias=False).to(torch.bfloat16).requires_grad_(False)
    hidden = torch.randn(1, 40, 16, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, 100, (1, 40))
    chunked, _ = causal_lm_loss_sum(hidden, head, labels, None, chunk_size=8)
    chunked.backward()
    grad = hidden.grad.clone()
    hidden.grad = None
    full, _ = causal_lm_loss_sum(hidden, head, labels, None, chunk_size=0)
    full.backward()
    assert head.weight.grad is None and grad.dtype == torch.bfloat16
    assert torch.allclose(chunked, full, rtol=1e-2)
    assert torch.allclose(grad.float(), hidden.grad.float(), atol=1e-2)


@pytest.mark.parametrize("make_head", [lambda: nn.Linear(32, 500, bias=True), WrappedHead], ids=["linear", "wrapped"])
def test_a_trained_head_in_bf16_matches_the_plain_loss(make_head):
    torch.manual_seed(3)
    head = make_head().to(torch.bfloat16)
    hidden = torch.randn(1, 60, 32, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, 500, (1, 60))
    (full, _, gh_full, gw_full), (chunked, _, gh, gw) = [loss_and_grads(head, hidden, labels, None, chunk)
                                                         for chunk in (0, 16)]
    assert gh.dtype == gw.dtype == torch.bfloat16
    assert torch.allclose(chunked, full, rtol=1e-3)
    assert relative(gh.float(), gh_full.float()) <= 1e-2 and relative(gw.float(), gw_full.float()) <= 1e-2


@pytest.mark.parametrize("wrapped", [False, True], ids=["linear", "wrapped"])
def test_the_chunked_loss_holds_one_chunk_of_logits_at_a_time(wrapped):
    """Both chunked paths (a plain head; a peft- or ZeRO-3-wrapped head under checkpointing) turn a chunk's
    logits into their gradient as they score them: the peak stays near one chunk's logits, where
    F.cross_entropy would hold three or four."""
    from bench.lib.live_memory import LiveTensorBytes

    torch.manual_seed(4)
    head = WrappedHead() if wrapped else nn.Linear(32, 8192, bias=False)
    if wrapped:
        head.inner = nn.Linear(32, 8192, bias=False)
    hidden = torch.randn(1, 2049, 32, requires_grad=True)
    labels = torch.randint(0, 8192, (1, 2049))
    chunk_logits = 512 * 8192 * 4
    with LiveTensorBytes() as live:
        loss, _ = causal_lm_loss_sum(hidden, head, labels, None, chunk_size=512)
        loss.backward()
    extra = live.peak - chunk_logits
    assert extra < 0.25 * chunk_logits, f"peak {live.peak / 2**20:.1f} MB for {chunk_logits / 2**20:.0f} MB chunks"


def test_reference_is_plain_cross_entropy():
    torch.manual_seed(1)
    head = nn.Linear(8, 11, bias=False)
    hidden, labels = torch.randn(1, 6, 8), torch.randint(0, 11, (1, 6))
    loss, n = causal_lm_loss_sum(hidden, head, labels, None, chunk_size=0)
    expected = nn.functional.cross_entropy(head(hidden[0, :-1]), labels[0, 1:], reduction="sum")
    assert n == 5 and torch.allclose(loss, expected)


def test_targets_never_cross_a_document_boundary():
    labels = torch.arange(10)[None]
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2]])
    targets = shifted_targets(labels, position_ids)
    # Position 3 would predict token 4, the first token of the next document: ignored.
    assert targets.tolist() == [[1, 2, 3, IGNORE_INDEX, 5, 6, IGNORE_INDEX, 8, 9]]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# cce on CPU is its torch_compile implementation: the first call compiles (~20 s), hence slow.
IMPLEMENTATIONS = [pytest.param(name, marks=[pytest.mark.slow] if name == "cce" else [])
                   for name in LOSSES if name != "plain"]


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_every_installed_loss_matches_the_plain_loss_in_value_and_gradients(name):
    problem = loss_problem(name, "cpu")
    if problem is not None:
        pytest.skip(problem)
    torch.manual_seed(0)
    head = nn.Linear(64, 1000, bias=False)
    hidden = torch.randn(2, 300, 64, requires_grad=True)
    labels = torch.randint(0, 1000, (2, 300))
    labels[1, :50] = IGNORE_INDEX
    position_ids = torch.cat([torch.arange(180), torch.arange(120)]).repeat(2, 1)
    results = {}
    for impl in ("plain", name):
        head.zero_grad()
        hidden.grad = None
        loss, n = causal_lm_loss_sum(hidden, head, labels, position_ids, chunk_size=128, loss=impl)
        loss.backward()
        results[impl] = (loss.detach(), n, hidden.grad.clone(), head.weight.grad.clone())
    (ref, n_ref, gh_ref, gw_ref), (got, n_got, gh, gw) = results["plain"], results[name]
    assert n_got == n_ref == 2 * 299 - 49 - 2  # labels 1..49 of row 1 ignored (0 is never a target), 2 starts
    assert abs(float(got - ref)) <= 1e-5 * abs(float(ref))
    assert relative(gh, gh_ref) <= 1e-5 and relative(gw, gw_ref) <= 1e-5


def test_a_chunk_size_of_zero_is_the_plain_loss_whatever_the_implementation():
    torch.manual_seed(2)
    head = nn.Linear(16, 50, bias=False)
    hidden, labels = torch.randn(1, 40, 16), torch.randint(0, 50, (1, 40))
    plain, _ = causal_lm_loss_sum(hidden, head, labels, chunk_size=64, loss="plain")
    chunked, _ = causal_lm_loss_sum(hidden, head, labels, chunk_size=0, loss="chunked")
    assert torch.equal(plain, chunked)


def test_auto_picks_the_first_available_implementation_per_device():
    assert resolve_loss("auto", "cpu") == AUTO["cpu"][0] == "chunked"
    assert resolve_loss("cce", "cpu") == "cce"  # a named one is taken as it is (validation checks it)
    assert resolve_loss("auto", "cuda") in LOSSES and resolve_loss("auto", "mps") == "chunked"


def test_an_unavailable_loss_is_one_line_naming_the_fix(monkeypatch):
    assert loss_problem("auto", "cpu") is None and loss_problem("chunked", "cpu") is None
    assert "choose auto or one of chunked, plain, cce, liger" in loss_problem("fused", "cpu")
    assert "runs only on cuda" in loss_problem("liger", "cpu")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "cut_cross_entropy" else real(name))
    assert loss_problem("cce", "cpu") == ("train.loss=cce needs the cut-cross-entropy package, which is not installed: "
                                          "pip install cut-cross-entropy")
    assert resolve_loss("auto", "cuda") in ("liger", "chunked")
