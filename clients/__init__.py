"""Ready Flower clients built from relayfl's tasks: ``digits``, ``fashion_mnist``, ``cifar10``.

Each module is :func:`relayfl.flower.task_client.ready_client` of its dataset and offers,
with the identical Dirichlet split (``alpha``, ``seed``) everywhere:

* ``client_fn``: Flower's ``client_fn`` returning a ``NumPyClient`` (use it with
  ``ClientApp(client_fn=client_fn)`` and Flower's legacy FedAvg);
* ``app``: a ``ClientApp`` answering RelaySGD through relayfl's forwarding ServerApp and
  FedAvg through ``flwr.serverapp.strategy.FedAvg``;
* ``task(config)``: the fast simulator's ``Task`` (``relayfl.simulate(task(config),
  config)``).

Importing a module imports flwr.

Examples
--------
>>> from relayfl.flower import run_relay_simulation
>>> from clients import digits
>>> result = run_relay_simulation(digits.app, RunConfig(num_clients=4))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MODULES", "load"]

#: Ready client module per dataset name (kebab-case, as on the CLI).
MODULES: dict[str, str] = {
    "digits": "clients.digits",
    "fashion-mnist": "clients.fashion_mnist",
    "cifar10": "clients.cifar10",
}


def load(dataset: str) -> ModuleType:
    """The ready client module of ``dataset`` (``clients.load("digits").app``)."""
    from relayfl.errors import ConfigError

    if dataset not in MODULES:
        raise ConfigError(
            f"no ready Flower client for dataset {dataset!r}; use one of "
            f"{', '.join(MODULES)}, or bring your own client_fn / ClientApp"
        )
    return importlib.import_module(MODULES[dataset])
