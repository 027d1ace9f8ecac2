"""Peak bytes of live tensor storage on CPU: what a GPU caching allocator's `max_memory_allocated` reports,
which CPU torch does not keep.

A process's resident size (ru_maxrss) is a poor proxy for it on CPU: glibc keeps freed buffers in its heaps,
so the resident peak follows how allocations were laid out, not what was alive at once. `LiveTensorBytes` is
a TorchDispatchMode that sees every aten op's outputs; each storage it has not seen yet is counted with its
size until Python frees it (a weakref finalizer), so `peak` is the most tensor bytes alive at one moment
between `reset()` and now. Storages created before the mode (weights, optimizer state made earlier) are not
counted: it measures what the work inside adds. Autograd's backward runs on the calling thread for CPU
tensors and inherits the mode, so gradients and saved activations are counted too.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorBytes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def reset(self) -> None:
        self.peak = self.live

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = storage.data_ptr()
        if key == 0 or key in self._seen:
            return
        size = storage.nbytes()
        self._seen.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self._seen.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # An output on an input's storage (a view, an in-place op) allocated nothing: a view of a weight
        # made before the mode must not count the weight.
        inputs = {v.untyped_storage().data_ptr() for v in tree_flatten((args, kwargs))[0]
                  if isinstance(v, torch.Tensor) and v.device.type == "cpu" and not v.is_meta}
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor) and value.device.type == "cpu" and not value.is_meta:
                storage = value.untyped_storage()
                if storage.data_ptr() not in inputs:
                    self._track(storage)
        return out
