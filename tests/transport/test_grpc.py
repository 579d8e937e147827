"""The network transport in one process: gRPC control calls and framed TCP/TLS data.

Every test talks to 127.0.0.1 only, binds port 0, and bounds every wait.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from relayfl.certs import TlsFiles, load_tls, make_certificates
from relayfl.cli import main
from relayfl.transport.base import LinkSpec, Message, Rejected
from relayfl.transport.grpc import GrpcTransport
from relayfl.transport.probe import DataProbe
from relayfl.transport.wire import PREFIX, encode

RUN = "run-under-test"
TOKEN = "s3cret"
STATUS = {"step": 0, "phase": "start", "waiting_on": []}


class Recorder:
    """A transport handler that records what arrives."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.rejects: list[tuple[str, str]] = []
        self.failed: list[tuple[int, int]] = []
        self.event = threading.Event()

    def on_message(self, message: Message) -> None:
        self.messages.append(message)
        self.event.set()

    def on_status(self, sender: int, status: dict) -> dict:
        return {"step": 5, "phase": "train", "waiting_on": []}

    def on_reject(self, kind: str, source: str, detail: str) -> None:
        self.rejects.append((kind, detail))
        self.event.set()

    def on_progress(self, sender: int) -> None:
        pass

    def on_send_failed(self, peer: int, step: int) -> None:
        self.failed.append((peer, step))

    def wait(self, count: int, what: str = "rejects", timeout: float = 10) -> list:
        deadline = time.monotonic() + timeout
        while len(getattr(self, what)) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return getattr(self, what)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The run's certificates, and an intruder's from another CA."""
    run = make_certificates(tmp_path_factory.mktemp("run-ca"), {k: "127.0.0.1" for k in range(3)})
    other = make_certificates(tmp_path_factory.mktemp("other-ca"), {1: "127.0.0.1"})
    return run, other


def _pair(
    tls_dirs: tuple[Path, Path] | None = None,
    *,
    mutual: bool = False,
    max_payload: int = 1 << 26,
    client_token: str = TOKEN,
    client_run: str = RUN,
    client_id: int = 1,
    client_tls: TlsFiles | None = None,
):
    """Node 0 (server side) and a client claiming ``client_id``; both started."""
    server_tls = load_tls(tls_dirs[0], 0) if tls_dirs else None
    if client_tls is None and tls_dirs:
        client_tls = load_tls(tls_dirs[0], client_id)
    server = GrpcTransport(tls=server_tls, mutual_tls=mutual)
    client = GrpcTransport(tls=client_tls, mutual_tls=mutual)
    rs, rc = Recorder(), Recorder()
    a = server.start(LinkSpec(0, RUN, frozenset({1}), TOKEN, max_payload), rs)
    b = client.start(LinkSpec(client_id, client_run, frozenset({0}), client_token, max_payload), rc)
    server.set_peers({client_id: b["control"]})
    client.set_peers({0: a["control"]})
    return server, client, rs, rc, a


def _intruder(certs: tuple[Path, Path]) -> TlsFiles:
    """Trusts the run's CA (so it accepts the node) but shows another CA's certificate."""
    run, other = certs
    return TlsFiles(run / "ca.pem", other / "node-1.pem", other / "node-1.key")


@pytest.mark.parametrize("secure", [False, True], ids=["tcp", "mutual-tls"])
def test_large_message_arrives_intact(secure: bool, certs) -> None:
    """A 12 MB tensor crosses the data stream bit for bit (no 4 MB gRPC limit)."""
    server, client, rs, rc, _ = _pair(certs if secure else None, mutual=secure)
    try:
        assert client.status(0, STATUS, timeout=5)["step"] == 5  # learns the data port
        payload = torch.randn(3_000_000)
        client.send(0, Message(RUN, 3, 1, 0, 4.0, payload))
        got = rs.wait(1, "messages")
        assert len(got) == 1 and got[0].step == 3 and got[0].count == 4.0
        assert torch.equal(got[0].payload, payload)
        assert server.bytes_received() >= payload.numel() * 4
        assert not rs.rejects and not rc.failed
    finally:
        client.close()
        server.close()


@pytest.mark.parametrize(
    "kwargs,kind",
    [
        ({"client_token": "wrong"}, "wrong-token"),
        ({"client_run": "another-run"}, "wrong-run"),
        ({"client_id": 2}, "not-neighbour"),
    ],
    ids=["wrong-token", "wrong-run", "not-in-topology"],
)
def test_status_call_from_a_stranger_is_refused(kwargs: dict, kind: str) -> None:
    """Wrong token, other run, or a node that is not a neighbour: refused, logged once."""
    server, client, rs, _, _ = _pair(**kwargs)
    try:
        with pytest.raises(Rejected, match=kind) as err:
            client.status(0, STATUS, timeout=5)
        assert err.value.kind == kind
        assert [k for k, _ in rs.wait(1)] == [kind]
    finally:
        client.close()
        server.close()


def test_mutual_tls_refuses_a_certificate_from_another_ca(certs) -> None:
    """A peer whose certificate is not from the run's CA gets no answer on either channel."""
    server, client, rs, _, _ = _pair(certs, mutual=True, client_tls=_intruder(certs))
    try:
        assert client.status(0, STATUS, timeout=3) is None  # TLS handshake fails
        with pytest.raises(OSError):
            probe = DataProbe(
                "127.0.0.1",
                server.data_port,
                sender=1,
                run_id=RUN,
                token=TOKEN,
                tls=_intruder(certs),
                server=0,
            )
            probe.hello()
        kinds = [k for k, _ in rs.wait(1)]
        assert kinds == ["bad-certificate"]
        assert "certificate" in rs.rejects[0][1].lower()
    finally:
        client.close()
        server.close()


