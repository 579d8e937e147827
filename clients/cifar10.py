"""Ready Flower client: CIFAR-10, VGG-11 without BatchNorm (ALGORITHM.md 5.1).

Read from ``data-root`` (the python-version batches); relayfl never downloads.

Usable three ways, with the identical Dirichlet split (``alpha``, ``seed``) everywhere:

* a ``NumPyClient`` through :func:`client_fn` (``ClientApp(client_fn=client_fn)`` with
  Flower's legacy FedAvg);
* a ``ClientApp``, :data:`app` (``flwr run`` component ``clients.cifar10:app``): RelaySGD
  through relayfl's forwarding ServerApp, and FedAvg through
  ``flwr.serverapp.strategy.FedAvg``;
* the fast simulator: ``relayfl.simulate(task(config), config)``.

All three come from :func:`relayfl.flower.task_client.ready_client`.

Examples
--------
>>> from relayfl.flower import run_relay_simulation
>>> from clients import cifar10
>>> config = RunConfig(num_clients=4, steps=20)
>>> result = run_relay_simulation(cifar10.app, config)  # doctest: +SKIP
"""

from __future__ import annotations

from relayfl.flower.task_client import ready_client

__all__ = ["DATASET", "app", "client_fn", "task"]

DATASET = "cifar10"

task, client_fn, app = ready_client(DATASET)
