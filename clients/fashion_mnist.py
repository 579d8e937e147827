"""Ready Flower client: Fashion-MNIST (28x28), small CNN, read from Debian's
``dataset-fashion-mnist`` folder (or ``data-root``); no download.

``task``, ``client_fn`` and ``app`` (``flwr run`` component ``clients.fashion_mnist:app``) as
described in :mod:`clients`.
"""

from __future__ import annotations

from relayfl.flower.task_client import ready_client

__all__ = ["DATASET", "app", "client_fn", "task"]

DATASET = "fashion-mnist"

task, client_fn, app = ready_client(DATASET)
