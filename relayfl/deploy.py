"""Command line of the deployment: ``relayfl node``, ``relayfl launch``, ``relayfl certs``.

:func:`add_commands` is the one hook :mod:`relayfl.cli` calls; each command's handler
returns an exit code, and raises :class:`~relayfl.errors.RelayflError` for the CLI to
print as one line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relayfl.errors import ConfigError

__all__ = ["add_commands", "node_main"]

_INSECURE_BANNER = (
    "WARNING: --insecure: no TLS. Models and the run token cross the network in "
    "plaintext, and any host that can reach this port can connect. Use it only on "
    "loopback or for a demo; make certificates with `relayfl certs` instead."
)


def _add_node_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``node`` and ``launch`` (timeouts, security, client)."""
    g = p.add_argument_group("protocol")
    g.add_argument(
        "--step-timeout",
        dest="step_timeout",
        type=float,
        default=60.0,
        help="seconds to wait for a neighbour's message before it counts as dropped",
    )
    g.add_argument(
        "--dead-after",
        dest="dead_after",
        type=float,
        default=20.0,
        help="seconds without heartbeats before a neighbour is declared dead",
    )
    g.add_argument(
        "--heartbeat", type=float, default=1.0, help="seconds between heartbeats to each neighbour"
    )
    g.add_argument(
        "--startup-timeout",
        dest="startup_timeout",
        type=float,
        default=300.0,
        help="seconds to wait for every neighbour at start-up",
    )
    g.add_argument(
        "--checkpoint-every",
        dest="checkpoint_every",
        type=int,
        default=10,
        help="checkpoint every k communication steps (0: never)",
    )
    g.add_argument(
        "--run-name",
        dest="run_name",
        default="",
        help="mixed into the run id, to keep two runs with equal options apart",
    )
    g.add_argument(
        "--client",
        default=None,
        help="module:attribute of a Flower NumPyClient, a client_fn, or a "
        "relayfl.Task (default: the built-in --dataset)",
    )
    g.add_argument(
        "--threads", type=int, default=None, help="torch threads per node (launch default: 1)"
    )
    g = p.add_argument_group("security")
    g.add_argument(
        "--certificates",
        default=None,
        help="folder with ca.pem, node-K.pem and node-K.key (`relayfl certs`)",
    )
    g.add_argument(
        "--mutual-tls",
        dest="mutual_tls",
        action="store_true",
        help="also require and check the connecting peer's certificate",
    )
    g.add_argument(
        "--insecure", action="store_true", help="no TLS (loopback demos only; prints a warning)"
    )
    g.add_argument(
        "--token-file",
        dest="token_file",
        default=None,
        help="file holding the shared run token (or set RELAYFL_TOKEN)",
    )


def add_commands(sub: argparse._SubParsersAction, add_run_options: Callable) -> None:
    """Register ``node``, ``launch`` and ``certs`` on the ``relayfl`` parser."""
    from relayfl.cliwords import HelpFormatter as fmt

    node = sub.add_parser(
        "node",
        help="run one worker on this device, relaying with its neighbours (no server)",
        formatter_class=fmt,
        description="One worker of a serverless run. Every node gets the same run options "
        "and topology; node K runs `relayfl node --id K`.",
    )
    node.add_argument("--id", dest="node_id", type=int, required=True, help="this node's id")
    add_run_options(node)
    # real links drop and nodes die: fill with the node's own latest model (Table 5), not x0
    node.set_defaults(num_clients=None, fill="latest")
    node.add_argument(
        "--config",
        default=None,
        help="a run config JSON (results.json 'config', or run_config.json); "
        "replaces the run options",
    )
    node.add_argument(
        "--peers",
        default=None,
        help="comma-separated host:port of nodes 0..n-1, with a named --topology "
        "(a JSON topology file lists them as node 'address' instead)",
    )
    node.add_argument(
        "--listen",
        default=None,
        help="host:port to listen on (default: 0.0.0.0 and this node's port)",
    )
    node.add_argument(
        "--data-listen",
        dest="data_listen",
        default=None,
        help="host:port of the data stream (default: the --listen port + 1, "
        "or any free port with port 0)",
    )
    node.add_argument("--out", default=None, help="output folder (default results/node-K)")
    node.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in --out and rejoin the run",
    )
    node.add_argument("--events", action="store_true", help=argparse.SUPPRESS)
    node.add_argument(
        "--peers-from-stdin", dest="peers_from_stdin", action="store_true", help=argparse.SUPPRESS
    )
    _add_node_options(node)
    node.set_defaults(handler=node_main)

    launch = sub.add_parser(
        "launch",
        help="start N nodes as local processes on loopback (demo and test harness)",
        formatter_class=fmt,
    )
    add_run_options(launch)
    launch.add_argument(
        "--nodes",
        dest="num_clients",
        type=int,
        default=None,
        help="number of nodes (same as --clients)",
    )
    launch.add_argument("--out", default="results/launch", help="results folder")
    launch.add_argument(
        "--kill",
        action="append",
        default=[],
        metavar="K@STEP",
        help="SIGKILL node K once it reports step STEP (fault demo; repeatable)",
    )
    launch.add_argument(
        "--resume-after",
        dest="resume_after",
        type=float,
        default=None,
        help="restart killed nodes with --resume after this many seconds",
    )
    launch.add_argument(
        "--timeout", type=float, default=None, help="stop every node after this many seconds"
    )
    launch.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_node_options(launch)
    launch.set_defaults(handler=launch_main, mutual_tls=None, num_clients=None, fill="latest")
    launch.add_argument(
        "--no-mutual-tls",
        dest="mutual_tls",
        action="store_false",
        help="with certificates, do not require client certificates",
    )

    certs = sub.add_parser(
        "certs",
        help="make a run CA and per-node TLS certificates for a topology",
        formatter_class=fmt,
    )
    certs.add_argument(
        "--topology", default=None, help="JSON topology file whose nodes have an 'address'"
    )
    certs.add_argument(
        "--nodes",
        type=int,
        default=None,
        help="number of nodes (certificates for loopback, without --topology)",
    )
    certs.add_argument("--out", default="certificates", help="folder to write into")
    certs.add_argument("--days", type=int, default=365)
    certs.set_defaults(handler=certs_main)


