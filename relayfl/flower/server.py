"""RelaySGD on Flower's runtime: a ``ServerApp`` that only forwards.

Flower's SuperNodes can only answer the SuperLink (a star), so on Flower's runtime the
tree neighbours' messages go through the ``ServerApp``. Its only job is forwarding:
each node's ``relayfl.to.<j>.<k>`` reply record is put, as it is, into node ``j``'s next
message. The server never reads the arrays and never averages (a test checks that every
forwarded payload is byte-identical to what the sender replied). Every exchange of a
round passes through the SuperLink, two hops; ``relayfl node`` is the serverless mode.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from relayfl.config import RunConfig
from relayfl.errors import ConfigError
from relayfl.flower import protocol
from relayfl.flower.client import RelayClientApp, describe_client
from relayfl.flower.inputs import load_initial
from relayfl.flower.peer import PEER_ALGORITHMS
from relayfl.flower.records import config_record
from relayfl.flower.runtime import CountingGrid, FlowerRunError, check_replies, run_simulation
from relayfl.flower.trainers import NO_INITIAL, can_give_initial
from relayfl.results import RunResult

__all__ = ["relay_app", "relay_server_app", "run_relay", "run_relay_simulation"]

#: ``run_config`` keys that are relayfl's own settings (not passed on to the clients).
_RELAYFL_KEYS = frozenset(f.name.replace("_", "-") for f in fields(RunConfig)) | {
    "clients",
    "out",
    "initial",
    "initial-file",
    "client-run-config",
}

#: Seconds to wait for one round's replies (a deployed SuperNode starts a process per
#: message, about 10 s on loopback).
DEFAULT_ROUND_TIMEOUT = 600.0


def run_relay(
    grid: Grid,
    config: RunConfig,
    *,
    initial_arrays: ArrayRecord | str | None = None,
    fit_config: Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None = None,
    run_config: Mapping[str, Any] | None = None,
    return_models: bool = True,
    timeout: float = DEFAULT_ROUND_TIMEOUT,
    node_timeout: float = 120.0,
    poll_interval: float = 0.05,
    runtime: str = "flower",
    started: float | None = None,
    client_name: str | None = None,
) -> RunResult:
    """The forwarding server's main loop: hello, then one exchange per relay round.

    Call it from your own ``ServerApp`` ``main`` to relay between your ClientApps
    (:class:`relayfl.flower.RelayClientApp`).

    Parameters
    ----------
    grid : Grid
        The ``grid`` a ``ServerApp``'s ``main`` receives.
    config : RunConfig
        Algorithm (``relaysgd``, ``relaysgd-grad``, ``dpsgd``), topology, number of
        clients (= SuperNodes), steps and local steps, evaluation period. Sent to every
        node in each message's ``ConfigRecord`` (``context.run_config`` is empty under
        ``run_simulation``).
    initial_arrays : ArrayRecord or {"node-0", "own"}, optional
        The shared initial model, sent with round 1. Default ``"node-0"``: a handshake
        (``query.relayfl_hello``) first, in which node 0's client gives its
        ``get_parameters``, forwarded to everyone. ``"own"``: every node starts from
        its own initial model (a seeded model, as relayfl's ready clients; the nodes
        report a checksum, which must agree), which saves the handshake.
    fit_config : mapping or callable ``server_round -> mapping``, optional
        Extra entries of each ``fit`` config.
    run_config : mapping, optional
        The clients' ``context.run_config`` (carried in every message, merged into the
        nodes' own; :func:`relayfl.flower.protocol.client_run_config`).
    return_models : bool (default: True)
        The nodes send their final models (for ``RunResult.models``).
    timeout : float
        Seconds to wait for each round's replies.
    node_timeout : float
        Seconds to wait for ``config.num_clients`` nodes to connect.
    poll_interval : float
        Seconds between polls for replies.
    runtime : str
        Recorded as ``RunResult.engine`` (``flower-simulation``, ``flower-deployment``).
    started : float, optional
        ``time.perf_counter()`` the run's ``wall_s`` counts from (default: now).
    client_name : str, optional
        The user's client (``module:name``), recorded as the task name.

    Returns
    -------
    RunResult
        One evaluation per evaluation round (every node evaluates its own model),
        bytes of the arrays each node sent to and received from the server.

    Raises
    ------
    FlowerRunError
        On any error reply, a missing reply, or nodes reporting wrong partition ids.
    """
    started = time.perf_counter() if started is None else started
    if config.algorithm not in PEER_ALGORITHMS:
        raise FlowerRunError(
            f"the forwarding ServerApp runs {', '.join(PEER_ALGORITHMS)}, not "
            f"{config.algorithm!r}; use relayfl.flower.run_fedavg for FedAvg or "
            "relayfl simulate for the other baselines"
        )
    if config.drop_probability > 0:
        raise FlowerRunError(
            "drop-probability is simulated by relayfl's simulator only; on Flower every "
            "message is delivered. Use drop_probability=0"
        )
    protocol.num_rounds(config)  # check early
    n = config.num_clients
    cgrid = CountingGrid(grid, poll_interval=poll_interval)
    node_ids = cgrid.wait_for_nodes(n, timeout=node_timeout)
    if len(node_ids) != n:
        raise FlowerRunError(
            f"{len(node_ids)} SuperNodes are connected but the run has num_clients={n}; "
            f"start exactly {n} SuperNodes or set num_clients={len(node_ids)}"
        )
    pid_of: dict[int, int] = {}  # node id -> partition id (nodes report it)

    def learn_partitions(replies: list[Message], where: str) -> None:
        for m in replies:
            content = m.content["config"] if where == "hello" else m.content["metrics"]
            pid_of[m.metadata.src_node_id] = int(content["partition-id"])
        if sorted(pid_of.values()) != list(range(n)):
            raise FlowerRunError(
                f"the SuperNodes report partition ids {sorted(pid_of.values())}, expected "
                f"0..{n - 1} once each; start node i with --node-config "
                f"'partition-id=i num-partitions={n}'"
            )

    x0: ArrayRecord | None
    if isinstance(initial_arrays, ArrayRecord) or initial_arrays == "own":
        x0 = initial_arrays if isinstance(initial_arrays, ArrayRecord) else None
    elif initial_arrays in (None, "node-0"):  # node 0's client gives it, in a handshake
        user = config_record(protocol.client_run_config(config, run_config))
        hello = [
            Message(
                RecordDict(
                    {
                        "config": ConfigRecord({**config.to_flower(), "send-initial": True}),
                        protocol.RUN_CONFIG: user,
                    }
                ),
                dst_node_id=node,
                message_type=protocol.HELLO,
                group_id="0",
            )
            for node in node_ids
        ]
        replies = check_replies(cgrid.send_and_receive(hello, timeout=timeout), node_ids, "hello")
        learn_partitions(replies, "hello")
        x0 = next(m.content[protocol.X0] for m in replies if pid_of[m.metadata.src_node_id] == 0)
    else:
        raise FlowerRunError(
            f"initial_arrays must be an ArrayRecord, 'node-0' or 'own', got {initial_arrays!r}"
        )
    recorder = protocol.RelayRecorder(config, started, client=client_name)
    forwarded = 0

    def exchange(rnd: int, contents: dict[int, RecordDict]) -> dict[int, RecordDict]:
        nonlocal forwarded
        # Before the nodes reported their partition ids, round 1 goes out in node order:
        # its messages are the same for every partition (settings and x0 only).
        node_of = {p: node for node, p in pid_of.items()} or dict(enumerate(node_ids))
        msgs = [
            Message(
                contents[p],
                dst_node_id=node_of[p],
                message_type=protocol.ROUND,
                group_id=str(rnd),
            )
            for p in range(n)
        ]
        forwarded += sum(
            1 for c in contents.values() for k in c.array_records if k.startswith("relayfl.from.")
        )
        got = check_replies(
            cgrid.send_and_receive(msgs, timeout=timeout),
            [node_of[p] for p in range(n)],
            f"round {rnd}",
        )
        if not pid_of:
            learn_partitions(got, "round")
        for node, p in pid_of.items():
            recorder.sent[p] = cgrid.sent.get(node, 0)
            recorder.received[p] = cgrid.received.get(node, 0)
        return {pid_of[m.metadata.src_node_id]: m.content for m in got}

    models, layout = protocol.relay_rounds(
        config,
        exchange,
        x0=x0,
        fit_config=fit_config,
        return_models=return_models,
        recorder=recorder,
        run_config=run_config,
    )
    return recorder.result(
        engine=runtime,
        models=models,
        layout=layout,
        extra={
            "runtime": runtime,
            "server": "forwarding ServerApp (no averaging)",
            "forwarded_messages": forwarded,
            "node_ids": sorted(pid_of, key=pid_of.__getitem__),
        },
    )


def relay_server_app(
    config: RunConfig | None = None,
    *,
    initial_arrays: ArrayRecord | str | None = None,
    fit_config: Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None = None,
    run_config: Mapping[str, Any] | None = None,
    on_result: Callable[[RunResult], None] | None = None,
    out: str | None = None,
    **kwargs: Any,
) -> ServerApp:
    """A Flower ``ServerApp`` that relays between :class:`RelayClientApp` nodes.

    Parameters
    ----------
    config : RunConfig, optional
        Default: ``RunConfig.from_flower(context.run_config)`` (``flwr run`` with
        ``[tool.flwr.app.config]`` / ``--run-config``).
    initial_arrays, fit_config
        See :func:`run_relay`; default: ``context.run_config["initial"]`` when set.
    run_config : mapping, optional
        The clients' ``context.run_config``; default: the ServerApp's own
        ``context.run_config`` (``flwr run``) less relayfl's keys.
    on_result : callable, optional
        Called with the :class:`RunResult` at the end (``run_simulation`` returns None).
    out : str, optional
        Save the result there (``results.json``); default: ``context.run_config["out"]``
        when set.
    **kwargs
        Passed to :func:`run_relay` (``timeout``, ``return_models``, ...).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = config if config is not None else RunConfig.from_flower(context.run_config)
        rc = context.run_config
        init = initial_arrays
        if init is None and rc.get("initial-file"):  # flwr run: a Message-API app's model
            init = load_initial(str(rc["initial-file"]))
        if init is None:  # flwr run: --run-config 'initial="own"' skips the handshake
            init = str(rc.get("initial", "")) or None
        user = {k: v for k, v in rc.items() if k not in _RELAYFL_KEYS}
        if rc.get("client-run-config"):
            user.update(json.loads(str(rc["client-run-config"])))
        user.update(run_config or {})
        result = run_relay(
            grid, cfg, initial_arrays=init, fit_config=fit_config, run_config=user, **kwargs
        )
        target = out or context.run_config.get("out")
        if target:
            result.save(str(target))
        if on_result is not None:
            on_result(result)

    return app


