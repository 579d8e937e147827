"""Ready Flower client: scikit-learn's bundled 8x8 digits, small CNN (no download).

Usable three ways, with the identical Dirichlet split (``alpha``, ``seed``) everywhere:

* a ``NumPyClient`` through :func:`client_fn` (``ClientApp(client_fn=client_fn)`` with
  Flower's legacy FedAvg);
* a ``ClientApp``, :data:`app` (``flwr run`` component ``clients.digits:app``): RelaySGD
  through relayfl's forwarding ServerApp, and FedAvg through
  ``flwr.serverapp.strategy.FedAvg``;
* the fast simulator: ``relayfl.simulate(task(config), config)``.

All three come from :func:`relayfl.flower.task_client.ready_client`.

Examples
--------
>>> from relayfl.flower import run_relay_simulation
>>> from clients import digits
>>> config = RunConfig(num_clients=4, steps=20)
>>> result = run_relay_simulation(digits.app, config)  # doctest: +SKIP
"""

from __future__ import annotations

from relayfl.flower.task_client import ready_client

__all__ = ["DATASET", "app", "client_fn", "task"]

DATASET = "digits"

task, client_fn, app = ready_client(DATASET)
