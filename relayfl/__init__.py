"""relayfl: serverless decentralized learning for Flower with RelaySum / RelaySGD.

``import relayfl`` never imports flwr, grpc or Ray: the simulator runs where Flower is
not installed. Flower integration lives in :mod:`relayfl.flower`, loaded on demand.
"""

from __future__ import annotations

import importlib
from typing import Any

from relayfl import partition, relay, topology
from relayfl.config import RunConfig
from relayfl.errors import RelayflError
from relayfl.results import EvalRecord, RunResult
from relayfl.simulation import simulate
from relayfl.task import Task

__all__ = [
    "EvalRecord",
    "RelayflError",
    "RunConfig",
    "RunResult",
    "Task",
    "partition",
    "relay",
    "simulate",
    "topology",
]

__version__ = "0.1.0"

_LAZY_MODULES = {"flower"}


def __getattr__(name: str) -> Any:
    """Load the Flower integration only when asked for (it imports flwr)."""
    if name in _LAZY_MODULES:
        return importlib.import_module(f"relayfl.{name}")
    raise AttributeError(f"module 'relayfl' has no attribute {name!r}")