def relay_app(client_app: ClientApp, initial_arrays: ArrayRecord | str | None) -> RelayClientApp:
    """``client_app`` as a :class:`RelayClientApp` (any ``ClientApp`` is wrapped, not
    changed), checked before any process starts.

    Raises
    ------
    ConfigError
        When the app has no training, or is a Message-API app and ``initial_arrays`` is
        not an ``ArrayRecord`` (:data:`relayfl.flower.trainers.NO_INITIAL`).
    """
    if not isinstance(client_app, ClientApp):
        raise ConfigError(
            f"expected a Flower ClientApp, got {type(client_app).__name__}; wrap a "
            "client_fn as RelayClientApp(client_fn=client_fn)"
        )
    app = client_app if isinstance(client_app, RelayClientApp) else RelayClientApp(app=client_app)
    trainer = app.trainer  # raises when there is no training
    if not isinstance(initial_arrays, ArrayRecord) and not can_give_initial(trainer):
        raise ConfigError(NO_INITIAL)
    return app


def run_relay_simulation(
    client_app: ClientApp,
    config: RunConfig | None = None,
    *,
    initial_arrays: ArrayRecord | str | None = None,
    fit_config: Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None = None,
    run_config: Mapping[str, Any] | None = None,
    client_resources: Mapping[str, float] | None = None,
    quiet: bool = False,
    **kwargs: Any,
) -> RunResult:
    """RelaySGD on Flower's simulation engine: ``config.num_clients`` SuperNodes
    running ``client_app`` and the forwarding ``ServerApp``.

    Parameters
    ----------
    client_app : ClientApp
        E.g. ``clients.digits.app``, ``RelayClientApp(client_fn=...)``, or any Flower
        ``ClientApp`` (run unchanged inside ``RelayClientApp(app=client_app)``).
    config : RunConfig, optional
    initial_arrays, fit_config, run_config
        See :func:`run_relay`. A Message-API ``ClientApp`` cannot give the initial
        model: pass ``initial_arrays=ArrayRecord(...)``.
    client_resources : mapping, optional
        Ray resources per ClientApp (default 1 CPU).
    quiet : bool (default: False)
        Show only Flower's warnings.
    **kwargs
        Passed to :func:`run_relay`.

    Returns
    -------
    RunResult
        ``engine="flower-simulation"``; ``wall_s`` counts from this call (Ray start
        included).

    Raises
    ------
    ConfigError
        Before Ray starts: the app has no training, or no initial model can be had.
    FlowerRunError
        A node failed (its error, as Flower reports it).
    """
    config = config or RunConfig()
    started = time.perf_counter()
    app = relay_app(client_app, initial_arrays)
    holder: list[RunResult] = []
    server = relay_server_app(
        config,
        initial_arrays=initial_arrays,
        fit_config=fit_config,
        run_config=run_config,
        on_result=holder.append,
        runtime="flower-simulation",
        started=started,
        client_name=describe_client(client_app),
        **kwargs,
    )
    run_simulation(server, app, config.num_clients, client_resources=client_resources, quiet=quiet)
    if not holder:
        raise FlowerRunError(
            "Flower's simulation finished without a result from the ServerApp; see the "
            "Flower log above"
        )
    result = holder[0]
    result.wall_s = time.perf_counter() - started
    return result
