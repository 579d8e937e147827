"""One node's transport under attack on 127.0.0.1: exhausted descriptors, dripping
handshakes, junk frame sizes, control-port floods and hostile JSON.

Each test starts one :class:`GrpcTransport` in this process, attacks it with raw sockets
or gRPC calls, and asserts the refusal and that the node still serves a neighbour.
Every wait is bounded; every socket is closed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time

import grpc
import pytest
import torch

from relayfl.transport import grpc as transport_grpc
from relayfl.transport.base import DTYPES, LinkSpec
from relayfl.transport.grpc import CONTROL_LIMIT, MAX_HANDSHAKES, TOKEN_METADATA, GrpcTransport
from relayfl.transport.probe import DataProbe
from relayfl.transport.wire import PREFIX, encode

RUN = "run-under-attack"
TOKEN = "s3cret"
D = 64  # the run's model: one tree of 64 float32 (a 256-byte frame)


class Recorder:
    """A transport handler that records refusals and messages (thread-safe enough for
    appends from the transport's threads)."""

    def __init__(self) -> None:
        self.rejects: list[tuple[str, str, str]] = []
        self.messages: list = []

    def on_message(self, message) -> None:
        self.messages.append(message)

    def on_status(self, sender: int, status: dict) -> dict:
        return {"step": 3, "phase": "train", "waiting_on": []}

    def on_reject(self, kind: str, source: str, detail: str) -> None:
        self.rejects.append((kind, source, detail))

    def on_progress(self, sender: int) -> None:
        pass

    def on_send_failed(self, peer: int, step: int) -> None:
        pass

    def kinds(self) -> list[str]:
        return [k for k, _, _ in self.rejects]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while self.kinds().count(kind) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.kinds().count(kind)


@pytest.fixture
def node():
    """Node 0 of a run whose only neighbour is node 1, listening on 127.0.0.1."""
    transport = GrpcTransport()
    recorder = Recorder()
    own = transport.start(
        LinkSpec(0, RUN, frozenset({1}), TOKEN, 4 * D, frame_sizes=frozenset({4 * D})), recorder
    )
    try:
        yield transport, recorder, own
    finally:
        transport.close(timeout=2)


def _hello_ok(transport: GrpcTransport) -> str:
    with DataProbe(
        "127.0.0.1", transport.data_port, sender=1, run_id=RUN, token=TOKEN, timeout=5
    ) as probe:
        return probe.hello()


def _status_call(own: dict, body: bytes, metadata=None, timeout: float = 5.0) -> bytes:
    with grpc.insecure_channel(
        own["control"], options=[("grpc.max_send_message_length", 1 << 22)]
    ) as channel:
        return channel.unary_unary("/relayfl.Node/Status")(body, timeout=timeout, metadata=metadata)


def _good_status() -> bytes:
    return json.dumps(
        {
            "run": RUN,
            "sender": 1,
            "token": TOKEN,
            "data_port": 1,
            "status": {"step": 0, "phase": "train", "waiting_on": []},
        }
    ).encode()


def test_accept_errors_never_stop_the_data_listener(node, caplog) -> None:
    """EMFILE, ENFILE and ECONNABORTED from accept() cost a back-off and one log line; a
    neighbour connecting afterwards is welcomed."""
    transport, _, _ = node
    real = transport._listener
    errors = [errno.EMFILE, errno.ENFILE, errno.ECONNABORTED, errno.EMFILE]

    class Failing:  # the real listener, whose next accept() calls fail first
        def accept(self):
            if errors:
                code = errors.pop(0)
                raise OSError(code, os.strerror(code))
            return real.accept()

        def __getattr__(self, name):
            return getattr(real, name)

    transport._listener = Failing()
    try:
        deadline = time.monotonic() + 10
        while errors and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not errors
        assert _hello_ok(transport) == "welcome"
    finally:
        transport._listener = real
    lines = [r.getMessage() for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(lines) == 1  # rate-limited: one line for the burst of errors
    assert "Too many open files" in lines[0]


def test_a_burst_of_idle_connections_is_capped_and_the_port_keeps_accepting(node) -> None:
    """More idle connections than MAX_HANDSHAKES: the excess is closed at accept
    (``busy``, logged with the address), and once the burst ends a neighbour gets in."""
    transport, recorder, _ = node
    burst = []
    try:
        for _ in range(MAX_HANDSHAKES + 24):
            with contextlib.suppress(OSError):
                burst.append(socket.create_connection(("127.0.0.1", transport.data_port), 2))
        assert recorder.wait_for("busy", 20) >= 20
        with transport._lock:
            assert len(transport._handshaking) <= MAX_HANDSHAKES
    finally:
        for s in burst:
            s.close()
    busy = [r for r in recorder.rejects if r[0] == "busy"]
    assert all(source.startswith("127.0.0.1:") for _, source, _ in busy)
    deadline = time.monotonic() + 10
    while transport._handshaking and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _hello_ok(transport) == "welcome"


def test_a_dripping_hello_is_cut_at_one_deadline_for_the_whole_handshake(node, monkeypatch) -> None:
    """One byte every 0.3 s keeps each recv under its timeout, but the handshake as a
    whole has one deadline: the node closes the connection and reports it once."""
    transport, recorder, _ = node
    monkeypatch.setattr(transport_grpc, "HANDSHAKE_TIMEOUT", 1.0)
    hello = encode({"kind": "hello", "run": RUN, "sender": 1, "token": "x" * 64})
    sock = socket.create_connection(("127.0.0.1", transport.data_port), timeout=5)
    start, closed_after = time.monotonic(), None
    try:
        sock.settimeout(0.3)
        for i in range(20):  # at most 6 s
            try:
                sock.sendall(hello[i : i + 1])
                if sock.recv(1) == b"":
                    closed_after = time.monotonic() - start
                    break
            except TimeoutError:
                continue
            except OSError:
                closed_after = time.monotonic() - start
                break
    finally:
        sock.close()
    assert closed_after is not None and closed_after < 3.0
    assert recorder.wait_for("handshake-timeout") == 1
    assert "truncated" not in recorder.kinds()


def test_frames_of_many_wrong_sizes_do_not_grow_the_receive_pool(node) -> None:
    """A peer past the hello sends 60 frames of distinct sizes and dtypes: every one
    arrives for the node to refuse, and the pool keeps buffers only of the run's size."""
    transport, recorder, _ = node
    with DataProbe(
        "127.0.0.1", transport.data_port, sender=1, run_id=RUN, token=TOKEN, timeout=5
    ) as probe:
        assert probe.hello() == "welcome"
        for k in range(1, 61):
            dtype, size = ("float16", 2) if k % 2 else ("float64", 8)
            n = min(k, (4 * D) // size)
            header = {
                "kind": "data",
                "run": RUN,
                "step": 0,
                "sender": 1,
                "tree": 0,
                "count": 1.0,
                "dtype": dtype,
                "shape": [n],
            }
            probe.send_frame(header, bytes(n * size))
        good = torch.arange(D, dtype=torch.float32)
        probe.send_frame({**header, "dtype": "float32", "shape": [D]}, good.numpy().tobytes())
        deadline = time.monotonic() + 10
        while len(recorder.messages) < 61 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert len(recorder.messages) == 61
    assert torch.equal(recorder.messages[-1].payload, good)
    # only frames of the run's byte size are pooled: at most one key per wire dtype
    kept = set(transport._pool._free)
    assert (D, torch.float32) in kept and len(kept) <= len(DTYPES)
    assert all(n * torch.empty((), dtype=dt).element_size() == 4 * D for n, dt in kept)


def test_control_port_refuses_oversized_calls_in_grpc_and_wrong_tokens_before_parsing(
    node,
) -> None:
    """A call over CONTROL_LIMIT never reaches Python; a wrong token in the metadata is
    refused as ``wrong-token`` even when the body is garbage (it is never parsed)."""
    _, recorder, own = node
    with pytest.raises(grpc.RpcError) as err:
        _status_call(own, b"x" * (CONTROL_LIMIT + 1024))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert recorder.rejects == []
    with pytest.raises(grpc.RpcError) as err:
        _status_call(own, b"{" * 1000, metadata=((TOKEN_METADATA, "wrong"),))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert recorder.kinds() == ["wrong-token"]
    assert recorder.rejects[0][1].startswith("ipv4:127.0.0.1:")
    reply = json.loads(_status_call(own, _good_status(), metadata=((TOKEN_METADATA, TOKEN),)))
    assert reply["status"]["step"] == 3


@pytest.mark.parametrize(
    "junk",
    [b"[" * 50_000, b'{"a": ' + b"9" * 20_000 + b"}"],
    ids=["nesting-50000-deep", "number-of-20000-digits"],
)
def test_hostile_json_is_malformed_on_both_ports(node, junk: bytes, caplog) -> None:
    """Deep nesting and huge numbers are refused as ``malformed`` with one line on the
    control and the data port, never an internal error with a traceback."""
    transport, recorder, own = node
    with pytest.raises(grpc.RpcError) as err:
        _status_call(own, junk)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hostile JSON" in recorder.rejects[-1][2]
    with socket.create_connection(("127.0.0.1", transport.data_port), timeout=5) as sock:
        sock.sendall(PREFIX.pack(b"RLF1", len(junk), 0) + junk)
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            while sock.recv(4096):
                pass
    assert recorder.wait_for("malformed", 2) == 2
    assert not [r for r in caplog.records if r.exc_info]
    assert _status_call(own, _good_status())  # still serving


def test_a_dripping_tls_handshake_is_cut_and_reported_as_a_timeout(tmp_path, monkeypatch) -> None:
    """Under mutual TLS, a client dripping its ClientHello is cut at the deadline and
    logged as ``handshake-timeout`` (not as a certificate problem)."""
    from relayfl.certs import load_tls, make_certificates

    monkeypatch.setattr(transport_grpc, "HANDSHAKE_TIMEOUT", 1.0)
    certs = make_certificates(tmp_path, {0: "127.0.0.1", 1: "127.0.0.1"})
    transport = GrpcTransport(tls=load_tls(certs, 0), mutual_tls=True)
    recorder = Recorder()
    transport.start(LinkSpec(0, RUN, frozenset({1}), TOKEN, 4 * D), recorder)
    try:
        with socket.create_connection(("127.0.0.1", transport.data_port), timeout=5) as sock:
            for i in range(8):  # a TLS record header, one byte each 0.4 s (3.2 s at most)
                with contextlib.suppress(OSError):
                    sock.send(b"\x16\x03\x01"[i % 3 : i % 3 + 1])
                if recorder.kinds():
                    break
                time.sleep(0.4)
        assert recorder.wait_for("handshake-timeout") == 1
        assert recorder.kinds() == ["handshake-timeout"]
    finally:
        transport.close(timeout=2)