def test_mutual_tls_refuses_a_node_that_claims_another_id(certs) -> None:
    """Node 2's valid certificate cannot speak as node 1 (the name is checked)."""
    run, _ = certs
    server = GrpcTransport(tls=load_tls(run, 0), mutual_tls=True)
    rs = Recorder()
    server.start(LinkSpec(0, RUN, frozenset({1}), TOKEN, 1 << 20), rs)
    try:
        with DataProbe(
            "127.0.0.1",
            server.data_port,
            sender=1,
            run_id=RUN,
            token=TOKEN,
            tls=load_tls(run, 2),
            server=0,
        ) as probe:
            assert probe.hello().startswith("bad-certificate")
        assert [k for k, _ in rs.wait(1)] == ["bad-certificate"]
    finally:
        server.close()


def test_plaintext_peer_cannot_reach_a_tls_node(certs) -> None:
    """A client without TLS fails the handshake; the node logs one line."""
    server = GrpcTransport(tls=load_tls(certs[0], 0), mutual_tls=True)
    rs = Recorder()
    server.start(LinkSpec(0, RUN, frozenset({1}), TOKEN, 1 << 20), rs)
    try:
        with (
            DataProbe("127.0.0.1", server.data_port, sender=1, run_id=RUN, token=TOKEN) as probe,
            pytest.raises(ConnectionError),
        ):
            probe.hello()
        assert [k for k, _ in rs.wait(1)] == ["bad-certificate"]
    finally:
        server.close()


def _good(step: int = 0, n: int = 4, sender: int = 1) -> tuple[dict, bytes]:
    payload = torch.arange(n, dtype=torch.float32)
    header = {
        "kind": "data",
        "run": RUN,
        "step": step,
        "sender": sender,
        "tree": 0,
        "count": 1.0,
        "dtype": "float32",
        "shape": [n],
    }
    return header, payload.numpy().tobytes()


