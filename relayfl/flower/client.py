"""Any Flower client as a relay worker.

* :func:`node_step` is one relay round of one node around the client's trainer
  (:mod:`relayfl.flower.trainers`: a ``client_fn``, Message-API functions, any
  ``ClientApp``): finish the last average, evaluate, train, send.
* :class:`RelayClientApp` is a Flower ``ClientApp`` built around either. It answers
  relayfl's relay messages (``query.relayfl_hello``, ``query.relayfl_round``) and,
  built from a ``client_fn``, also Flower's ``train`` / ``evaluate`` messages, so the
  same app runs RelaySGD through :func:`relayfl.flower.relay_server_app` and FedAvg
  through Flower's own strategy.
* :func:`simulate_clients` runs the relay in one process: the same node code, the
  same routing, no Flower runtime.

Node state that persists between rounds (the relay buffers, the shared initial model)
lives in ``context.state``: in deployment each message may start a fresh process.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    RecordDict,
)
from flwr.clientapp import ClientApp

from relayfl import divergence, topology
from relayfl.config import RunConfig
from relayfl.errors import ConfigError, DivergenceError
from relayfl.flower import protocol
from relayfl.flower.peer import PeerMixer
from relayfl.flower.records import (
    arrays_to_flat,
    client_metrics,
    flat_to_arrays,
    metric_record,
    record_to_tensors,
    scalar,
    tensors_to_record,
)
from relayfl.flower.trainers import (
    ACCURACY_KEYS,
    LOSS_KEYS,
    NO_INITIAL,
    TRAIN_LOSS_KEYS,
    ClientFn,
    Handler,
    MessageTrainer,
    NumPyClientTrainer,
    Trainer,
    WithInitial,
    accuracy_of,
    app_trainer,
    as_trainer,
    can_give_initial,
    keyed_call,
    partition_of,
)
from relayfl.results import RunResult

__all__ = [
    "ACCURACY_KEYS",
    "ClientFn",
    "MessageTrainer",
    "NumPyClientTrainer",
    "RelayClientApp",
    "Trainer",
    "as_trainer",
    "node_step",
    "partition_of",
    "simulate_clients",
]

#: Keys of relayfl's node state in ``context.state``.
STATE_X0 = "relayfl.x0"
STATE_PEER = "relayfl.peer"
STATE_LOCAL = "relayfl.local"
RUN_CONFIG, FIT_METRICS, EVALUATE_METRICS = (
    protocol.RUN_CONFIG,
    protocol.FIT_METRICS,
    protocol.EVALUATE_METRICS,
)


def node_step(
    trainer: Trainer,
    context: Context,
    config: Mapping[str, Any],
    records: Mapping[str, ArrayRecord],
) -> RecordDict:
    """One relay round of one node: finish the last average, evaluate, train, send.

    Parameters
    ----------
    trainer : Trainer
    context : Context
        The node's context; ``context.state`` carries the relay state between rounds.
    config : mapping
        The round's settings (``RunConfig.to_flower()`` plus ``server-round``,
        ``num-rounds``, ``evaluate``, ``final``, ``return-model``).
    records : mapping of str to ArrayRecord
        ``relayfl.x0`` (round 1) and the neighbours' messages ``relayfl.from.<j>.<k>``.

    Returns
    -------
    RecordDict
        ``relayfl.to.<j>.<k>`` per neighbour and ``metrics``; with ``final`` only
        ``metrics`` (and the model as ``arrays`` when ``return-model``).
    """
    rc = RunConfig.from_flower(config)
    pid, _ = partition_of(context)
    if not 0 <= pid < rc.num_clients:
        raise ConfigError(
            f"partition-id {pid} is outside 0..{rc.num_clients - 1}; start exactly "
            f"{rc.num_clients} SuperNodes with partition ids 0..{rc.num_clients - 1}"
        )
    rnd = int(config["server-round"])
    state = context.state
    if protocol.X0 in records:
        state[STATE_X0] = records[protocol.X0]
    elif rnd == 1 and config.get("initial") == "own":
        state[STATE_X0] = trainer.initial_arrays(config, context)
    if STATE_X0 not in state:
        raise ConfigError(
            f"node {pid} got round {rnd} without the initial model; "
            "every node must take part from round 1"
        )
    x0_record: ArrayRecord = state[STATE_X0]  # type: ignore[assignment]
    x0, layout = arrays_to_flat(x0_record)
    graphs = topology.build(
        rc.topology_name, rc.num_clients, root=rc.root, spanning=rc.spanning_tree
    )
    peer = PeerMixer(rc.algorithm, graphs, pid, x0, fill=rc.fill, normalization=rc.normalization)
    like: ArrayRecord = state.get(STATE_LOCAL, x0_record)  # type: ignore[assignment]
    if rnd == 1:
        x = x0
    else:
        peer.load_state_dict(record_to_tensors(state[STATE_PEER]))  # type: ignore[arg-type]
        incoming = {}
        for name, rec in records.items():
            key = protocol.parse_key(name)
            if key is not None and key[0] == "from":
                m = torch.from_numpy(rec["m"].numpy())
                incoming[(key[2], key[1])] = (m, float(rec["c"].numpy()[0]))
        x = peer.receive(incoming)  # [d]
    arrays = flat_to_arrays(x, layout, like)
    metrics: dict[str, Any] = {"partition-id": pid}
    if rnd == 1:
        metrics["x0-checksum"] = protocol.checksum(x0_record)
    client_config = {k: v for k, v in config.items() if k not in ("final", "return-model")}
    out = RecordDict()
    if config.get("evaluate"):
        ev = trainer.evaluate(arrays, client_config, context)
        metrics["eval-accuracy"] = accuracy_of(ev, rc.accuracy_key)
        metrics["eval-loss"] = scalar(ev, LOSS_KEYS)
        out[EVALUATE_METRICS] = client_metrics(ev)
    if config.get("final"):
        out["metrics"] = metric_record(metrics)
        if config.get("return-model"):
            out[protocol.FINAL] = arrays
        return out
    fit_config = {**client_config, "local-steps": rc.local_steps}
    new_arrays, fit_metrics = trainer.fit(arrays, fit_config, context)
    x_half, _ = arrays_to_flat(new_arrays)
    message = divergence.check_params(  # on Flower paths only non-finite arrays count
        x_half,
        math.inf,
        step=rnd,
        names="node",
        first=pid,
        unit="round",
        fix="fit returned non-finite arrays; lower the client's learning rate",
    )
    if message:
        raise DivergenceError(message)
    out[FIT_METRICS] = client_metrics(fit_metrics)
    outbox = peer.send(x, x_half.to(x.dtype))
    state[STATE_PEER] = tensors_to_record(peer.state_dict())
    if layout.local:  # integer arrays are never relayed: keep this node's own
        state[STATE_LOCAL] = new_arrays
    for (k, j), (m, c) in outbox.items():
        out[protocol.to_key(j, k)] = ArrayRecord(
            {
                "m": Array(np.ascontiguousarray(m.detach().cpu().numpy())),
                "c": Array(np.array([c], dtype=np.float64)),
            }
        )
    metrics.update(
        {
            "num-examples": int(fit_metrics.get("num-examples", 0)),
            "train-loss": scalar(fit_metrics, TRAIN_LOSS_KEYS),
            protocol.STEPS_KEY: scalar(fit_metrics, (protocol.STEPS_KEY,)),
        }
    )
    lr = scalar(fit_metrics, ("lr",))
    if math.isnan(lr):
        lr = scalar(config, ("round-lr",))
    if not math.isnan(lr):
        metrics["lr"] = lr
    out["metrics"] = metric_record(metrics)
    return out


class RelayClientApp(ClientApp):
    """A Flower ``ClientApp`` that runs as a relay worker (and still speaks FedAvg).

    Build it around a ``client_fn`` (NumPyClient), around any ``ClientApp`` you have
    (``app=``), or register Message-API functions with its ``@app.train()`` /
    ``@app.evaluate()`` decorators, exactly as on Flower's ``ClientApp``. Besides
    Flower's own ``train`` / ``evaluate`` messages it answers ``query.relayfl_hello``
    (reports the node's partition id, and node 0's initial model) and
    ``query.relayfl_round`` (one relay round, :func:`node_step`). relayfl's messages
    carry the user's ``run_config`` (record ``relayfl.run-config``), which is merged
    into ``context.run_config`` before the client is called.

    Parameters
    ----------
    client_fn : callable, optional
        ``client_fn(context) -> NumPyClient | Client``.
    app : ClientApp, optional
        A Flower ``ClientApp`` (``ClientApp(client_fn=...)`` or one with
        ``@app.train()`` / ``@app.evaluate()``), called unchanged.
    initial_arrays : ArrayRecord, optional
        The model node 0 gives as the initial model (default: the client's
        ``get_parameters``; a Message-API app has none, see :data:`NO_INITIAL`).
    mods : list, optional
        Flower mods, applied to every handler.

    Examples
    --------
    From a NumPyClient::

        app = RelayClientApp(client_fn=lambda context: MyClient().to_client())

    From a Flower ``ClientApp`` you already have::

        app = RelayClientApp(app=my_client_app, initial_arrays=ArrayRecord(Net().state_dict()))

    With the Message API::

        app = RelayClientApp()

        @app.train()
        def train(msg: Message, context: Context) -> Message:
            ...  # msg.content["arrays"], msg.content["config"]["round-lr"]
            return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
    """

    def __init__(
        self,
        client_fn: ClientFn | None = None,
        *,
        app: ClientApp | None = None,
        initial_arrays: ArrayRecord | None = None,
        mods: list | None = None,
    ) -> None:
        super().__init__(mods=mods)
        if client_fn is not None and app is not None:
            raise ConfigError("pass either client_fn= or app= to RelayClientApp, not both")
        self._numpy = NumPyClientTrainer(client_fn) if client_fn is not None else None
        self._app = app
        self._initial = initial_arrays
        self._train_fn: Handler | None = None
        self._evaluate_fn: Handler | None = None
        if self._numpy is not None or app is not None:
            super().train()(self._flower_train)
            super().evaluate()(self._flower_evaluate)
        super().query("relayfl_hello")(self._hello)
        super().query("relayfl_round")(self._round)

    # Flower's decorators, remembering the default handlers the relay calls
    def train(self, action: str = "default", *, mods: list | None = None) -> Callable:
        register = super().train(action, mods=mods)

        def decorator(fn: Handler) -> Handler:
            if self._numpy is not None or self._app is not None:
                raise ConfigError(
                    "this RelayClientApp wraps a client_fn or an app; use either that or "
                    "@app.train(), not both (as Flower's ClientApp)"
                )
            if action == "default":
                self._train_fn = fn
            return register(fn)

        return decorator

    def evaluate(self, action: str = "default", *, mods: list | None = None) -> Callable:
        register = super().evaluate(action, mods=mods)

        def decorator(fn: Handler) -> Handler:
            if action == "default":
                self._evaluate_fn = fn
            return register(fn)

        return decorator

    @property
    def trainer(self) -> Trainer:
        """The client's training, as the relay calls it."""
        if self._numpy is not None:
            if self._initial is None:
                return self._numpy
            return WithInitial(self._numpy, self._initial)
        if self._app is not None:
            return app_trainer(self._app, self._initial)
        if self._train_fn is None:
            raise ConfigError(
                "RelayClientApp has no training: pass client_fn=... or app=..., or "
                "register a function with @app.train()"
            )
        return MessageTrainer(self._train_fn, self._evaluate_fn, self._initial)

    # -------------------------------------------------------------- Flower messages
    def _flower_train(self, msg: Message, context: Context) -> Message:
        with use_run_config(context, msg.content):
            msg = self._strip(msg)
            if self._app is not None and getattr(self._app, "_call", None) is None:
                with keyed_call(_config_of(msg), context, "fit"):
                    return _tagged(self._app(msg, context), context, {})  # the app, unchanged
            record, config = _arrays_and_config(msg)
            new, metrics = self.trainer.fit(record, config, context)
        reply = Message(
            RecordDict({"arrays": new, "metrics": metric_record(metrics)}), reply_to=msg
        )
        return _tagged(reply, context, metrics)

    def _flower_evaluate(self, msg: Message, context: Context) -> Message:
        with use_run_config(context, msg.content):
            msg = self._strip(msg)
            if self._app is not None and getattr(self._app, "_call", None) is None:
                with keyed_call(_config_of(msg), context, "evaluate"):
                    return self._app(msg, context)
            record, config = _arrays_and_config(msg)
            metrics = self.trainer.evaluate(record, config, context)
        return Message(RecordDict({"metrics": metric_record(metrics)}), reply_to=msg)

    @staticmethod
    def _strip(msg: Message) -> Message:
        """The message without relayfl's run-config record (the user's functions see
        Flower's own records only)."""
        if RUN_CONFIG not in msg.content:
            return msg
        content = RecordDict({k: v for k, v in msg.content.items() if k != RUN_CONFIG})
        return Message(content=content, metadata=msg.metadata)

    # -------------------------------------------------------------- relay messages
    def _hello(self, msg: Message, context: Context) -> Message:
        config = dict(msg.content["config"]) if "config" in msg.content else {}
        pid, num = partition_of(context)
        out = RecordDict({"config": ConfigRecord({"partition-id": pid, "num-partitions": num})})
        if config.get("send-initial") and pid == 0:
            with use_run_config(context, msg.content):
                out[protocol.X0] = self.trainer.initial_arrays(config, context)
        return Message(out, reply_to=msg)

    def _round(self, msg: Message, context: Context) -> Message:
        config = dict(msg.content["config"])
        records = dict(msg.content.array_records)
        with use_run_config(context, msg.content):
            out = node_step(self.trainer, context, config, records)
        return Message(out, reply_to=msg)


