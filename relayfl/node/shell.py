"""The ``relayfl node`` process: from its parsed arguments to a finished node.

Reads the run config, topology and address book, loads certificates and the run
token, builds the :class:`~relayfl.transport.grpc.GrpcTransport` and the trainer, runs
the :class:`~relayfl.node.Node`, and leaves the process without interpreter
finalization once everything is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from relayfl.errors import ConfigError

__all__ = ["INSECURE_BANNER", "node_main", "run_token", "security"]

INSECURE_BANNER = (
    "WARNING: --insecure: no TLS. Models and the run token cross the network in "
    "plaintext, and any host that can reach this port can connect. Use it only on "
    "loopback or for a demo; make certificates with `relayfl certs` instead."
)


def run_token(args: argparse.Namespace) -> str | None:
    """The shared run token: ``--token-file``, else ``RELAYFL_TOKEN``, else None."""
    if args.token_file:
        path = Path(args.token_file)
        if not path.is_file():
            raise ConfigError(f"--token-file {path} does not exist; write the run token into it")
        token = path.read_text().strip()
        if not token:
            raise ConfigError(f"--token-file {path} is empty; write the run token into it")
        return token
    return os.environ.get("RELAYFL_TOKEN") or None


def _node_setup(args: argparse.Namespace) -> tuple[Any, Any, dict[int, str] | None]:
    """RunConfig, graphs and the address book of ``relayfl node``."""
    from relayfl import topology
    from relayfl.config import RunConfig

    addresses: dict[int, str] | None = None
    topo = getattr(args, "topology", None)
    if topo and topo not in topology.NAMES and not Path(topo).is_file():
        raise ConfigError(
            f"topology file {topo} does not exist; pass an existing file or one of "
            f"{', '.join(topology.NAMES)}"
        )
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"--config {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ConfigError(f"--config {path} is not a readable JSON file ({err})") from None
        config = RunConfig.from_dict(data.get("config", data))
    else:
        if topo and Path(topo).is_file() and args.num_clients is None:
            args.num_clients = topology.load_graph(topo).number_of_nodes()
        if args.num_clients is None and args.peers:
            args.num_clients = len(args.peers.split(","))
        if args.num_clients is None:
            raise ConfigError("how many nodes? pass a topology file, --peers, or --clients N")
        config = RunConfig.from_args(args)
    if config.topology and Path(config.topology).is_file():
        graph = topology.load_graph(config.topology)
        found = {
            int(v): graph.nodes[v]["address"] for v in graph.nodes if "address" in graph.nodes[v]
        }
        addresses = found or None
    graphs = config.build_graphs()
    if args.peers:
        peers = [a.strip() for a in args.peers.split(",") if a.strip()]
        if len(peers) != config.num_clients:
            raise ConfigError(
                f"--peers lists {len(peers)} addresses for {config.num_clients} nodes; list "
                "one host:port per node, in id order"
            )
        addresses = dict(enumerate(peers))
    return config, graphs, addresses


def _stdin_addresses(own: dict[str, str]) -> dict[int, str]:
    """Read the address book ``relayfl launch`` writes on stdin, then watch for EOF."""
    line = sys.stdin.readline()
    if not line:
        raise ConfigError("stdin closed before the address book arrived (launcher gone?)")
    book = {int(k): v for k, v in json.loads(line)["addresses"].items()}

    def watch() -> None:
        while sys.stdin.readline():
            pass
        logging.getLogger("relayfl.node").error(
            "relayfl node: the launcher went away (stdin closed); stopping"
        )
        os._exit(3)

    threading.Thread(target=watch, name="relayfl-stdin", daemon=True).start()
    return book


class _Formatter(logging.Formatter):
    """Timestamped lines; errors the node survives (a checkpoint on a full disk) read
    like the CLI's one-line errors: ``relayfl: error: ...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s relayfl %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.ERROR and not record.exc_info:
            return f"relayfl: error: {record.getMessage()}"
        return super().format(record)


def _listen_addresses(
    args: argparse.Namespace, addresses: dict[int, str] | None, me: int
) -> tuple[str, str]:
    """The control and data ``host:port`` to listen on, checked (ports 0..65535)."""
    from relayfl.transport.grpc import split_address

    listen = args.listen
    if listen is None:
        own = (addresses or {}).get(me)
        if own is None:
            raise ConfigError(
                f"no address for node {me}: pass --listen HOST:PORT, or list it in the "
                "topology file or --peers"
            )
        listen = f"0.0.0.0:{split_address(own)[1]}"
    host, port = split_address(listen, option="--listen")
    data_listen = args.data_listen
    if data_listen is None:
        if port == 65535:
            raise ConfigError(
                "--listen port 65535 leaves no port for the data stream (port + 1); pick a "
                "lower port, or pass --data-listen"
            )
        data_listen = f"{host}:{port + 1 if port else 0}"
    split_address(data_listen, option="--data-listen")
    return listen, data_listen


