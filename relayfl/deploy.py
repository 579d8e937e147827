"""Command line of the deployment: ``relayfl node``, ``relayfl launch``, ``relayfl certs``.

:func:`add_commands` is the one hook :mod:`relayfl.cli` calls; each command's handler
returns an exit code, and raises :class:`~relayfl.errors.RelayflError` for the CLI to
print as one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from relayfl.errors import ConfigError

__all__ = ["add_commands"]


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
        help="module:attribute of a Flower client_fn, NumPyClient or ClientApp "
        "(Message API too), or a relayfl.Task (default: the built-in --dataset)",
    )
    g.add_argument(
        "--initial",
        default=None,
        help="initial model of a Flower --client: a torch.save'd state_dict (.pt) or an "
        ".npz of the arrays in order (default: the client's get_parameters; needed for "
        "a Message-API ClientApp)",
    )
    g.add_argument(
        "--run-config",
        dest="run_config",
        default=None,
        help='context.run_config of a Flower --client, as flwr run: "local-epochs=2 k=v"',
    )
    g.add_argument(
        "--accuracy-key",
        dest="accuracy_key",
        default=None,
        help="the evaluate metric of a Flower --client that holds accuracy (default: accuracy, "
        "eval-accuracy, eval_acc, eval_accuracy or acc, the first reported)",
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
        help="require and check the connecting peer's certificate (the default with "
        "--certificates)",
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
    node.set_defaults(handler=_node_main, mutual_tls=None)
    node.add_argument(
        "--no-mutual-tls",
        dest="mutual_tls",
        action="store_false",
        help="with certificates, do not require client certificates (prints a warning)",
    )

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


def _node_main(args: argparse.Namespace) -> int:
    from relayfl.node.shell import node_main

    return node_main(args)


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


# ------------------------------------------------------------------------------- launch
def launch_main(args: argparse.Namespace) -> int:
    from relayfl.config import RunConfig
    from relayfl.launch import Launcher, LaunchOptions
    from relayfl.node.shell import INSECURE_BANNER, run_token

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
        token=run_token(args),
        step_timeout=args.step_timeout,
        dead_after=args.dead_after,
        heartbeat=args.heartbeat,
        startup_timeout=args.startup_timeout,
        checkpoint_every=args.checkpoint_every,
        client=args.client,
        initial=args.initial,
        run_config=args.run_config,
        threads=args.threads or 1,
        kills=kills,
        resume_after=args.resume_after,
        quiet=args.quiet,
        run_name=args.run_name,
    )
    if args.insecure:
        print(f"relayfl launch: {INSECURE_BANNER}", file=sys.stderr)
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