def _tagged(reply: Message, context: Context, metrics: Mapping[str, Any]) -> Message:
    """A ``train`` reply under Flower's FedAvg, with the node's partition id and every
    metric the client reported (a ``MetricRecord`` cannot hold str, bool or bytes) in
    ConfigRecords beside Flower's records, which FedAvg leaves alone."""
    if reply.has_error() or "partition-id" not in context.node_config:
        return reply
    reply.content[protocol.PARTITION] = ConfigRecord({"partition-id": partition_of(context)[0]})
    if metrics:
        reply.content[FIT_METRICS] = client_metrics(metrics)
    return reply


def _arrays_and_config(msg: Message) -> tuple[ArrayRecord, dict[str, Any]]:
    """The model and config of a Flower ``train`` / ``evaluate`` instruction."""
    arrays = msg.content.array_records
    record = arrays["arrays"] if "arrays" in arrays else next(iter(arrays.values()))
    return record, _config_of(msg)


def _config_of(msg: Message) -> dict[str, Any]:
    return dict(msg.content["config"]) if "config" in msg.content else {}


@contextlib.contextmanager
def use_run_config(context: Context, content: RecordDict) -> Iterator[None]:
    """Within the block, ``context.run_config`` holds the user's run config carried by
    a relayfl message (over Flower's own values, from ``flwr run``); restored after,
    as Flower's SuperNode refuses a changed ``run_config``."""
    if RUN_CONFIG not in content:
        yield
        return
    saved = context.run_config
    context.run_config = protocol.UserRunConfig({**dict(saved), **dict(content[RUN_CONFIG])})
    try:
        yield
    finally:
        context.run_config = saved


