"""Ready Flower clients built from relayfl's tasks: ``digits``, ``fashion_mnist``, ``cifar10``.

Each module offers ``client_fn`` (a ``NumPyClient``), ``app`` (a ``ClientApp`` for the
relay and for Flower's FedAvg) and ``task(config)`` (the fast simulator's ``Task``), all
partitioned with relayfl's Dirichlet partitioner. Importing a module imports flwr.
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
