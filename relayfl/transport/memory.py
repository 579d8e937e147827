"""In-memory transport: the nodes of a run as threads of one process.

The same interface as the network transport, with no sockets: a :class:`MemoryHub`
connects the :class:`MemoryTransport` of every node. Payloads are copied on send, so
nodes share no tensors. The hub can kill a node (its messages and status calls fail from
then on) and drop or delay links, which is how the node protocol is tested quickly.

Examples
--------
>>> hub = MemoryHub()
>>> transports = [MemoryTransport(hub) for _ in range(4)]  # one per node thread
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from relayfl.errors import TransportError
from relayfl.transport.base import Handler, LinkSpec, Message, Rejected, check_control

__all__ = ["MemoryHub", "MemoryTransport"]

#: Bytes booked for a message's header (what the network transport sends besides the
#: payload), so byte counts of both transports are comparable.
HEADER_BYTES = 160


class MemoryHub:
    """Connects the in-memory transports of one run.

    Attributes
    ----------
    delay : float
        Seconds every data message takes to arrive (0: at once, on the sender's thread).
    """

    def __init__(self, *, delay: float = 0.0) -> None:
        self.delay = delay
        self._nodes: dict[int, MemoryTransport] = {}
        self._dead: set[int] = set()
        self._lock = threading.Lock()
        #: ``filter(message, dst) -> bool``: False loses the message (tests).
        self.filter: Callable[[Message, int], bool] | None = None

    def _register(self, node: int, transport: MemoryTransport) -> None:
        with self._lock:
            self._dead.discard(node)
            self._nodes[node] = transport

    def kill(self, node: int) -> None:
        """Node ``node`` goes silent: its messages and status calls fail from now on."""
        with self._lock:
            self._dead.add(node)

    def alive(self, node: int) -> bool:
        with self._lock:
            return node in self._nodes and node not in self._dead

    def _target(self, src: int, dst: int) -> MemoryTransport | None:
        with self._lock:
            if src in self._dead or dst in self._dead:
                return None
            return self._nodes.get(dst)


class MemoryTransport:
    """One node's end of a :class:`MemoryHub` (see :class:`~relayfl.transport.base.Transport`).

    Parameters
    ----------
    hub : MemoryHub
    """

    def __init__(self, hub: MemoryHub) -> None:
        self.hub = hub
        self.spec: LinkSpec | None = None
        self.handler: Handler | None = None
        self._sent = 0
        self._received = 0
        self._lock = threading.Lock()
        self._closed = False

    def start(self, spec: LinkSpec, handler: Handler) -> dict[str, str]:
        self.spec, self.handler = spec, handler
        self.hub._register(spec.node, self)
        return {"control": f"memory://{spec.node}", "data": f"memory://{spec.node}"}

    def set_peers(self, addresses: Mapping[int, str]) -> None:
        """Nothing to connect: the hub knows every node."""

    def status(self, peer: int, status: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        spec = self._spec()
        target = self.hub._target(spec.node, peer)
        if target is None or target._closed or target.spec is None:
            return None
        body = {"run": spec.run_id, "sender": spec.node, "token": spec.token}
        try:
            sender = check_control(body, target.spec)
        except Rejected as err:
            target._reject(err, f"memory://{spec.node}")
            raise
        return target.handler.on_status(sender, dict(status))  # type: ignore[union-attr]

    def send(self, peer: int, message: Message) -> None:
        self._spec()
        copy = Message(
            message.run_id,
            message.step,
            message.sender,
            message.tree,
            message.count,
            message.payload.detach().clone(),
        )
        with self._lock:
            self._sent += message.nbytes + HEADER_BYTES
        if self.hub.delay > 0:
            timer = threading.Timer(self.hub.delay, self._deliver, (peer, copy))
            timer.daemon = True
            timer.start()
        else:
            self._deliver(peer, copy)

    def _deliver(self, peer: int, message: Message) -> None:
        spec = self._spec()
        target = self.hub._target(spec.node, peer)
        lost = self.hub.filter is not None and not self.hub.filter(message, peer)
        if target is None or target._closed or target.spec is None or lost:
            if not lost:
                self.handler.on_send_failed(peer, message.step)  # type: ignore[union-attr]
            return
        if message.sender not in target.spec.peers:
            target._reject(
                Rejected("not-neighbour", f"node {message.sender} is not a neighbour"),
                f"memory://{spec.node}",
            )
            return
        with target._lock:
            target._received += message.nbytes + HEADER_BYTES
        target.handler.on_message(message)  # type: ignore[union-attr]

    def _reject(self, err: Rejected, source: str) -> None:
        if self.handler is not None:
            self.handler.on_reject(err.kind, source, err.detail)

    def _spec(self) -> LinkSpec:
        if self.spec is None:
            raise TransportError("transport used before start(); call start(spec, handler)")
        return self.spec

    def bytes_sent(self) -> int:
        with self._lock:
            return self._sent

    def bytes_received(self) -> int:
        with self._lock:
            return self._received

    def close(self, timeout: float = 10.0) -> None:
        if self.hub.delay > 0:
            time.sleep(min(self.hub.delay, timeout))  # let in-flight messages land
        self._closed = True
