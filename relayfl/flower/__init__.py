"""relayfl on Flower: any Flower client as a relay worker, RelaySGD on Flower's runtime,
and FedAvg through Flower's own strategy.

The only part of relayfl that imports ``flwr`` (``import relayfl`` never does).

* :class:`RelayClientApp`: a ``ClientApp`` around a ``client_fn`` (NumPyClient) or
  Message-API ``@app.train()`` / ``@app.evaluate()`` functions; it answers relayfl's
  relay messages and Flower's ``train`` / ``evaluate``.
* :func:`simulate_clients`: the relay over Flower clients in one process.
* :func:`relay_server_app`, :func:`run_relay`, :func:`run_relay_simulation`: the
  forwarding ``ServerApp`` (it never averages), on Flower's simulation engine or a
  SuperLink.
* :func:`run_fedavg`: FedAvg through ``flwr.serverapp.strategy.FedAvg`` (or the legacy
  strategy for a NumPyClient ``client_fn``), results in relayfl's schema.
* :class:`LocalDeployment`, :func:`run_relay_deployment`: a SuperLink and SuperNodes
  on 127.0.0.1, started and ended by relayfl.
* :class:`TaskClient`, :func:`task_app`, :func:`ready_client`: a ``NumPyClient`` /
  ``ClientApp`` for any relayfl ``Task`` (the ready clients in ``clients/`` are these).
* :class:`DirichletPartitioner`: relayfl's partitioner as a ``flwr_datasets``
  ``Partitioner`` (needs the ``flower-datasets`` extra).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from relayfl.flower.client import (
    MessageTrainer,
    NumPyClientTrainer,
    RelayClientApp,
    Trainer,
    node_step,
    simulate_clients,
)
from relayfl.flower.fedavg import run_fedavg
from relayfl.flower.peer import PEER_ALGORITHMS, PeerMixer
from relayfl.flower.runtime import (
    OFFLINE_ENV,
    CountingGrid,
    FlowerRunError,
    offline_env,
    run_simulation,
)
from relayfl.flower.server import relay_server_app, run_relay, run_relay_simulation
from relayfl.flower.task_client import (
    ReadyClient,
    TaskClient,
    ready_client,
    task_app,
    task_client_fn,
)

__all__ = [
    "OFFLINE_ENV",
    "PEER_ALGORITHMS",
    "CountingGrid",
    "DirichletPartitioner",
    "FlowerRunError",
    "LocalDeployment",
    "MessageTrainer",
    "NumPyClientTrainer",
    "PeerMixer",
    "ReadyClient",
    "RelayClientApp",
    "TaskClient",
    "Trainer",
    "app_dir",
    "node_step",
    "offline_env",
    "ready_client",
    "relay_server_app",
    "run_fedavg",
    "run_relay",
    "run_relay_deployment",
    "run_relay_simulation",
    "run_simulation",
    "simulate_clients",
    "task_app",
    "task_client_fn",
]

_LAZY = {
    "DirichletPartitioner": "relayfl.flower.partitioner",
    "LocalDeployment": "relayfl.flower.deployment",
    "run_relay_deployment": "relayfl.flower.deployment",
}


def app_dir() -> Path:
    """The folder ``flwr run`` packages as relayfl's Flower app (a small FAB)."""
    return Path(__file__).parent / "app"


def __getattr__(name: str) -> Any:
    """Load the deployment helpers and the flwr_datasets partitioner on demand."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'relayfl.flower' has no attribute {name!r}")
