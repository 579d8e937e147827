"""Keyed randomness: every random choice comes from a generator keyed by
``(seed, client, step-or-epoch, stream)``, never from one global stream consumed in a
loop. So the batched engine, the per-client loop and a deployed node draw exactly the
same batches, dropout masks, augmentations and simulated drops.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["STREAMS", "generator", "key", "seeded_globals"]

#: Named random streams; the position is part of the key. ``fit``, ``evaluate`` and
#: ``initial`` key a Flower client's calls (:func:`seeded_globals`).
STREAMS: dict[str, int] = {
    "batch": 0,
    "dropout": 1,
    "augment": 2,
    "drop": 3,
    "init": 4,
    "fit": 5,
    "evaluate": 6,
    "initial": 7,
}


def key(seed: int, client: int, index: int, stream: str) -> int:
    """A 63-bit seed derived from the tuple with numpy's ``SeedSequence`` (well mixed)."""
    words = np.random.SeedSequence(
        [int(seed) & 0xFFFFFFFF, int(client), int(index), STREAMS[stream]]
    ).generate_state(2, dtype=np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1])) & ((1 << 63) - 1)


def generator(
    seed: int, client: int, index: int, stream: str, device: torch.device | str = "cpu"
) -> torch.Generator:
    """A fresh ``torch.Generator`` for one (seed, client, step or epoch, stream)."""
    g = torch.Generator(device=device)
    g.manual_seed(key(seed, client, index, stream))
    return g


@contextlib.contextmanager
def seeded_globals(seed: int, client: int, index: int, stream: str) -> Iterator[None]:
    """Within the block, the process-wide generators a user's code draws from
    (``torch``'s default CPU and CUDA generators, ``numpy.random``, ``random``) are
    seeded from :func:`key`; their states are restored after.

    relayfl runs a Flower client's ``fit`` / ``evaluate`` inside this, keyed by
    (seed, partition id, round): a client that samples batches with ``torch.randint``
    or ``DataLoader(shuffle=True)`` then draws the same numbers in process, on Ray's
    actors and on a deployed node, runs repeat exactly, and a ``torch.manual_seed`` in
    ``client_fn`` (called for every message, as Flower does) no longer repeats one
    batch every round. A seed the client's own ``fit`` sets still wins.
    """
    k = key(seed, client, index, stream)
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(k)
        np.random.seed(k % (1 << 32))
        random.seed(k)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
