"""Keyed randomness: every random choice comes from a generator keyed by
``(seed, client, step-or-epoch, stream)``, never from one global stream consumed in a
loop. So the batched engine, the per-client loop and a deployed node draw exactly the
same batches, dropout masks, augmentations and simulated drops.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["STREAMS", "generator", "key"]

#: Named random streams; the position is part of the key.
STREAMS: dict[str, int] = {"batch": 0, "dropout": 1, "augment": 2, "drop": 3, "init": 4}


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
