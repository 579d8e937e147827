"""Reusable CPU buffers for large messages.

A fresh 40 MB tensor costs about as much as moving it over loopback: the allocator maps
new pages and the kernel zero-fills them on first touch (~45 ms on a 2-core machine,
against ~5 ms for an operation into an existing buffer). A node handles several such
tensors per step, so it takes them from a :class:`BufferPool`, which hands a buffer out
again only when nothing else holds it (no Python reference, no view of its storage).
"""

from __future__ import annotations

import sys
import threading

import torch
from torch import Tensor

__all__ = ["BufferPool"]


def _storage_users(t: Tensor) -> int:
    """How many holders ``t``'s storage has besides ``t`` itself (views, numpy arrays)."""
    # the Python storage object made to ask holds one reference too
    return int(torch._C._storage_Use_Count(t.untyped_storage()._cdata)) - 2


try:  # an internal torch function: without it the pool simply allocates
    _storage_users(torch.empty(1))
    _POOLING = True
except (AttributeError, RuntimeError, TypeError):  # pragma: no cover - other torch builds
    _POOLING = False


class BufferPool:
    """Hands out 1-D CPU tensors, reusing ones nobody holds any more.

    Parameters
    ----------
    per_size : int, default 16
        Buffers kept per (size, dtype); past that, buffers are allocated and not kept.
    max_keys : int, optional
        At most this many distinct (size, dtype) keys are kept; buffers of further
        sizes are allocated and not kept (so the pool's memory stays bounded whatever
        sizes are asked for).

    Notes
    -----
    A buffer is free when the pool's list holds the only reference to the tensor and
    no view shares its storage. Whoever gets a buffer owns it until they drop every
    reference; contents are undefined (like ``torch.empty``).
    """

    def __init__(self, per_size: int = 16, max_keys: int | None = None) -> None:
        self.per_size = per_size
        self.max_keys = max_keys
        self._free: dict[tuple[int, torch.dtype], list[Tensor]] = {}
        self._lock = threading.Lock()
        # references while checking: the list slot, the loop name, getrefcount's argument
        self._idle_refs = 3

    def get(self, numel: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """A tensor of ``numel`` elements of ``dtype`` that nothing else references."""
        if not _POOLING:
            return torch.empty(numel, dtype=dtype)
        key = (int(numel), dtype)
        with self._lock:
            kept = self._free.get(key)
            if kept is None:
                if self.max_keys is not None and len(self._free) >= self.max_keys:
                    return torch.empty(numel, dtype=dtype)
                kept = self._free[key] = []
            for t in kept:
                if sys.getrefcount(t) <= self._idle_refs and _storage_users(t) == 0:
                    return t
            t = torch.empty(numel, dtype=dtype)
            if len(kept) < self.per_size:
                kept.append(t)
            return t

    def like(self, tensor: Tensor) -> Tensor:
        """A free 1-D buffer with ``tensor``'s length and dtype (for ``RelayNode(alloc=)``)."""
        return self.get(tensor.numel(), tensor.dtype)
