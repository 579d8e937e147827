"""Network transport: gRPC for control calls, framed TCP/TLS streams for the tensors.

Two channels per pair of neighbours, as ``relayfl node`` deploys them:

* **control** (gRPC, hand-written generic handler ``/relayfl.Node/Status`` with JSON
  bytes; no generated code): heartbeats and the rendezvous. Each call carries the run id,
  the sender's id and the run token, and is answered with the callee's status and the
  port of its data stream. Small, frequent, independent of the data.
* **data** (one persistent TCP connection per direction, optionally TLS): frames of
  :mod:`relayfl.transport.wire`, a JSON header and the raw tensor bytes, written with
  ``sendall`` from the tensor's memory and read with ``recv_into`` straight into a new
  tensor (no copy, no size limit besides the run's own message size).

Why not the tensors on gRPC too: on a 2-core machine, loopback, 40 MB per message,
gRPC Python cost 64-130 ms per message (unary, or client streaming in 256 KiB to 4 MiB
chunks; the receiver copies every chunk) against ~10 ms for a raw socket and 12-16 ms
for this framing; with TLS ~100 ms against 41 ms for Python's ``ssl``. In the 4-process
chain of ``simulations/benchmark_transport.py`` this transport is 1.2-1.4x raw TCP and
1.0-1.3x raw TLS per step (the receiver reads into reused buffers: a fresh 40 MB tensor
costs ~45 ms of page faults).

Security: ``tls`` (a :class:`~relayfl.certs.TlsFiles`) turns on TLS on both channels;
peers are checked to present node ``j``'s certificate (``relayfl-node-j``) when we
connect to ``j``; with ``mutual_tls`` the listening side also requires a certificate
from the run's CA whose name matches the sender id. Without ``tls`` everything is
plaintext (``--insecure``).

``grpc`` is imported when this module is, never by ``import relayfl``.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent import futures
from typing import Any

import grpc
import torch

from relayfl.certs import TlsFiles
from relayfl.errors import ConfigError, TransportError
from relayfl.transport.base import (
    REJECT_KINDS,
    Handler,
    LinkSpec,
    Message,
    Rejected,
    check_control,
    node_name,
)
from relayfl.transport.buffers import BufferPool
from relayfl.transport.wire import (
    PREFIX,
    data_header,
    encode,
    parse_data_header,
    parse_header,
    parse_json,
    parse_prefix,
    payload_view,
)

__all__ = ["GrpcTransport", "split_address"]

_METHOD = "/relayfl.Node/Status"
#: Largest control message (bytes): a status call is under 300 bytes plus 8 per peer id
#: listed; gRPC refuses larger ones before any Python code runs.
CONTROL_LIMIT = 64 << 10
#: Status calls served at once; gRPC answers further ones RESOURCE_EXHAUSTED at once.
MAX_CONTROL_CALLS = 32
#: Data connections in their handshake (TLS and hello) at once; more are closed on accept.
MAX_HANDSHAKES = 32
#: gRPC metadata key of the run token, checked before the call's body is parsed.
TOKEN_METADATA = "x-relayfl-token"
_RECV_CHUNK = 4 << 20
#: Steps per tree a link queues for a slow neighbour before dropping the oldest.
QUEUE_STEPS = 2
#: A data connection must finish TLS and its hello within this many seconds.
HANDSHAKE_TIMEOUT = 10.0

_ABORT = {
    "malformed": grpc.StatusCode.INVALID_ARGUMENT,
    "wrong-token": grpc.StatusCode.UNAUTHENTICATED,
    "bad-certificate": grpc.StatusCode.UNAUTHENTICATED,
    "wrong-run": grpc.StatusCode.FAILED_PRECONDITION,
    "not-neighbour": grpc.StatusCode.PERMISSION_DENIED,
}
_REFUSAL_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
}


def split_address(address: str, option: str = "address") -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) as ``(host, port)``.

    Parameters
    ----------
    address : str
    option : str, default "address"
        How the message names the value (e.g. ``"--listen"``).

    Raises
    ------
    ConfigError
        The address has no host or port, or the port is outside 0..65535; the message
        shows the value and the expected form.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(
            f"{option} {address!r} is not host:port; write e.g. 192.168.1.20:7000 or "
            "127.0.0.1:0 (port 0 picks a free port)"
        )
    if int(port) > 65535:
        raise ConfigError(
            f"{option} {address!r}: port {port} is outside 0..65535; pick a port in range "
            "(0 picks a free port)"
        )
    return host.strip("[]"), int(port)


def _common_name(peercert: dict | None) -> str | None:
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


class _Link:
    """The outgoing data connection to one neighbour, with its own sender thread.

    Messages go out in order. At most :data:`QUEUE_STEPS` steps per tree wait in the
    queue: a step-synchronous neighbour needs step ``t`` before ``t + 1`` is of any use,
    so an older one is only dropped (and reported) when the link is that far behind.
    """

    def __init__(self, transport: GrpcTransport, peer: int) -> None:
        self.t = transport
        self.peer = peer
        self.queue: deque[Message] = deque()
        self.busy = False
        self.cv = threading.Condition()
        self.sock: socket.socket | None = None
        self.closing = False
        self.thread = threading.Thread(target=self._run, name=f"relayfl-send-{peer}", daemon=True)
        self.thread.start()

    def put(self, message: Message) -> None:
        dropped: list[Message] = []
        with self.cv:
            self.queue.append(message)
            same = [m for m in self.queue if m.tree == message.tree]
            for old in same[: max(0, len(same) - QUEUE_STEPS)]:
                self.queue.remove(old)
                dropped.append(old)
            self.cv.notify_all()
        for old in dropped:
            self.t.handler.on_send_failed(self.peer, old.step)

    def drain(self, deadline: float) -> None:
        with self.cv:
            while (self.queue or self.busy) and time.monotonic() < deadline:
                self.cv.wait(0.05)

    def close(self) -> None:
        with self.cv:
            self.closing = True
            self.cv.notify_all()
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _run(self) -> None:
        while True:
            with self.cv:
                while not self.queue and not self.closing:
                    self.cv.wait()
                if self.closing and not self.queue:
                    return
                message = self.queue.popleft()
                self.busy = True
            try:
                self._send(message)
            except (OSError, Rejected, TransportError) as err:
                self._disconnect()
                if not self.closing:
                    self.t._warn(
                        f"send to node {self.peer}",
                        f"could not send step {message.step} to node {self.peer} "
                        f"({err}); the message is dropped",
                    )
                self.t.handler.on_send_failed(self.peer, message.step)
            finally:
                with self.cv:
                    self.busy = False
                    self.cv.notify_all()

    def _disconnect(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None

    def _connect(self) -> socket.socket:
        address = self.t._data_address(self.peer, wait=5.0)
        if address is None:
            raise TransportError(f"the data address of node {self.peer} is not known yet")
        host, port = address
        sock = socket.create_connection((host, port), timeout=HANDSHAKE_TIMEOUT)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.t._client_ctx is not None:
                sock = self.t._client_ctx.wrap_socket(sock, server_hostname=node_name(self.peer))
            spec = self.t.spec
            sock.sendall(
                encode(
                    {"kind": "hello", "run": spec.run_id, "sender": spec.node, "token": spec.token}
                )
            )
            header_len, _ = parse_prefix(_recv_exact(sock, PREFIX.size), 0)
            reply = parse_header(_recv_exact(sock, header_len))
            if reply.get("kind") != "welcome":
                reason = str(reply.get("reason", "no reason given"))
                kind = reason.split(":", 1)[0]
                raise Rejected(kind if kind in REJECT_KINDS else "malformed", reason)
            sock.settimeout(self.t.send_timeout)
        except BaseException:
            sock.close()
            raise
        return sock

    def _stale(self) -> bool:
        """True when the peer closed our connection (it died or restarted): the data
        stream never carries anything back, so a readable socket means EOF or reset."""
        sock = self.sock
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        if not readable:
            return False
        try:
            sock.setblocking(False)
            return sock.recv(1) == b""
        except (ssl.SSLWantReadError, BlockingIOError):
            return False  # TLS housekeeping (session tickets), not data
        except OSError:
            return True
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(self.t.send_timeout)

    def _send(self, message: Message) -> None:
        if self.sock is not None and self._stale():
            self._disconnect()
        if self.sock is None:
            self.sock = self._connect()
        payload = payload_view(message.payload)
        head = encode(data_header(message), len(payload))
        self.sock.sendall(head)
        self.sock.sendall(payload)
        self.t._count_sent(len(head) + len(payload))


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise EOFError(f"connection closed after {got} of {size} bytes")
        got += n
    return bytes(buf)


class GrpcTransport:
    """gRPC control calls and framed TCP/TLS data streams (see the module docstring).

    Parameters
    ----------
    listen : str, default "127.0.0.1:0"
        ``host:port`` of the gRPC control server (port 0: any free port).
    data_listen : str, optional
        ``host:port`` of the data stream listener (default: the same host, port 0).
    tls : TlsFiles, optional
        This node's certificate, key and the run's CA; None means plaintext.
    mutual_tls : bool, default False
        Require and check the connecting peer's certificate too.
    send_timeout : float, default 300
        Seconds a blocked ``sendall`` may take before the link is dropped and rebuilt.
    logger : logging.Logger, optional

    Examples
    --------
    >>> transport = GrpcTransport("0.0.0.0:7000", tls=load_tls("certs", 3))  # doctest: +SKIP
    """

    def __init__(
        self,
        listen: str = "127.0.0.1:0",
        data_listen: str | None = None,
        *,
        tls: TlsFiles | None = None,
        mutual_tls: bool = False,
        send_timeout: float = 300.0,
        logger: logging.Logger | None = None,
    ) -> None:
        if mutual_tls and tls is None:
            raise ConfigError("mutual TLS needs certificates; pass --certificates DIR")
        self.listen = listen
        self.data_listen = data_listen
        self.tls = tls
        self.mutual_tls = mutual_tls
        self.send_timeout = send_timeout
        self.log = logger or logging.getLogger("relayfl.transport")
        self._lock = threading.Lock()
        self._sent = 0
        self._received = 0
        self._peers: dict[int, str] = {}
        self._channels: dict[int, grpc.Channel] = {}
        self._calls: dict[int, Any] = {}
        self._data: dict[int, tuple[str, int]] = {}
        self._data_known = threading.Condition(self._lock)
        self._links: dict[int, _Link] = {}
        self._conns: set[socket.socket] = set()
        #: data connections in their handshake: file descriptor -> deadline
        self._handshaking: dict[int, float] = {}
        self._timed_out: set[int] = set()
        self._closed = False
        self._warned: dict[str, float] = {}
        self._server: grpc.Server | None = None
        self._listener: socket.socket | None = None
        self._server_ctx: ssl.SSLContext | None = None
        self._client_ctx: ssl.SSLContext | None = None
        self.data_port = 0
        self._pool = BufferPool(max_keys=8)
        self.spec: LinkSpec
        self.handler: Handler

    # ---------------------------------------------------------------- start and stop
    def start(self, spec: LinkSpec, handler: Handler) -> dict[str, str]:
        self.spec, self.handler = spec, handler
        host, port = split_address(self.listen)
        dhost, dport = split_address(self.data_listen) if self.data_listen else (host, 0)
        if self.tls is not None:
            self._server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._server_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self._server_ctx.load_cert_chain(self.tls.cert_path, self.tls.key_path)
            if self.mutual_tls:
                self._server_ctx.verify_mode = ssl.CERT_REQUIRED
                self._server_ctx.load_verify_locations(cafile=str(self.tls.ca_path))
            self._client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            self._client_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self._client_ctx.load_verify_locations(cafile=str(self.tls.ca_path))
            self._client_ctx.load_cert_chain(self.tls.cert_path, self.tls.key_path)

        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="relayfl-control"),
            maximum_concurrent_rpcs=MAX_CONTROL_CALLS,
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", CONTROL_LIMIT),
                ("grpc.max_send_message_length", CONTROL_LIMIT),
                # bound what a flood of callers can make gRPC core buffer: no window
                # growth (BDP probing), one control-sized window per stream, few
                # streams per connection (a neighbour has one call in flight)
                ("grpc.http2.bdp_probe", 0),
                ("grpc.http2.lookahead_bytes", CONTROL_LIMIT),
                ("grpc.max_concurrent_streams", 4),
            ],
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "relayfl.Node",
                    {"Status": grpc.unary_unary_rpc_method_handler(self._on_status_call)},
                ),
            )
        )
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            if self.tls is not None:
                creds = grpc.ssl_server_credentials(
                    [(self.tls.key, self.tls.cert)],
                    root_certificates=self.tls.ca if self.mutual_tls else None,
                    require_client_auth=self.mutual_tls,
                )
                bound = server.add_secure_port(target, creds)
            else:
                bound = server.add_insecure_port(target)
        except RuntimeError:
            bound = 0
        if not bound:
            raise TransportError(
                f"cannot listen on {self.listen} (address in use or not on this machine); "
                "pick another --listen port, or 0 for any free port"
            )
        self._server = server
        server.start()

        family = socket.AF_INET6 if ":" in dhost else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((dhost, dport))
        except OSError as err:
            listener.close()
            server.stop(0)
            raise TransportError(
                f"cannot listen for data on {dhost}:{dport} ({err.strerror}); pick another "
                "--data-listen port, or 0 for any free port"
            ) from None
        listener.listen(64)
        self._listener = listener
        self.data_port = listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, name="relayfl-accept", daemon=True).start()
        return {"control": f"{host}:{bound}", "data": f"{dhost}:{self.data_port}"}

    def set_peers(self, addresses: Mapping[int, str]) -> None:
        for peer, address in addresses.items():
            split_address(address)  # fail early on a bad address
            with self._lock:
                self._peers[int(peer)] = address
        for peer in addresses:
            if int(peer) not in self._links:
                self._links[int(peer)] = _Link(self, int(peer))

    def close(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for link in list(self._links.values()):
            link.drain(deadline)
        with self._lock:
            self._closed = True
            conns = list(self._conns)
            channels = list(self._channels.values())
        for link in self._links.values():
            link.close()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for channel in channels:
            channel.close()
        if self._server is not None:
            self._server.stop(grace=0.5).wait(2.0)

    # ---------------------------------------------------------------- control channel
    def _channel_call(self, peer: int) -> Any:
        with self._lock:
            call = self._calls.get(peer)
            if call is not None:
                return call
            address = self._peers.get(peer)
        if address is None:
            raise TransportError(f"no address for node {peer}; list it in the topology")
        options = [
            ("grpc.enable_http_proxy", 0),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
            ("grpc.max_receive_message_length", CONTROL_LIMIT),
        ]
        if self.tls is not None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=self.tls.ca,
                private_key=self.tls.key,
                certificate_chain=self.tls.cert,
            )
            options.append(("grpc.ssl_target_name_override", node_name(peer)))
            channel = grpc.secure_channel(address, creds, options=options)
        else:
            channel = grpc.insecure_channel(address, options=options)
        call = channel.unary_unary(_METHOD)
        with self._lock:
            self._channels[peer] = channel
            self._calls[peer] = call
        return call

    def status(self, peer: int, status: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        body = {
            "run": self.spec.run_id,
            "sender": self.spec.node,
            "token": self.spec.token,
            "data_port": self.data_port,
            "status": status,
        }
        call = self._channel_call(peer)
        metadata = ((TOKEN_METADATA, self.spec.token),) if self.spec.token else None
        try:
            raw = call(json.dumps(body).encode(), timeout=timeout, metadata=metadata)
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            if code in _REFUSAL_CODES:
                detail = err.details() or str(code)
                kind, _, rest = detail.partition(":")
                if kind in REJECT_KINDS:  # the peer's "kind: detail", not kind twice
                    raise Rejected(kind, rest.strip()) from None
                raise Rejected("malformed", detail) from None
            return None
        try:
            reply = json.loads(raw)
            if reply.get("run") != self.spec.run_id:
                raise Rejected(
                    "wrong-run",
                    f"node {peer} answered for run {reply.get('run')!r}; start every node "
                    "with the same options, config, topology and initial model (--initial FILE)",
                )
            if reply.get("sender") != peer:
                raise Rejected(
                    "not-neighbour",
                    f"the address of node {peer} is served by node {reply.get('sender')!r}; "
                    "check the addresses in the topology",
                )
            data_port = int(reply["data_port"])
            state = reply["status"]
            if not isinstance(state, dict):
                raise TypeError("status is not an object")
        except (ValueError, KeyError, TypeError) as err:
            raise Rejected("malformed", f"node {peer} sent a malformed status ({err})") from None
        self._learn_data_port(peer, data_port)
        return state

    def _learn_data_port(self, peer: int, data_port: Any) -> None:
        """The peer's data stream is on its control host (from the topology), this port."""
        address = self._peers.get(peer)
        if address is None or not isinstance(data_port, int) or not 0 < data_port < 65536:
            return
        host, _ = split_address(address)
        with self._data_known:
            if self._data.get(peer) != (host, data_port):
                self._data[peer] = (host, data_port)
                self._data_known.notify_all()

    def _on_status_call(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        source = context.peer()
        try:
            token = self.spec.token
            if token is not None:  # checked before any parsing (a mismatch costs nothing)
                sent = dict(context.invocation_metadata()).get(TOKEN_METADATA)
                if sent is not None and not hmac.compare_digest(
                    str(sent).encode("utf-8", "replace"), token.encode()
                ):
                    raise Rejected(
                        "wrong-token",
                        "a status call presented a wrong run token; give every node the "
                        "same --token-file (or RELAYFL_TOKEN)",
                    )
            body = parse_json(request, "status call")  # at most CONTROL_LIMIT bytes
            if not isinstance(body, dict) or not isinstance(body.get("status"), dict):
                raise Rejected("malformed", "status call without a 'status' object")
            sender = check_control(body, self.spec)
            if self.mutual_tls:
                names = context.auth_context().get("x509_common_name") or [b""]
                name = names[0].decode(errors="replace")
                if name != node_name(sender):
                    raise Rejected(
                        "bad-certificate",
                        f"a peer with the certificate of {name!r} claims to be node {sender}",
                    )
        except Rejected as err:
            self.handler.on_reject(err.kind, source, err.detail)
            context.abort(_ABORT.get(err.kind, grpc.StatusCode.INVALID_ARGUMENT), str(err))
        self._learn_data_port(sender, body.get("data_port"))
        state = self.handler.on_status(sender, body["status"])
        reply = {
            "run": self.spec.run_id,
            "sender": self.spec.node,
            "data_port": self.data_port,
            "status": state,
        }
        return json.dumps(reply).encode()

    # ---------------------------------------------------------------- data channel
    def send(self, peer: int, message: Message) -> None:
        link = self._links.get(peer)
        if link is None:
            raise TransportError(f"node {peer} is not a peer of this node; call set_peers first")
        link.put(message)

    def _data_address(self, peer: int, wait: float) -> tuple[str, int] | None:
        with self._data_known:
            self._data_known.wait_for(lambda: peer in self._data or self._closed, wait)
            return self._data.get(peer)

    def _count_sent(self, n: int) -> None:
        with self._lock:
            self._sent += n

    def _count_received(self, n: int) -> None:
        with self._lock:
            self._received += n

    def bytes_sent(self) -> int:
        with self._lock:
            return self._sent

    def bytes_received(self) -> int:
        with self._lock:
            return self._received

    def _warn(self, key: str, text: str, every: float = 10.0) -> None:
        now = time.monotonic()
        if now - self._warned.get(key, -1e9) >= every:
            self._warned[key] = now
            self.log.warning(text)

    def _accept_loop(self) -> None:
        """Accept data connections until closed. No accept() error ends the loop: on
        EMFILE, ENFILE, ENOBUFS, ECONNABORTED... it logs one line (rate-limited), backs
        off (50 ms doubling to 1 s) and tries again. Connections past the caps
        (:data:`MAX_HANDSHAKES` in their handshake, a few per neighbour in all) are
        closed at once and reported as ``busy``."""
        if self._listener is None:
            return
        self._listener.settimeout(0.25)  # wake up to enforce the handshake deadlines
        backoff = 0.0
        while not self._closed:
            self._reap_handshakes()
            try:
                conn, addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as err:
                if self._closed:
                    return
                backoff = min(1.0, 2 * backoff or 0.05)
                self._warn(
                    "accept",
                    f"relayfl: the data listener on port {self.data_port} cannot accept "
                    f"({err.strerror or err}); retrying, backing off up to 1 s",
                )
                time.sleep(backoff)
                continue
            backoff = 0.0
            source = f"{addr[0]}:{addr[1]}"
            with self._lock:
                limit = MAX_HANDSHAKES + 4 * max(1, len(self.spec.peers))
                busy = len(self._handshaking) >= MAX_HANDSHAKES or len(self._conns) >= limit
                if not busy:
                    self._conns.add(conn)
                    self._handshaking[conn.fileno()] = time.monotonic() + HANDSHAKE_TIMEOUT
            if busy:
                with contextlib.suppress(OSError):
                    conn.close()
                self.handler.on_reject(
                    "busy",
                    source,
                    f"connection closed: {MAX_HANDSHAKES} handshakes in progress or "
                    f"{limit} data connections open",
                )
                continue
            try:
                threading.Thread(
                    target=self._serve, args=(conn, addr), name="relayfl-recv", daemon=True
                ).start()
            except RuntimeError:  # cannot start a thread: refuse, keep accepting
                self._end_handshake(conn.fileno())
                with self._lock:
                    self._conns.discard(conn)
                conn.close()

    def _reap_handshakes(self) -> None:
        """Shut down data connections whose handshake (TLS and hello in all, not per
        ``recv``) outlived :data:`HANDSHAKE_TIMEOUT`; their reader then ends."""
        now = time.monotonic()
        with self._lock:
            if self._closed:  # close() closes the sockets after setting this (under the lock)
                return
            for fd, deadline in list(self._handshaking.items()):
                if now > deadline:
                    del self._handshaking[fd]
                    self._timed_out.add(fd)
                    # by fd: TLS wrapping detaches the accepted socket object. Safe under
                    # the lock: _serve ends the entry (under it) before closing the fd.
                    with contextlib.suppress(OSError):
                        sock = socket.socket(fileno=fd)
                        try:
                            sock.shutdown(socket.SHUT_RDWR)
                        finally:
                            sock.detach()

    def _end_handshake(self, fd: int) -> bool:
        """End ``fd``'s handshake deadline; False when it had already expired."""
        with self._lock:
            self._handshaking.pop(fd, None)
            if fd in self._timed_out:
                self._timed_out.discard(fd)
                return False
            return True

    def _serve(self, conn: socket.socket, addr: tuple) -> None:
        source = f"{addr[0]}:{addr[1]}"
        fd = conn.fileno()
        with self._lock:
            if self._closed:
                self._handshaking.pop(fd, None)
                self._conns.discard(conn)
                conn.close()
                return
        try:
            conn.settimeout(HANDSHAKE_TIMEOUT)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._server_ctx is not None:
                try:
                    tls_conn = self._server_ctx.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError) as err:
                    reason = getattr(err, "reason", None) or str(err)
                    kind = "handshake-timeout" if isinstance(err, TimeoutError) else None
                    self._refuse_handshake(
                        fd, source, kind or "bad-certificate", f"TLS handshake failed ({reason})"
                    )
                    return
                with self._lock:
                    self._conns.discard(conn)
                    self._conns.add(tls_conn)
                conn = tls_conn
            sender = self._handshake(conn, source, fd)
            if sender is None or not self._end_handshake(fd):
                return
            conn.settimeout(None)
            self._read_frames(conn, source, sender)
        except (OSError, EOFError):
            pass
        finally:
            with self._lock:
                self._handshaking.pop(fd, None)
                self._timed_out.discard(fd)
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _refuse_handshake(self, fd: int, source: str, kind: str, detail: str) -> None:
        """Report a failed handshake once: as ``handshake-timeout`` when its deadline
        shut it down, else as ``kind``."""
        if not self._end_handshake(fd):
            kind = "handshake-timeout"
            detail = f"TLS and hello took over {HANDSHAKE_TIMEOUT:g} s in all; connection closed"
        self.handler.on_reject(kind, source, detail)

    def _handshake(self, conn: socket.socket, source: str, fd: int) -> int | None:
        try:
            try:
                prefix = _recv_exact(conn, PREFIX.size)
            except EOFError:
                raise Rejected("truncated", "connection closed before its hello") from None
            header_len, _payload_len = parse_prefix(prefix, 0)
            hello = parse_header(_recv_exact(conn, header_len))
            if hello.get("kind") != "hello":
                raise Rejected("malformed", f"first frame is {hello.get('kind')!r}, not 'hello'")
            sender = check_control(hello, self.spec)
            if self.mutual_tls:
                name = _common_name(conn.getpeercert())  # type: ignore[attr-defined]
                if name != node_name(sender):
                    raise Rejected(
                        "bad-certificate",
                        f"a peer with the certificate of {name!r} claims to be node {sender}",
                    )
        except Rejected as err:
            self._refuse_handshake(fd, source, err.kind, err.detail)
            with contextlib.suppress(OSError):
                conn.sendall(encode({"kind": "refused", "reason": str(err)}))
            return None
        except TimeoutError:
            self._refuse_handshake(
                fd, source, "handshake-timeout", f"no hello within {HANDSHAKE_TIMEOUT:g} s"
            )
            return None
        except (OSError, EOFError):
            self._refuse_handshake(fd, source, "truncated", "connection closed during its hello")
            return None
        conn.sendall(encode({"kind": "welcome"}))
        return sender

    def _read_frames(self, conn: socket.socket, source: str, sender: int) -> None:
        spec = self.spec
        while not self._closed:
            prefix = bytearray(PREFIX.size)
            view = memoryview(prefix)
            got = 0
            while got < PREFIX.size:
                n = conn.recv_into(view[got:], PREFIX.size - got)
                if n == 0:
                    if got:
                        self.handler.on_reject(
                            "truncated", source, f"node {sender}'s connection ended mid-frame"
                        )
                    return
                got += n
            try:
                header_len, payload_len = parse_prefix(bytes(prefix), spec.max_payload_bytes)
            except Rejected as err:  # cannot find the next frame: drop the connection
                self.handler.on_reject(err.kind, f"node {sender} ({source})", err.detail)
                return
            try:
                raw = _recv_exact(conn, header_len)
            except EOFError:
                self.handler.on_reject("truncated", source, f"node {sender}'s header was cut")
                return
            try:
                header = parse_header(raw)
                if header["kind"] != "data":
                    raise Rejected("malformed", f"frame kind {header['kind']!r} is not 'data'")
                header, dtype = parse_data_header(header, payload_len)
                if header["sender"] != sender:
                    raise Rejected(
                        "spoofed-sender",
                        f"node {sender}'s connection carries a frame from node {header['sender']}",
                    )
            except Rejected as err:
                self.handler.on_reject(err.kind, f"node {sender} ({source})", err.detail)
                if not self._skip(conn, payload_len):
                    return
                continue
            shape = header["shape"]
            sizes = spec.frame_sizes
            if sizes is None or payload_len in sizes:
                tensor = self._pool.get(math.prod(shape), dtype)  # no page faults per message
            else:  # a size this run never sends (the node refuses it): not kept
                tensor = torch.empty(math.prod(shape), dtype=dtype)
            if tuple(tensor.shape) != shape:
                tensor = tensor.view(shape)
            if not self._recv_payload(conn, tensor, payload_len, sender, source):
                return
            self._count_received(PREFIX.size + header_len + payload_len)
            message = Message(
                header["run"],
                header["step"],
                sender,
                header["tree"],
                float(header["count"]),
                tensor,
            )
            try:
                self.handler.on_message(message)
            except Exception as err:  # the node's checks must never kill the reader
                self.log.exception(
                    "relayfl: handling a message from node %s failed: %s", sender, err
                )

    def _recv_payload(
        self, conn: socket.socket, tensor: torch.Tensor, size: int, sender: int, source: str
    ) -> bool:
        view = payload_view(tensor) if size else memoryview(b"")
        got = 0
        last = time.monotonic()
        while got < size:
            n = conn.recv_into(view[got:], min(size - got, _RECV_CHUNK))
            if n == 0:
                self.handler.on_reject(
                    "truncated",
                    f"node {sender} ({source})",
                    f"payload ended after {got} of {size} bytes",
                )
                return False
            got += n
            now = time.monotonic()
            if now - last > 0.5:
                last = now
                self.handler.on_progress(sender)
        return True

    def _skip(self, conn: socket.socket, size: int) -> bool:
        left = size
        buf = bytearray(min(size, _RECV_CHUNK) or 1)
        while left:
            n = conn.recv_into(buf, min(left, len(buf)))
            if n == 0:
                return False
            left -= n
        return True
