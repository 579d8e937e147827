"""The transport interface a node talks through, and the checks every transport shares.

A node (:mod:`relayfl.node`) runs the step-synchronous relay protocol; a transport only
moves two kinds of things between node ids:

* **data messages** (:class:`Message`): one tree's relayed tensor for one step, sent
  asynchronously, newest first, dropped (never retried) when the link fails;
* **status calls** (heartbeats): a small dict sent to a neighbour, answered by the
  neighbour's own status. Liveness travels here, apart from the data, so a node that
  is busy receiving a large model, or blocked on another peer, still answers.

Two implementations share this interface: :class:`~relayfl.transport.memory.MemoryTransport`
(nodes as threads of one process, for tests and simulation) and
:class:`~relayfl.transport.grpc.GrpcTransport` (gRPC control calls plus framed TCP/TLS
data streams, for real deployments).

Every transport refuses a peer that is not one of the node's neighbours, a wrong run
token and a wrong run id, and reports each refusal to :meth:`Handler.on_reject` in one
line. Semantic checks of a data message (step window, replay, shape, dtype, NaN) are the
node's (:class:`Rejected` kinds listed in :data:`REJECT_KINDS`).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from relayfl.errors import TransportError

__all__ = [
    "DTYPES",
    "REJECT_KINDS",
    "Handler",
    "LinkSpec",
    "Message",
    "Rejected",
    "Transport",
    "check_control",
    "dtype_name",
    "node_name",
]

#: Wire names of the tensor dtypes a message may carry.
DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}

#: Why a message or a peer was refused (the first word of every rejection log line).
REJECT_KINDS: tuple[str, ...] = (
    "malformed",  # bad magic, bad JSON, missing or mistyped fields, inconsistent sizes
    "truncated",  # the connection ended inside a frame
    "oversized",  # header or payload larger than this run's messages can be
    "wrong-shape",
    "wrong-dtype",
    "wrong-run",  # another run id (other config or topology)
    "wrong-token",
    "wrong-tree",
    "bad-count",
    "not-neighbour",  # a peer that is not in the topology, or not adjacent to this node
    "bad-certificate",  # TLS handshake failed, or the certificate names another node
    "spoofed-sender",  # a frame claims another sender than its connection's
    "replay",  # a step already used (or a duplicate of a buffered message)
    "too-far-ahead",  # more than one step ahead of this node
    "non-finite",  # NaN or Inf in the payload
    "busy",  # too many connections or handshakes in progress: closed at once
    "handshake-timeout",  # TLS and hello did not finish within the handshake deadline
)


def node_name(node: int) -> str:
    """The TLS name of node ``node``: its certificate's common name and DNS name."""
    return f"relayfl-node-{node}"


def dtype_name(dtype: torch.dtype) -> str:
    """Wire name of a dtype (inverse of :data:`DTYPES`)."""
    for name, dt in DTYPES.items():
        if dt == dtype:
            return name
    raise TransportError(
        f"dtype {dtype} cannot be sent; relay floating tensors ({', '.join(DTYPES)})"
    )