@pytest.mark.parametrize(
    "frame,kind,survives",
    [
        (lambda: encode({"kind": "data"}, 0)[:-2] + b"}x", "malformed", True),
        (lambda: encode({**_good()[0], "shape": [5]}, 16) + _good()[1], "malformed", True),
        (lambda: encode({**_good()[0], "dtype": "int8"}, 16) + _good()[1], "wrong-dtype", True),
        (lambda: encode({**_good()[0], "count": None}, 16) + _good()[1], "bad-count", True),
        (lambda: encode({**_good()[0], "sender": 0}, 16) + _good()[1], "spoofed-sender", True),
        (lambda: encode(_good()[0], 1 << 30), "oversized", False),
        (lambda: b"XXXX" + PREFIX.pack(b"RLF1", 2, 0)[4:] + b"{}", "malformed", False),
        (lambda: encode(_good()[0], 16) + _good()[1][:7], "truncated", False),
    ],
    ids=[
        "bad-json",
        "size-mismatch",
        "bad-dtype",
        "bad-count",
        "spoofed",
        "oversized",
        "bad-magic",
        "truncated",
    ],
)
def test_malformed_frame_is_rejected_in_one_line(frame, kind: str, survives: bool) -> None:
    """Each bad frame is refused with its kind; when the stream can be resynchronised
    the connection keeps working, else the node closes it."""
    server = GrpcTransport()
    rs = Recorder()
    server.start(LinkSpec(0, RUN, frozenset({1}), TOKEN, 1 << 20), rs)
    try:
        with DataProbe("127.0.0.1", server.data_port, sender=1, run_id=RUN, token=TOKEN) as probe:
            assert probe.hello() == "welcome"
            probe.send_raw(frame())
            if kind == "truncated":
                probe.sock.shutdown(1)  # the sender goes away mid-frame
            assert [k for k, _ in rs.wait(1)] == [kind]
            if survives:
                probe.send_frame(*_good(step=7))
                assert [m.step for m in rs.wait(1, "messages")] == [7]
            elif kind != "truncated":
                assert probe.closed_by_peer()
        assert not rs.messages or survives
    finally:
        server.close()


def test_hello_with_a_wrong_token_is_refused_on_the_data_stream() -> None:
    """The data stream checks the token too, and tells the peer why."""
    server = GrpcTransport()
    rs = Recorder()
    server.start(LinkSpec(0, RUN, frozenset({1}), TOKEN, 1 << 20), rs)
    try:
        with DataProbe("127.0.0.1", server.data_port, sender=1, run_id=RUN, token="nope") as probe:
            assert probe.hello().startswith("wrong-token")
            assert probe.closed_by_peer()
    finally:
        server.close()


def test_send_to_a_dead_peer_is_dropped_and_reported() -> None:
    """A message for a peer that is gone is dropped (reported), never retried forever."""
    server, client, _, rc, _ = _pair()
    client.status(0, STATUS, timeout=5)
    server.close()
    try:
        client.send(0, Message(RUN, 0, 1, 0, 1.0, torch.ones(8)))
        client.send(0, Message(RUN, 1, 1, 0, 1.0, torch.ones(8)))
        assert rc.wait(1, "failed", timeout=15)
    finally:
        client.close(timeout=2)


def test_certs_command_makes_a_ca_and_node_certificates(tmp_path: Path, capsys) -> None:
    """`relayfl certs --nodes 3` writes a CA and three certificates the CA signed."""
    import ssl

    assert main(["certs", "--nodes", "3", "--out", str(tmp_path)]) == 0
    for k in range(3):
        files = load_tls(tmp_path, k)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(files.cert_path, files.key_path)
        assert (files.key_path.stat().st_mode & 0o077) == 0  # private keys are 0600
    assert "node-K.pem" in capsys.readouterr().out
    with pytest.raises(ValueError, match="relayfl certs"):
        load_tls(tmp_path, 7)


def test_import_relayfl_never_imports_grpc_flwr_or_ray() -> None:
    """The package, its CLI and the node load without grpc, flwr or Ray."""
    code = (
        "import sys, relayfl, relayfl.cli, relayfl.node, relayfl.transport, relayfl.launch;"
        "relayfl.cli.build_parser();"
        "bad = [m for m in ('grpc', 'flwr', 'ray') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"
