"""The chunked cross-entropy equals the full one, in value and gradient, and never crosses documents."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from extend.training.loss import IGNORE_INDEX, causal_lm_loss_sum, shifted_targets


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


@pytest.mark.parametrize("make_head", [lambda: nn.Linear(32, 500, bias=False), lambda: nn.Linear(32, 500, bias=True),
                                       WrappedHead], ids=["linear", "linear+bias", "wrapped"])
def test_chunked_equals_full_loss_and_gradients(make_head):
    torch.manual_seed(0)
    head = make_head()
    hidden = torch.randn(2, 37, 32, requires_grad=True)
    labels = torch.randint(0, 500, (2, 37))
    labels[0, :5] = IGNORE_INDEX
    position_ids = torch.cat([torch.arange(20), torch.arange(17)]).repeat(2, 1)

    results = []
    for chunk in (0, 7):
        head.zero_grad()
        hidden.grad = None
        loss, n = causal_lm_loss_sum(hidden, head, labels, position_ids, chunk_size=chunk)
        loss.backward()
        results.append((loss.detach(), n, hidden.grad.clone(), head.weight.grad.clone()))
    (full, n_full, gh_full, gw_full), (chunked, n_chunked, gh_chunked, gw_chunked) = results
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
