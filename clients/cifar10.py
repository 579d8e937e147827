"""Ready Flower client: CIFAR-10, VGG-11 without BatchNorm (docs/algorithm.md 5.1), read
from ``data-root`` (the python-version batches); relayfl never downloads.

``task``, ``client_fn`` and ``app`` (``flwr run`` component ``clients.cifar10:app``) as
described in :mod:`clients`.
"""

from __future__ import annotations

from relayfl.flower.task_client import ready_client

__all__ = ["DATASET", "app", "client_fn", "task"]

DATASET = "cifar10"

task, client_fn, app = ready_client(DATASET)