class Rejected(TransportError):
    """A message or a peer was refused; ``kind`` is one of :data:`REJECT_KINDS`."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Message:
    """One tree's relayed tensor from one node at one communication step.

    Attributes
    ----------
    run_id : str
        The run's id (:func:`relayfl.node.run_id`): nodes with another config or
        topology have another id.
    step : int
        Communication step (round) the message belongs to.
    sender : int
    tree : int
        Which tree (or gossip graph) of the topology carries it (0, or 0/1 for double
        binary trees).
    count : float
        RelaySum count ``c_{i->j}`` (how many workers' values the sum holds; 1 for gossip).
    payload : Tensor[d_k]
        The message ``m_{i->j}`` (the tree's slice of the flat model), on the CPU.
    """

    run_id: str
    step: int
    sender: int
    tree: int
    count: float
    payload: Tensor

    @property
    def nbytes(self) -> int:
        return self.payload.numel() * self.payload.element_size()


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """What a transport needs to know to accept or refuse peers and messages.

    Attributes
    ----------
    node : int
        This node's id.
    run_id : str
    peers : frozenset of int
        The neighbours allowed to talk to this node (every other id is refused).
    token : str, optional
        The shared run token; when set, a peer must present the same one.
    max_payload_bytes : int
        Size of the largest message of this run; anything larger is refused unread.
    frame_sizes : frozenset of int, optional
        The payload sizes (bytes) this run's messages have (one per tree). Only frames
        of these sizes are read into reused buffers; others (which the node refuses)
        into a buffer freed at once, so the memory a node keeps does not depend on the
        sizes a peer claims. None: any size, in a pool bounded to a few sizes.
    """

    node: int
    run_id: str
    peers: frozenset[int]
    token: str | None
    max_payload_bytes: int
    frame_sizes: frozenset[int] | None = None


@runtime_checkable
class Handler(Protocol):
    """What a transport calls back into (the node implements it).

    Calls come from the transport's own threads; implementations must be thread-safe.
    """

    def on_message(self, message: Message) -> None:
        """A data message from an authenticated neighbour (checks of the step window,
        shape, dtype and values are the handler's)."""

    def on_status(self, sender: int, status: dict[str, Any]) -> dict[str, Any]:
        """A neighbour's status (heartbeat); return this node's own status."""

    def on_reject(self, kind: str, source: str, detail: str) -> None:
        """A refused message or peer (log one line; never raise)."""

    def on_progress(self, sender: int) -> None:
        """Bytes of a data message from ``sender`` are arriving (a long transfer)."""

    def on_send_failed(self, peer: int, step: int) -> None:
        """The message for ``step`` to ``peer`` could not be delivered (it is dropped)."""


@runtime_checkable
class Transport(Protocol):
    """Moves data messages and status calls between the nodes of one run.

    A node calls :meth:`start` once, then :meth:`set_peers` with its neighbours'
    addresses, then any number of :meth:`send` and :meth:`status` calls, then
    :meth:`close`.
    """

    def start(self, spec: LinkSpec, handler: Handler) -> dict[str, str]:
        """Start listening; return the addresses peers reach this node at
        (``{"control": ..., "data": ...}``)."""

    def set_peers(self, addresses: Mapping[int, str]) -> None:
        """The control address of each neighbour (from the topology)."""

    def status(self, peer: int, status: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """Send this node's status to ``peer`` and return the peer's, or ``None`` when the
        peer cannot be reached within ``timeout`` seconds.

        Raises
        ------
        Rejected
            The peer refused the call (wrong token, wrong run, not a neighbour, ...).
        """

    def send(self, peer: int, message: Message) -> None:
        """Queue ``message`` for ``peer`` and return at once.

        A newer message of the same tree replaces an unsent older one; a message that
        cannot be delivered is dropped and reported to :meth:`Handler.on_send_failed`.
        """

    def bytes_sent(self) -> int:
        """Bytes put on the wire so far (headers included)."""

    def bytes_received(self) -> int:
        """Bytes taken off the wire so far (headers included)."""

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (for at most ``timeout`` seconds), then stop."""


def check_control(body: Mapping[str, Any], spec: LinkSpec) -> int:
    """Validate the envelope of a status call; return the sender's id.

    Raises
    ------
    Rejected
        ``malformed``, ``wrong-token``, ``wrong-run`` or ``not-neighbour``, with a message
        that names the fix.
    """
    sender = body.get("sender")
    if not isinstance(sender, int) or isinstance(sender, bool):
        raise Rejected("malformed", f"status call without an integer sender (got {sender!r})")
    if spec.token is not None:
        token = body.get("token")
        if not isinstance(token, str) or not hmac.compare_digest(
            token.encode("utf-8", "replace"), spec.token.encode()
        ):
            raise Rejected(
                "wrong-token",
                f"node {sender} presented a wrong run token; give every node the same "
                "--token-file (or RELAYFL_TOKEN)",
            )
    run = body.get("run")
    if run != spec.run_id:
        raise Rejected(
            "wrong-run",
            f"node {sender} runs run id {run!r}, this node {spec.run_id!r}; start every node "
            "with the same options, config, topology and initial model (--initial FILE)",
        )
    if sender not in spec.peers:
        raise Rejected(
            "not-neighbour",
            f"node {sender} is not a neighbour of node {spec.node} in the topology "
            f"(neighbours: {sorted(spec.peers)}); check --id and the topology file",
        )
    return sender
