"""Benchmark the deployment transport: relay steps over the network vs raw sockets.

Four node processes on a chain (0-1-2-3) on loopback relay a 10M-parameter model
(40 MB of float32 per message) with ``relayfl.node.Node`` over
:class:`~relayfl.transport.grpc.GrpcTransport`, exactly as ``relayfl node`` does (no
training: the step is the communication and the relay arithmetic). The baseline moves the
same bytes in the same pattern with plain sockets: every step each process sends one
message to each neighbour and receives one from each, in parallel, then the step ends.

Three chains are timed per mode (plaintext, then TLS with mutual authentication):
``raw-*-chain`` (plain sockets), ``transport-*-chain`` (the same pattern through
``GrpcTransport`` alone: framing, pooled receive buffers; the transport's own overhead)
and ``relay-*-chain`` (whole node steps: transport, message checks and the RelaySum
arithmetic, ~6 vector operations over the model per step).

Also measured, for the design record: one 40 MB message between two processes as a gRPC
unary call, as gRPC client streaming in 1 MiB chunks, and with our framing.

Prints one JSON line per measurement::

    python simulations/benchmark_transport.py             # insecure and TLS
    python simulations/benchmark_transport.py --params 1e6 --steps 5 --no-tls

The numbers depend on the machine and on what else runs on it; the script prints the
CPU count and load average with every line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CHAIN = 4


def _env() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load": round(os.getloadavg()[0], 2)}


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps({**record, **_env()}), flush=True)


# --------------------------------------------------------------------------- raw chain
def _raw_node(
    rank: int,
    ports: Any,
    ready: Any,
    done: Any,
    params: int,
    steps: int,
    tls_dir: str | None,
    out: Any,
) -> None:
    import numpy as np

    nbytes = params * 4
    data = np.random.default_rng(rank).random(params, dtype=np.float32)
    view = memoryview(data).cast("B")
    server_ctx = client_ctx = None
    if tls_dir:
        d = Path(tls_dir)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(d / f"node-{rank}.pem", d / f"node-{rank}.key")
        client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_ctx.load_verify_locations(cafile=str(d / "ca.pem"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    ports[rank] = listener.getsockname()[1]
    ready.wait()
    neighbours = [j for j in (rank - 1, rank + 1) if 0 <= j < CHAIN]
    incoming: dict[int, socket.socket] = {}
    outgoing: dict[int, socket.socket] = {}

    def accept() -> None:
        for _ in neighbours:
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if server_ctx is not None:
                conn = server_ctx.wrap_socket(conn, server_side=True)
            who = int.from_bytes(conn.recv(1), "big")
            incoming[who] = conn

    acceptor = threading.Thread(target=accept)
    acceptor.start()
    for j in neighbours:
        sock = socket.create_connection(("127.0.0.1", ports[j]))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if client_ctx is not None:
            sock = client_ctx.wrap_socket(sock, server_hostname=f"relayfl-node-{j}")
        sock.sendall(bytes([rank]))
        outgoing[j] = sock
    acceptor.join()
    buffers = {j: bytearray(nbytes) for j in neighbours}

    def send(j: int) -> None:
        outgoing[j].sendall(view)

    def recv(j: int) -> None:
        mv, got = memoryview(buffers[j]), 0
        while got < nbytes:
            got += incoming[j].recv_into(mv[got:], min(nbytes - got, 4 << 20))

    times = []
    for _ in range(steps):
        start = time.perf_counter()
        threads = [threading.Thread(target=f, args=(j,)) for j in neighbours for f in (send, recv)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        times.append(time.perf_counter() - start)
    out.put((rank, times))
    # Close only when every process is done: a TLS client socket holds unread session
    # tickets, and closing it then resets the connection, discarding data the peer has
    # not read yet.
    done.wait()


def raw_chain(params: int, steps: int, tls_dir: str | None) -> list[float]:
    """Per-step seconds (max over the processes) of the raw-socket chain."""
    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    ports = manager.dict()
    ready, done = manager.Event(), manager.Event()
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_raw_node, args=(k, ports, ready, done, params, steps, tls_dir, out))
        for k in range(CHAIN)
    ]
    for p in procs:
        p.start()
    while len(ports) < CHAIN:
        time.sleep(0.05)
    ready.set()
    results = dict(out.get(timeout=600) for _ in procs)
    done.set()
    for p in procs:
        p.join(60)
    manager.shutdown()
    return [max(results[k][s] for k in range(CHAIN)) for s in range(steps)]


# --------------------------------------------------------------------------- transport chain
def _transport_node(
    rank: int, book: Any, done: Any, params: int, steps: int, tls_dir: str | None, out: Any
) -> None:
    import torch

    torch.set_num_threads(1)
    from relayfl.certs import load_tls
    from relayfl.transport.base import LinkSpec, Message
    from relayfl.transport.grpc import GrpcTransport

    neighbours = [j for j in (rank - 1, rank + 1) if 0 <= j < CHAIN]
    got: dict[int, set[int]] = {}
    cv = threading.Condition()

    class Inbox:
        def on_message(self, m: Message) -> None:
            with cv:
                got.setdefault(m.step, set()).add(m.sender)
                cv.notify_all()

        def on_status(self, s: int, st: dict) -> dict:
            return {"step": 0, "phase": "start", "waiting_on": []}

        def on_reject(self, *a: Any) -> None:
            print("rejected", a, file=sys.stderr)

        def on_progress(self, s: int) -> None: ...

        def on_send_failed(self, p: int, s: int) -> None:
            print("send failed", p, s, file=sys.stderr)

    tls = load_tls(tls_dir, rank) if tls_dir else None
    t = GrpcTransport(tls=tls, mutual_tls=tls is not None)
    spec = LinkSpec(rank, "bench", frozenset(neighbours), "tok", params * 4)
    book[rank] = t.start(spec, Inbox())["control"]
    while len(book) < CHAIN:
        time.sleep(0.02)
    t.set_peers({j: book[j] for j in neighbours})
    while not all(t.status(j, {"step": 0, "phase": "start"}, 5) for j in neighbours):
        time.sleep(0.1)
    payload = torch.rand(params)
    times = []
    for step in range(steps):
        start = time.perf_counter()
        for j in neighbours:
            t.send(j, Message("bench", step, rank, 0, 1.0, payload))
        with cv:
            cv.wait_for(lambda step=step: got.get(step, set()) >= set(neighbours), 600)
        times.append(time.perf_counter() - start)
    out.put((rank, times))
    done.wait()
    t.close()


def transport_chain(params: int, steps: int, tls_dir: str | None) -> list[float]:
    """Per-step seconds (max over the processes) of the chain on GrpcTransport alone."""
    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    book, done, out = manager.dict(), manager.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_transport_node, args=(k, book, done, params, steps, tls_dir, out))
        for k in range(CHAIN)
    ]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=600) for _ in procs)
    done.set()
    for p in procs:
        p.join(60)
    manager.shutdown()
    return [max(results[k][s] for k in range(CHAIN)) for s in range(steps)]


# --------------------------------------------------------------------------- relay chain
class _Constant:
    """A trainer that does not train: the step is communication and relay arithmetic."""

    def __init__(self, params: int) -> None:
        import torch

        self.x0 = torch.zeros(params)

    def train(self, x: Any, step: int, num_steps: int = 1) -> tuple[Any, float]:
        return x, 0.0

    def evaluate(self, x: Any) -> tuple[float, float]:
        return 0.0, 0.0

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _relay_node(
    rank: int, book: Any, params: int, steps: int, tls_dir: str | None, folder: str
) -> None:
    import torch

    torch.set_num_threads(1)
    from relayfl import RunConfig
    from relayfl.certs import load_tls
    from relayfl.node import Node, NodeConfig
    from relayfl.transport.grpc import GrpcTransport

    config = RunConfig(
        algorithm="relaysgd",
        topology="chain",
        num_clients=CHAIN,
        steps=steps,
        eval_every=0,
        fill="latest",
    )
    tls = load_tls(tls_dir, rank) if tls_dir else None
    transport = GrpcTransport("127.0.0.1:0", tls=tls, mutual_tls=tls is not None)

    def addresses(own: dict[str, str]) -> dict[int, str]:
        book[rank] = own["control"]
        while len(book) < CHAIN:
            time.sleep(0.02)
        return dict(book)

    options = NodeConfig(
        rank,
        out=Path(folder) / f"node-{rank}",
        step_timeout=600,
        dead_after=120,
        heartbeat=1.0,
        checkpoint_every=0,
    )
    Node(config, options, _Constant(params), transport, addresses=addresses, token="bench").run()


def relay_chain(params: int, steps: int, tls_dir: str | None) -> tuple[list[float], int]:
    """Per-step seconds (max over the nodes) of relay steps, and bytes sent by node 1."""
    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    book = manager.dict()
    with tempfile.TemporaryDirectory() as folder:
        procs = [
            ctx.Process(target=_relay_node, args=(k, book, params, steps, tls_dir, folder))
            for k in range(CHAIN)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(1200)
        per_node = []
        sent = 0
        for k in range(CHAIN):
            events = [
                json.loads(line)
                for line in (Path(folder) / f"node-{k}" / "log.jsonl").read_text().splitlines()
            ]
            per_node.append([e["comm_s"] for e in events if e["event"] == "step"])
            if k == 1:
                sent = json.loads((Path(folder) / f"node-{k}" / "results.json").read_text())[
                    "extra"
                ]["bytes_sent"]
    manager.shutdown()
    return [max(node[s] for node in per_node) for s in range(steps)], sent


# --------------------------------------------------------------------------- one message
def _grpc_sink(q: Any, nbytes: int) -> None:
    from concurrent import futures

    import grpc

    def unary(request: bytes, context: Any) -> bytes:
        return b"k"

    def stream(chunks: Any, context: Any) -> bytes:
        buf, off = bytearray(nbytes), 0
        for c in chunks:
            buf[off : off + len(c)] = c
            off += len(c)
        return b"k"

    handler = grpc.method_handlers_generic_handler(
        "b",
        {
            "U": grpc.unary_unary_rpc_method_handler(unary),
            "S": grpc.stream_unary_rpc_method_handler(stream),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(4), options=[("grpc.max_receive_message_length", -1)]
    )
    server.add_generic_rpc_handlers((handler,))
    q.put(server.add_insecure_port("127.0.0.1:0"))
    server.start()
    server.wait_for_termination(600)


def one_message(params: int, reps: int) -> dict[str, float]:
    """Median seconds to move one message: gRPC unary, gRPC streaming, our framing."""
    import grpc
    import numpy as np
    import torch

    nbytes = params * 4
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    sink = ctx.Process(target=_grpc_sink, args=(q, nbytes), daemon=True)
    sink.start()
    port = q.get(timeout=120)
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", -1)]
    )
    grpc.channel_ready_future(channel).result(60)
    data = np.random.default_rng(0).random(params, dtype=np.float32).tobytes()
    unary, stream = channel.unary_unary("/b/U"), channel.stream_unary("/b/S")
    out: dict[str, list[float]] = {"grpc_unary_s": [], "grpc_stream_1MiB_s": []}
    for _ in range(reps):
        t = time.perf_counter()
        unary(data)
        out["grpc_unary_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        mv = memoryview(data)
        stream(bytes(mv[i : i + (1 << 20)]) for i in range(0, nbytes, 1 << 20))
        out["grpc_stream_1MiB_s"].append(time.perf_counter() - t)
    channel.close()
    sink.kill()

    from relayfl.transport.base import LinkSpec, Message
    from relayfl.transport.grpc import GrpcTransport

    got = threading.Event()

    class Sink:
        def on_message(self, m: Message) -> None:
            got.set()

        def on_status(self, s: int, st: dict) -> dict:
            return {"step": 0, "phase": "start", "waiting_on": []}

        def on_reject(self, *a: Any) -> None:
            print("rejected", a, file=sys.stderr)

        def on_progress(self, s: int) -> None: ...

        def on_send_failed(self, p: int, s: int) -> None: ...

    a, b = GrpcTransport(), GrpcTransport()
    ea = a.start(LinkSpec(0, "bench", frozenset({1}), None, nbytes), Sink())
    eb = b.start(LinkSpec(1, "bench", frozenset({0}), None, nbytes), Sink())
    a.set_peers({1: eb["control"]})
    b.set_peers({0: ea["control"]})
    a.status(1, {"step": 0, "phase": "start", "waiting_on": []}, 10)
    tensor = torch.frombuffer(bytearray(data), dtype=torch.float32)
    framing = []
    for step in range(reps):
        got.clear()
        t = time.perf_counter()
        a.send(1, Message("bench", step, 0, 0, 1.0, tensor))
        got.wait(60)
        framing.append(time.perf_counter() - t)
    a.close()
    b.close()
    out["framed_stream_s"] = framing
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=float, default=10e6, help="model size (floats)")
    parser.add_argument("--steps", type=int, default=12, help="measured steps (+3 warm-up)")
    parser.add_argument("--no-tls", dest="tls", action="store_false")
    parser.add_argument(
        "--no-single",
        dest="single",
        action="store_false",
        help="skip the one-message gRPC comparison",
    )
    args = parser.parse_args()
    params = int(args.params)
    warm = 3
    total = args.steps + warm
    mb = params * 4 / 1e6

    if args.single:
        single = one_message(params, reps=5)
        _emit(
            {
                "bench": "one-message",
                "mb": mb,
                **{k: round(v * 1000, 2) for k, v in single.items()},
                "unit": "ms",
            }
        )

    modes: list[tuple[str, str | None]] = [("insecure", None)]
    cert_dir = None
    if args.tls:
        from relayfl.certs import make_certificates

        cert_dir = tempfile.mkdtemp(prefix="relayfl-bench-certs-")
        make_certificates(cert_dir, {k: "127.0.0.1" for k in range(CHAIN)})
        modes.append(("tls", cert_dir))
    for mode, tls_dir in modes:
        raw = raw_chain(params, total, tls_dir)[warm:]
        transport = transport_chain(params, total, tls_dir)[warm:]
        relay, sent = relay_chain(params, total, tls_dir)
        relay = relay[warm:]
        raw_ms = statistics.median(raw) * 1000
        relay_ms = statistics.median(relay) * 1000
        transport_ms = statistics.median(transport) * 1000
        base = "raw-tcp" if tls_dir is None else "raw-tls"
        _emit(
            {
                "bench": f"{base}-chain",
                "nodes": CHAIN,
                "params": params,
                "mb_per_message": mb,
                "step_ms": round(raw_ms, 1),
                "messages_per_s_per_link": round(1000 / raw_ms, 2),
                "mb_per_s_per_link": round(mb * 1000 / raw_ms, 1),
            }
        )
        _emit(
            {
                "bench": f"transport-{mode}-chain",
                "nodes": CHAIN,
                "params": params,
                "mb_per_message": mb,
                "step_ms": round(transport_ms, 1),
                "messages_per_s_per_link": round(1000 / transport_ms, 2),
                "mb_per_s_per_link": round(mb * 1000 / transport_ms, 1),
                f"ratio_vs_{base}": round(transport_ms / raw_ms, 2),
            }
        )
        _emit(
            {
                "bench": f"relay-{mode}-chain",
                "nodes": CHAIN,
                "params": params,
                "mb_per_message": mb,
                "step_ms": round(relay_ms, 1),
                "step_ms_min": round(min(relay) * 1000, 1),
                "messages_per_s_per_link": round(1000 / relay_ms, 2),
                "mb_per_s_per_link": round(mb * 1000 / relay_ms, 1),
                f"ratio_vs_{base}": round(relay_ms / raw_ms, 2),
                "node1_bytes_sent": sent,
            }
        )


if __name__ == "__main__":
    main()
