"""Transports a node talks through: in memory (threads) or over the network.

:mod:`relayfl.transport.base` holds the interface (:class:`Transport`, :class:`Message`)
and :mod:`relayfl.transport.memory` the in-process implementation. The network one,
:class:`GrpcTransport`, is loaded on first use so that importing relayfl never imports
grpc.
"""

from __future__ import annotations

import importlib
from typing import Any

from relayfl.transport.base import Handler, LinkSpec, Message, Rejected, Transport
from relayfl.transport.memory import MemoryHub, MemoryTransport

__all__ = [
    "GrpcTransport",
    "Handler",
    "LinkSpec",
    "MemoryHub",
    "MemoryTransport",
    "Message",
    "Rejected",
    "Transport",
]


def __getattr__(name: str) -> Any:
    """``GrpcTransport`` imports grpc: load it only when asked for."""
    if name == "GrpcTransport":
        return importlib.import_module("relayfl.transport.grpc").GrpcTransport
    raise AttributeError(f"module 'relayfl.transport' has no attribute {name!r}")
