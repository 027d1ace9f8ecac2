"""bench/lib/live_memory.py: the most tensor bytes alive at once, counted through a dispatch mode."""

import torch

from bench.lib.live_memory import LiveTensorBytes

MB = 2**20


def test_counts_what_is_alive_at_once_and_forgets_what_is_freed():
    with LiveTensorBytes() as live:
        a = torch.zeros(MB // 4)  # 1 MB of float32
        b = torch.zeros(MB // 2)  # 2 MB
        view = b[10:]  # a view adds nothing
        assert (live.live, live.peak) == (3 * MB, 3 * MB)
        del a
        assert (live.live, live.peak) == (2 * MB, 3 * MB)
        del b
        assert live.live == 2 * MB  # the view keeps the storage alive
        del view
        assert live.live == 0
        live.reset()
        c = torch.ones(MB // 4)
        assert live.peak == MB
    del c


def test_backward_is_counted_and_tensors_from_before_are_not():
    weight = torch.randn(256, 256, requires_grad=True)  # before the mode: not counted
    with LiveTensorBytes() as live:
        out = (weight @ weight).relu().sum()
        forward_peak = live.peak
        out.backward()
    assert forward_peak >= 256 * 256 * 4  # the product
    assert live.peak >= forward_peak + 256 * 256 * 4  # the gradient exists besides what the backward keeps


def test_views_and_in_place_ops_on_tensors_from_before_allocate_nothing():
    weight = torch.randn(512, 512)  # 1 MB, before the mode
    with LiveTensorBytes() as live:
        transposed = weight.t()  # what F.linear does with a weight
        weight.mul_(1.0)
        rows = weight[:10]
        assert live.peak == 0
        product = transposed @ rows.t()  # a new 512 x 10 result
        assert live.peak == 512 * 10 * 4
    del transposed, rows, product
