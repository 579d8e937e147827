"""Soak: 8 nodes over mutual TLS keep training, unharmed, through a scripted storm.

The same run twice on 127.0.0.1, once quiet and once while a storm hits four nodes:
bursts of idle connections past the handshake cap, dripping hellos, junk bytes and
frames of many wrong sizes, and a control-port flood with a wrong token. Every node
finishes with no drop and no death, its model bit-identical to the quiet run's; each
attack is in its victim's ``log.jsonl``; the nodes' memory stays within
:data:`MEMORY_MULTIPLE` of the quiet run's. Kill-and-resume has its own test
(``tests/test_node.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path

import grpc
import pytest
import torch

from relayfl import RunConfig
from relayfl.certs import load_tls
from relayfl.launch import Launcher, LaunchOptions
from relayfl.transport.base import node_name
from relayfl.transport.grpc import MAX_HANDSHAKES, TOKEN_METADATA
from relayfl.transport.probe import DataProbe

#: The storm run's peak node memory (sum of RSS over the 8 processes) may be at most
#: this multiple of the quiet run's.
MEMORY_MULTIPLE = 1.5
N = 8


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rss_mb(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
    return total


def _events(out: Path, node: int) -> list[dict]:
    path = out / "nodes" / f"node-{node}" / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


class Storm:
    """The attacks, each in its own thread, bounded in count and time."""

    def __init__(self, run: Launcher, certs: Path, run_id: str) -> None:
        self.run, self.certs, self.run_id = run, certs, run_id
        self.stop = threading.Event()
        self.errors: list[BaseException] = []

    def data_port(self, k: int) -> int:
        return int(self.run.procs[k].data.rsplit(":", 1)[1])

    def start(self, attacks: list) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._guard, args=(a,), daemon=True) for a in attacks]
        for t in threads:
            t.start()
        return threads

    def _guard(self, attack) -> None:
        try:
            attack()
        except BaseException as err:  # reported by the test, never lost
            self.errors.append(err)

    def idle_bursts(self) -> None:
        """Node 0: three bursts of idle connections, past the handshake cap."""
        for _ in range(3):
            held = []
            for _ in range(MAX_HANDSHAKES + 40):
                with contextlib.suppress(OSError):
                    held.append(socket.create_connection(("127.0.0.1", self.data_port(0)), 2))
            self.stop.wait(1.5)
            for s in held:
                s.close()

    def drips(self) -> None:
        """Node 2: four connections drip one byte a second (bounded at 14 s)."""
        socks = [socket.create_connection(("127.0.0.1", self.data_port(2)), 2) for _ in range(4)]
        try:
            for i in range(14):
                for s in socks:
                    with contextlib.suppress(OSError):
                        s.send(b"\x16\x03\x01"[i % 3 : i % 3 + 1])
                if self.stop.wait(1.0):
                    break
        finally:
            for s in socks:
                s.close()

    def junk(self) -> None:
        """Node 5: raw junk of many sizes (no TLS), then, from neighbour 2's identity,
        frames of 200 wrong sizes and dtypes."""
        port = self.data_port(5)
        for size in (1, 17, 300, 5000, 70000):
            with (
                socket.create_connection(("127.0.0.1", port), 2) as s,
                contextlib.suppress(OSError),
            ):
                s.sendall(os.urandom(size))
                s.settimeout(3)
                s.recv(1)
        tls = load_tls(self.certs, 2)
        with DataProbe(
            "127.0.0.1", port, sender=2, run_id=self.run_id, token=self.run.token, tls=tls, server=5
        ) as probe:
            assert probe.hello() == "welcome"
            for k in range(1, 201):
                dtype, size = (("float32", 4), ("float16", 2), ("float64", 8))[k % 3]
                header = {
                    "kind": "data",
                    "run": self.run_id,
                    "step": 0,
                    "sender": 2,
                    "tree": 0,
                    "count": 1.0,
                    "dtype": dtype,
                    "shape": [k],
                }
                probe.send_frame(header, bytes(k * size))

    def control_flood(self) -> None:
        """Node 4: 16 callers with neighbour 2's certificate and a wrong token, 30 KB
        bodies, for 4 s; plus oversized calls that gRPC refuses unread."""
        tls = load_tls(self.certs, 2)
        creds = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)
        target = self.run.procs[4].control
        body = json.dumps({"run": self.run_id, "sender": 2, "pad": "x" * 30000}).encode()
        end = time.monotonic() + 4.0

        def caller(big: bool) -> None:
            options = [
                ("grpc.ssl_target_name_override", node_name(4)),
                ("grpc.max_send_message_length", 1 << 22),
            ]
            with grpc.secure_channel(target, creds, options=options) as channel:
                call = channel.unary_unary("/relayfl.Node/Status")
                while time.monotonic() < end and not self.stop.is_set():
                    with contextlib.suppress(grpc.RpcError):
                        call(
                            body * (40 if big else 1),
                            timeout=3,
                            metadata=((TOKEN_METADATA, "not-the-token"),),
                        )

        callers = [threading.Thread(target=caller, args=(k < 2,)) for k in range(16)]
        for t in callers:
            t.start()
        for t in callers:
            t.join(15)


def _run(out: Path, storm: bool) -> tuple[float, float, Storm | None]:
    config = RunConfig(
        num_clients=N,
        topology="binary-tree",
        steps=150,
        batch_size=16,
        eval_every=150,
        eval_limit=60,
        seed=9,
        engine="loop",
    )
    options = LaunchOptions(
        out=out,
        insecure=False,
        mutual_tls=True,
        step_timeout=60.0,
        dead_after=15.0,
        heartbeat=0.5,
        startup_timeout=120.0,
        checkpoint_every=0,
    )
    peak, attack = 0.0, None
    with Launcher(config, options) as run:
        run.start()
        threads: list[threading.Thread] = []
        if storm:  # the drips from the rendezvous on: the handshake deadline is 10 s
            listening = next(e for e in _events(out, 0) if e["event"] == "listening")
            attack = Storm(run, out / "certificates", listening["run_id"])
            threads += attack.start([attack.drips])
        assert all(run.wait_step(k, 1, timeout=120) for k in range(N))
        pids = [p.popen.pid for p in run.procs.values()]
        t0 = time.monotonic()
        if attack is not None:
            threads += attack.start([attack.idle_bursts, attack.junk, attack.control_flood])
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.2):
                peak = max(peak, _rss_mb(pids))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        run.run(timeout=150)
        wall = time.monotonic() - t0
        done.set()
        sampler.join(5)
        if attack is not None:
            attack.stop.set()
            for t in threads:
                t.join(20)
        run.collect()
        assert run.failed() is None
    return peak, wall, attack


@pytest.mark.slow
def test_eight_nodes_over_mutual_tls_finish_unharmed_through_a_storm(tmp_path: Path) -> None:
    quiet_mb, quiet_s, _ = _run(tmp_path / "quiet", storm=False)
    storm_mb, storm_s, storm = _run(tmp_path / "storm", storm=True)
    assert storm is not None and not storm.errors, storm.errors
    for k in range(N):
        a = torch.load(tmp_path / "quiet" / "nodes" / f"node-{k}" / "model.pt")["x"]
        b = torch.load(tmp_path / "storm" / "nodes" / f"node-{k}" / "model.pt")["x"]
        assert torch.equal(a, b), f"node {k}'s model differs from the quiet run's"
        events = _events(tmp_path / "storm", k)
        assert not [e for e in events if e["event"] in ("drop", "dead", "revived")], k
    kinds = {
        k: {e["kind"] for e in _events(tmp_path / "storm", k) if e["event"] == "reject"}
        for k in (0, 2, 4, 5)
    }
    assert "busy" in kinds[0], kinds
    assert "handshake-timeout" in kinds[2], ("the run ended before the drips' deadline", kinds)
    assert {"bad-certificate", "wrong-shape", "wrong-dtype"} <= kinds[5], kinds
    assert "wrong-token" in kinds[4], kinds
    print(
        json.dumps(
            {
                "quiet_rss_mb": round(quiet_mb),
                "storm_rss_mb": round(storm_mb),
                "quiet_s": round(quiet_s, 1),
                "storm_s": round(storm_s, 1),
            }
        )
    )
    assert storm_mb <= MEMORY_MULTIPLE * quiet_mb, (storm_mb, quiet_mb)
