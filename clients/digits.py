"""Ready Flower client: scikit-learn's bundled 8x8 digits, small CNN (no download).

``task``, ``client_fn`` and ``app`` (``flwr run`` component ``clients.digits:app``) as
described in :mod:`clients`.
"""

from __future__ import annotations

from relayfl.flower.task_client import ready_client

__all__ = ["DATASET", "app", "client_fn", "task"]

DATASET = "digits"

task, client_fn, app = ready_client(DATASET)
