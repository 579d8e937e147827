"""Ready Flower client: CIFAR-10, VGG-11 without BatchNorm (ALGORITHM.md 5.1).

Read from ``data-root`` (the python-version batches); relayfl never downloads.

Usable three ways, with the identical Dirichlet split (``alpha``, ``seed``) everywhere:

* a ``NumPyClient`` through :func:`client_fn` (``ClientApp(client_fn=client_fn)`` with
  Flower's legacy FedAvg);
* a ``ClientApp``, :data:`app`: RelaySGD through relayfl's forwarding ServerApp, and
  FedAvg through ``flwr.serverapp.strategy.FedAvg``;
* the fast simulator: ``relayfl.simulate(task(config), config)``.

Examples
--------
>>> from relayfl.flower import run_relay_simulation
>>> from clients import cifar10
>>> config = RunConfig(num_clients=4, steps=20)
>>> result = run_relay_simulation(cifar10.app, config)  # doctest: +SKIP
"""

from __future__ import annotations

from flwr.app import Context
from flwr.client import Client

from relayfl.config import RunConfig
from relayfl.flower import RelayClientApp
from relayfl.flower.task_client import TaskClient, load_task
from relayfl.task import Task

__all__ = ["DATASET", "app", "client_fn", "task"]

DATASET = "cifar10"


def task(config: RunConfig | None = None) -> Task:
    """The CIFAR-10 :class:`relayfl.Task` (one definition for every engine)."""
    return load_task(DATASET, config)


def client_fn(context: Context) -> Client:
    """Flower's ``client_fn``: the client of ``context.node_config["partition-id"]``."""
    return TaskClient(DATASET, context).to_client()


#: The ClientApp (``flwr run`` component ``clients.cifar10:app``).
app = RelayClientApp(client_fn=client_fn)