def _check_out(out: Path, resume: bool) -> None:
    """``--out`` must be a folder (or not exist yet)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"--out {out} is a file, not a folder; pass a folder for the node's logs, "
            "results and checkpoint"
        )
    if resume and not (out / "checkpoint.pt").is_file():
        raise ConfigError(
            f"--resume found no checkpoint at {out / 'checkpoint.pt'}; pass the node's "
            "original --out folder, or start without --resume"
        )


def security(
    args: argparse.Namespace, me: int, log: logging.Logger
) -> tuple[Any, bool, str | None]:
    """TLS files, whether mutual TLS is on, and the run token of ``relayfl node``.

    With ``--certificates`` mutual TLS is on unless ``--no-mutual-tls`` (as in
    ``relayfl launch``): a connecting peer must then present the certificate of the
    node it claims to be, so a token holder cannot pose as another neighbour. Opting
    out, and ``--insecure``, print a warning.

    Raises
    ------
    ConfigError
        Neither or both of ``--certificates`` and ``--insecure``, missing or mismatched
        certificate files, ``--mutual-tls`` without certificates, a bad token file.
    """
    from relayfl.certs import load_tls

    if args.insecure and args.certificates:
        raise ConfigError("pass either --certificates DIR or --insecure, not both")
    if not args.insecure and not args.certificates:
        raise ConfigError(
            "no --certificates: make them with `relayfl certs --topology TOPOLOGY.json --out "
            "certs` and pass --certificates certs, or pass --insecure for a loopback demo"
        )
    tls = load_tls(args.certificates, me) if args.certificates else None
    if args.mutual_tls and tls is None:
        raise ConfigError("--mutual-tls needs --certificates DIR")
    # with certificates, check who connects (as `relayfl launch` does): a token holder
    # cannot pose as another neighbour. --no-mutual-tls opts out.
    mutual = tls is not None and args.mutual_tls is not False
    token = run_token(args)
    if args.insecure:
        log.warning("node %d: %s", me, INSECURE_BANNER)
    elif not mutual:
        log.warning(
            "node %d: --no-mutual-tls: connecting peers are not asked for a certificate, so "
            "any holder of the run token can pose as any neighbour%s",
            me,
            "" if token else ", and there is no run token: anyone can connect",
        )
    return tls, mutual, token


def node_main(args: argparse.Namespace) -> int:
    """Run ``relayfl node`` (every bad input is a :class:`ConfigError` before any work)."""
    from relayfl.node import Node, NodeConfig, load_trainer
    from relayfl.threads import set_threads

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    log = logging.getLogger("relayfl.node")
    set_threads(args.threads or None)  # 0: torch's default
    config, graphs, addresses = _node_setup(args)
    me = args.node_id
    n = config.num_clients
    if not 0 <= me < n:
        raise ConfigError(f"--id {me} is not in the topology (0..{n - 1}); pass an id below {n}")
    out = Path(args.out) if args.out else Path("results") / f"node-{me}"
    _check_out(out, args.resume)
    tls, mutual, token = security(args, me, log)
    listen, data_listen = _listen_addresses(args, addresses, me)
    from relayfl.transport.grpc import GrpcTransport

    transport = GrpcTransport(
        listen,
        data_listen,
        tls=tls,
        mutual_tls=mutual,
        send_timeout=max(60.0, args.step_timeout * 2),
        logger=logging.getLogger("relayfl.transport"),
    )
    options = NodeConfig(
        node_id=me,
        out=out,
        step_timeout=args.step_timeout,
        dead_after=args.dead_after,
        heartbeat=args.heartbeat,
        startup_timeout=args.startup_timeout,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        run_name=args.run_name,
        events=args.events,
    )
    # torch.func (the simulator's engine) imports torch._dynamo on its first gradient:
    # ~4 s of CPU. Pay it now, before the rendezvous, not inside step 0's timeout.
    import torch._dynamo  # noqa: F401

    flower: dict[str, Any] = {}
    if args.initial or args.run_config:  # a Flower client's initial model and run config
        from relayfl.flower.inputs import load_initial, parse_run_config

        flower["run_config"] = parse_run_config(args.run_config)
        flower["initial"] = load_initial(args.initial) if args.initial else None
    trainer = load_trainer(args.client, config, me, **flower)
    book: Any = _stdin_addresses if args.peers_from_stdin else addresses
    if book is None:
        raise ConfigError(
            'no peer addresses: use a JSON topology file whose nodes have an "address", '
            "or --peers host:port,... with a named --topology"
        )
    node = Node(
        config, options, trainer, transport, graphs=graphs, addresses=book, token=token, logger=log
    )
    signal.signal(signal.SIGTERM, lambda *_: node.stop())  # checkpoint, then exit
    result = node.run()
    final = result.final
    print(
        f"node {me}: done, accuracy {final.mean_accuracy:.4f} at step {final.step}; "
        f"results in {options.out}",
        file=sys.stderr,
    )
    # Everything is written and closed. Leave without interpreter finalization: gRPC's
    # C++ threads can abort ("terminate called without an active exception") while
    # Python tears down, which would turn a finished run into a crash exit code.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