# ------------------------------------------------------------------------------- certs
def certs_main(args: argparse.Namespace) -> int:
    from relayfl import topology
    from relayfl.certs import make_certificates

    if args.topology:
        graph = topology.load_graph(args.topology)
        nodes = {int(v): graph.nodes[v].get("address") for v in graph.nodes}
    elif args.nodes:
        nodes = {k: None for k in range(args.nodes)}
    else:
        raise ConfigError("pass --topology FILE.json (with node addresses) or --nodes N")
    folder = make_certificates(args.out, nodes, days=args.days)
    print(
        f"wrote {folder}/ca.pem, ca.key and node-K.pem/.key for nodes 0..{max(nodes)}; copy "
        "ca.pem, node-K.pem and node-K.key to machine K, keep ca.key elsewhere"
    )
    return 0


# ------------------------------------------------------------------------------- node
def _token(args: argparse.Namespace) -> str | None:
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
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"--config {path} does not exist")
        data = json.loads(path.read_text())
        config = RunConfig.from_dict(data.get("config", data))
    else:
        topo = args.topology
        if topo and not Path(topo).is_file() and (Path(topo).suffix or "/" in topo):
            raise ConfigError(f"--topology {topo} does not exist; check the file's path")
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


def node_main(args: argparse.Namespace) -> int:
    from relayfl.certs import load_tls
    from relayfl.node import Node, NodeConfig, load_trainer
    from relayfl.threads import set_threads

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s relayfl %(levelname)s %(message)s",
    )
    log = logging.getLogger("relayfl.node")
    set_threads(args.threads)
    config, graphs, addresses = _node_setup(args)
    me = args.node_id
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
    token = _token(args)
    if args.insecure:
        log.warning("node %d: %s", me, _INSECURE_BANNER)
    elif not token and not args.mutual_tls:
        log.warning(
            "node %d: no run token and no --mutual-tls: any host with a certificate-checking "
            "client can connect; pass --token-file or --mutual-tls",
            me,
        )
    listen = args.listen
    if listen is None:
        own = (addresses or {}).get(me)
        if own is None:
            raise ConfigError(
                f"no address for node {me}: pass --listen HOST:PORT, or list it in the "
                "topology file or --peers"
            )
        listen = f"0.0.0.0:{own.rpartition(':')[2]}"
    data_listen = args.data_listen
    if data_listen is None:
        host, _, port = listen.rpartition(":")
        data_listen = f"{host}:{int(port) + 1 if int(port) else 0}"
    from relayfl.transport.grpc import GrpcTransport

    transport = GrpcTransport(
        listen,
        data_listen,
        tls=tls,
        mutual_tls=args.mutual_tls,
        send_timeout=max(60.0, args.step_timeout * 2),
        logger=logging.getLogger("relayfl.transport"),
    )
    options = NodeConfig(
        node_id=me,
        out=Path(args.out) if args.out else Path("results") / f"node-{me}",
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

    trainer = load_trainer(args.client, config, me)
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


# ------------------------------------------------------------------------------- launch
def launch_main(args: argparse.Namespace) -> int:
    from relayfl.config import RunConfig
    from relayfl.launch import Launcher, LaunchOptions

    if args.num_clients is None:
        args.num_clients = 4
    config = RunConfig.from_args(args)
    kills: list[tuple[int, int]] = []
    for spec in args.kill:
        node, sep, step = spec.partition("@")
        if not sep or not node.isdigit() or not step.isdigit():
            raise ConfigError(f"--kill {spec!r} is not K@STEP; write e.g. --kill 1@20")
        kills.append((int(node), int(step)))
    if args.insecure and args.certificates:
        raise ConfigError("pass either --certificates DIR or --insecure, not both")
    from relayfl.outdir import check_out

    options = LaunchOptions(
        out=check_out(args.out),
        insecure=args.insecure,
        certificates=Path(args.certificates) if args.certificates else None,
        mutual_tls=args.mutual_tls is not False,
        token=_token(args),
        step_timeout=args.step_timeout,
        dead_after=args.dead_after,
        heartbeat=args.heartbeat,
        startup_timeout=args.startup_timeout,
        checkpoint_every=args.checkpoint_every,
        client=args.client,
        threads=args.threads or 1,
        kills=kills,
        resume_after=args.resume_after,
        quiet=args.quiet,
        run_name=args.run_name,
    )
    if args.insecure:
        print(f"relayfl launch: {_INSECURE_BANNER}", file=sys.stderr)
    with Launcher(config, options) as launcher:
        launcher.start()
        launcher.run(timeout=args.timeout)
        result = launcher.collect()
    launcher.report(result)
    failed = launcher.failed()
    if failed:
        print(f"relayfl launch: {failed}", file=sys.stderr)
        return 1
    return 0