def _count(records: Mapping[str, Any]) -> int:
    return sum(r.count_bytes() for r in records.values() if isinstance(r, ArrayRecord))


def simulate_clients(
    client: ClientFn | ClientApp | Trainer,
    config: RunConfig | None = None,
    *,
    initial_arrays: ArrayRecord | str | None = None,
    fit_config: Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None = None,
    run_config: Mapping[str, Any] | None = None,
    return_models: bool = True,
) -> RunResult:
    """Run the relay over Flower clients in this process (no Flower runtime).

    Every worker runs :func:`node_step` with its own ``Context`` (partition id in
    ``node_config``, ``run_config``, state in ``context.state``), and the messages are
    routed exactly as the forwarding ``ServerApp`` routes them, so this is the same
    computation as :func:`relayfl.flower.run_relay_simulation` without Ray or a
    SuperLink.

    Parameters
    ----------
    client : client_fn, ClientApp or Trainer
        ``client_fn(context) -> NumPyClient`` (its ``fit`` and ``evaluate`` are called
        directly), a :class:`RelayClientApp`, or any Flower ``ClientApp`` (called with
        Flower's messages, :func:`app_trainer`).
    config : RunConfig, optional
        Algorithm (``relaysgd``, ``relaysgd-grad``, ``dpsgd``), topology, clients,
        ``steps`` / ``local_steps`` (rounds = steps / local_steps), ``eval_every``.
    initial_arrays : ArrayRecord or {"node-0", "own"}, optional
        The shared initial model; default (``"node-0"``): worker 0's
        ``get_parameters``, sent to every worker; ``"own"``: each worker's own (they
        must agree, e.g. a seeded model; checked). A Message-API ``ClientApp`` needs an
        ``ArrayRecord`` here.
    fit_config : mapping or callable ``server_round -> mapping``, optional
        Extra entries of each ``fit`` config (Flower's ``on_fit_config_fn``).
    run_config : mapping, optional
        The clients' ``context.run_config`` (e.g. ``{"local-epochs": 1}``).
    return_models : bool (default: True)
        Keep every worker's final flat model in ``RunResult.models``.

    Returns
    -------
    RunResult
        ``engine="client-adapter"``; ``extra["client_metrics"]``: every metric each
        client reported, per round (:mod:`relayfl.flower.protocol`).

    Raises
    ------
    ConfigError
        Before any training, when the initial model cannot be had (see
        :data:`NO_INITIAL`) or ``initial_arrays`` is not one of the above.
    """
    config = config or RunConfig()
    started = time.perf_counter()
    trainer = as_trainer(client)
    n = config.num_clients
    user_config = protocol.client_run_config(config, run_config)
    contexts = [protocol.partition_context(p, n, user_config) for p in range(n)]
    x0: ArrayRecord | None
    if isinstance(initial_arrays, ArrayRecord):
        x0 = initial_arrays
    elif initial_arrays in (None, "node-0", "own"):
        if not can_give_initial(trainer):
            raise ConfigError(NO_INITIAL)
        x0 = (
            None
            if initial_arrays == "own"
            else trainer.initial_arrays(config.to_flower(), contexts[0])
        )
    else:
        raise ConfigError(
            f"initial_arrays must be an ArrayRecord, 'node-0' or 'own', got {initial_arrays!r}"
        )
    recorder = protocol.RelayRecorder(config, started, client=describe_client(client))

    def exchange(rnd: int, contents: dict[int, RecordDict]) -> dict[int, RecordDict]:
        replies = {}
        for p in range(n):
            recorder.received[p] += _count(contents[p])
            cfg = dict(contents[p]["config"])
            records = dict(contents[p].array_records)
            replies[p] = node_step(trainer, contexts[p], cfg, records)
            recorder.sent[p] += _count(replies[p])
        return replies

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
        engine="client-adapter",
        models=models,
        layout=layout,
        extra={"runtime": "in-process", "server": "none"},
    )


def describe_client(client: Any) -> str:
    """``module:name`` of the user's client (recorded as the task name in results)."""
    inner = getattr(client, "_numpy", None)
    fn = getattr(inner, "client_fn", None) or getattr(client, "client_fn", None) or client
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}:{name}"
