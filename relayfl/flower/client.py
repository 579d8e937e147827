"""Any Flower client as a relay worker.

* :class:`NumPyClientTrainer` adapts a ``client_fn(context)`` that returns a
  ``NumPyClient`` (or a ``Client``): each round the client's ``fit`` trains from the
  current model with ``local-steps`` in its ``config``, and ``evaluate`` is called on
  evaluation rounds. In process the adapter calls ``fit`` / ``evaluate`` directly.
* :class:`MessageTrainer` does the same for Message-API ``@app.train()`` /
  ``@app.evaluate()`` functions.
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
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import numpy as np
import torch
from flwr.app import (
    DEFAULT_TTL,
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    Metadata,
    RecordDict,
)
from flwr.client import Client, NumPyClient
from flwr.clientapp import ClientApp

from relayfl import divergence, rng, topology
from relayfl.config import RunConfig
from relayfl.errors import ConfigError, DivergenceError
from relayfl.flower import protocol
from relayfl.flower.peer import PeerMixer
from relayfl.flower.records import (
    arrays_to_flat,
    check_like,
    client_metrics,
    flat_to_arrays,
    metric_record,
    ndarrays_to_record,
    record_to_ndarrays,
    record_to_tensors,
    scalar,
    tensors_to_record,
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

#: Flower's ``client_fn``: ``Context -> Client`` (or a ``NumPyClient``).
ClientFn = Callable[[Context], "Client | NumPyClient"]
#: Flower's Message-API handler: ``(Message, Context) -> Message``.
Handler = Callable[[Message, Context], Message]

#: Keys of relayfl's node state in ``context.state``.
STATE_X0 = "relayfl.x0"
STATE_PEER = "relayfl.peer"
STATE_LOCAL = "relayfl.local"
RUN_CONFIG, FIT_METRICS, EVALUATE_METRICS = (
    protocol.RUN_CONFIG,
    protocol.FIT_METRICS,
    protocol.EVALUATE_METRICS,
)

#: Metric names read as the test accuracy, in this order, on every path (Flower's
#: quickstarts use ``accuracy`` and ``eval_acc``); ``RunConfig``-independent.
ACCURACY_KEYS: tuple[str, ...] = ("accuracy", "eval-accuracy", "eval_acc", "eval_accuracy", "acc")
log = logging.getLogger("relayfl.flower")
_UNREPORTED: set[tuple[str, ...]] = set()  # metric names already warned about


def accuracy_of(metrics: Mapping[str, Any], key: str | None = None) -> float:
    """The test accuracy in a client's ``evaluate`` metrics.

    ``key`` (``RunConfig.accuracy_key``) names the metric; by default the first of
    :data:`ACCURACY_KEYS` the client reports. No accuracy is NaN (``null`` in
    ``results.json``), with one warning per set of reported names.

    Raises
    ------
    ConfigError
        ``key`` is given and the client did not report it.
    """
    reported = sorted(k for k in metrics if k != "num-examples")
    if key is not None:
        if key not in metrics:
            raise ConfigError(
                f"the client's evaluate reported no {key!r} (it reported: "
                f"{', '.join(reported) or 'nothing'}); name one of those with --accuracy-key "
                "(accuracy_key= in Python)"
            )
        return float(metrics[key])
    value = scalar(metrics, ACCURACY_KEYS)
    if math.isnan(value) and tuple(reported) not in _UNREPORTED:
        _UNREPORTED.add(tuple(reported))
        log.warning(
            "the client's evaluate reported no accuracy (it reported: %s); accuracy is "
            "null; name the metric with --accuracy-key (accuracy_key= in Python)",
            ", ".join(reported) or "nothing",
        )
    return value


#: Metric names read as the test loss (``evaluate``'s returned loss is ``loss``).
LOSS_KEYS: tuple[str, ...] = ("loss", "eval-loss", "eval_loss")
#: Metric names read as the training loss of ``fit``.
TRAIN_LOSS_KEYS: tuple[str, ...] = ("train-loss", "train_loss", "loss")


class Trainer(Protocol):
    """What a relay worker needs from the user's client: initial model, fit, evaluate.

    ``fit`` returns the new arrays and metrics holding ``num-examples``; ``evaluate``
    returns metrics holding ``loss`` and, when the client reports one, ``accuracy``.
    """

    def initial_arrays(self, config: Mapping[str, Any], context: Context) -> ArrayRecord: ...

    def fit(
        self, arrays: ArrayRecord, config: Mapping[str, Any], context: Context
    ) -> tuple[ArrayRecord, dict[str, Any]]: ...

    def evaluate(
        self, arrays: ArrayRecord, config: Mapping[str, Any], context: Context
    ) -> dict[str, Any]: ...


class NumPyClientTrainer:
    """A ``client_fn(context)`` returning a ``NumPyClient`` or ``Client``, as a trainer.

    A fresh client is built for every call, as Flower does for every message.

    Parameters
    ----------
    client_fn : callable
        ``client_fn(context) -> NumPyClient | Client``.
    """

    def __init__(self, client_fn: ClientFn) -> None:
        if not callable(client_fn):
            raise ConfigError(
                f"client_fn must be callable as client_fn(context), got "
                f"{type(client_fn).__name__}; pass e.g. lambda context: MyClient()"
            )
        self.client_fn = client_fn

    def client(self, context: Context) -> NumPyClient | Client:
        """The user's client for this call (a ``to_client()`` wrapper is unwrapped)."""
        client = self.client_fn(context)
        inner = getattr(client, "numpy_client", None)  # NumPyClient.to_client() wrapper
        if isinstance(inner, NumPyClient):
            return inner
        if not isinstance(client, NumPyClient | Client):
            raise ConfigError(
                f"client_fn returned {type(client).__name__}; return a flwr NumPyClient "
                "(or NumPyClient(...).to_client())"
            )
        return client

    def initial_arrays(self, config: Mapping[str, Any], context: Context) -> ArrayRecord:
        with keyed_call(config, context, "initial"):  # an unseeded Net() is one model
            client = self.client(context)
            if isinstance(client, NumPyClient):
                arrays = client.get_parameters(dict(config))
            else:
                from flwr.common import GetParametersIns, parameters_to_ndarrays

                res = client.get_parameters(GetParametersIns(config=dict(config)))
                arrays = parameters_to_ndarrays(res.parameters)
        return _initial_record(arrays)

    def fit(
        self, arrays: ArrayRecord, config: Mapping[str, Any], context: Context
    ) -> tuple[ArrayRecord, dict[str, Any]]:
        client = self.client(context)
        params = record_to_ndarrays(arrays)
        with keyed_call(config, context, "fit"):  # after client_fn: its seed is not reused
            if isinstance(client, NumPyClient):
                new, num_examples, metrics = client.fit(params, dict(config))
            else:
                from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays

                res = client.fit(FitIns(ndarrays_to_parameters(params), dict(config)))
                new = parameters_to_ndarrays(res.parameters)
                num_examples, metrics = res.num_examples, res.metrics
        record = ndarrays_to_record([np.asarray(a) for a in new])
        check_like(arrays, record, "the client's fit")
        return record, {**(metrics or {}), "num-examples": int(num_examples)}

    def evaluate(
        self, arrays: ArrayRecord, config: Mapping[str, Any], context: Context
    ) -> dict[str, Any]:
        client = self.client(context)
        params = record_to_ndarrays(arrays)
        with keyed_call(config, context, "evaluate"):
            if isinstance(client, NumPyClient):
                loss, num_examples, metrics = client.evaluate(params, dict(config))
            else:
                from flwr.common import EvaluateIns, ndarrays_to_parameters

                res = client.evaluate(EvaluateIns(ndarrays_to_parameters(params), dict(config)))
                loss, num_examples, metrics = res.loss, res.num_examples, res.metrics
        return {**(metrics or {}), "loss": float(loss), "num-examples": int(num_examples)}


#: The one-line error for a client that cannot give the initial model.
NO_INITIAL = (
    "a Message-API ClientApp cannot be asked for its initial model; pass "
    "initial_arrays=ArrayRecord(model.state_dict()) in Python, or --initial FILE on the "
    "command line (a torch.save'd state_dict, or an .npz of the arrays in order)"
)


def _initial_record(arrays: list[np.ndarray]) -> ArrayRecord:
    """The arrays a client's ``get_parameters`` returned, as the shared initial model.

    Raises
    ------
    ConfigError
        It returned no arrays.
    """
    if not arrays:
        raise ConfigError(
            "the client's get_parameters returned no arrays, so there is no initial "
            "model to share; implement get_parameters or pass initial_arrays"
        )
    return ndarrays_to_record(arrays)


def _instruction(context: Context, message_type: str, content: RecordDict) -> Message:
    """An instruction message for a handler, with metadata of this node (no runtime)."""
    metadata = Metadata(
        run_id=context.run_id,
        message_id=uuid.uuid4().hex,
        src_node_id=0,
        dst_node_id=context.node_id,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=DEFAULT_TTL,
        message_type=message_type,
    )
    return Message(content=content, metadata=metadata)


class MessageTrainer:
    """Message-API ``train`` / ``evaluate`` functions as a trainer.

    ``train`` receives ``RecordDict({"arrays": ArrayRecord, "config": ConfigRecord})`` (as
    from Flower's FedAvg) and must reply with one ``ArrayRecord`` and one
    ``MetricRecord`` holding ``num-examples``; ``evaluate`` replies with a
    ``MetricRecord``.

    Parameters
    ----------
    train : callable ``(Message, Context) -> Message``
    evaluate : callable ``(Message, Context) -> Message``, optional
    initial : ArrayRecord, optional
        The initial model (a Message-API app cannot be asked for one).
    """

    def __init__(
        self, train: Handler, evaluate: Handler | None = None, initial: ArrayRecord | None = None
    ) -> None:
        self.train_fn, self.evaluate_fn, self.initial = train, evaluate, initial

    def initial_arrays(self, config: Mapping[str, Any], context: Context) -> ArrayRecord:
        if self.initial is None:
            raise ConfigError(NO_INITIAL)
        return self.initial

    def _call(self, fn: Handler, kind: str, content: RecordDict, context: Context) -> RecordDict:
        config = content.get("config", {})
        with keyed_call(config, context, "fit" if kind == "train" else kind):
            reply = fn(_instruction(context, kind, content), context)
        if not isinstance(reply, Message):
            raise ConfigError(
                f"the {kind} function returned {type(reply).__name__}; return "
                "Message(RecordDict({...}), reply_to=msg)"
            )
        if reply.has_error():
            raise ConfigError(f"the {kind} function replied with an error: {reply.error.reason}")
        return reply.content

    def fit(
        self, arrays: ArrayRecord, config: Mapping[str, Any], context: Context
    ) -> tuple[ArrayRecord, dict[str, Any]]:
        content = RecordDict({"arrays": arrays, "config": ConfigRecord(dict(config))})
        out = self._call(self.train_fn, "train", content, context)
        records, metrics = list(out.array_records.values()), list(out.metric_records.values())
        if len(records) != 1 or len(metrics) != 1 or "num-examples" not in metrics[0]:
            raise ConfigError(
                f"the train function replied with {len(records)} ArrayRecords and "
                f"{len(metrics)} MetricRecords; reply with exactly one of each, the "
                "MetricRecord holding 'num-examples' (as Flower's FedAvg requires)"
            )
        check_like(arrays, records[0], "the train function")
        return records[0], dict(metrics[0])

    def evaluate(
        self, arrays: ArrayRecord, config: Mapping[str, Any], context: Context
    ) -> dict[str, Any]:
        if self.evaluate_fn is None:
            return {}
        content = RecordDict({"arrays": arrays, "config": ConfigRecord(dict(config))})
        out = self._call(self.evaluate_fn, "evaluate", content, context)
        metrics: dict[str, Any] = {}
        for record in out.metric_records.values():
            metrics.update(record)
        return metrics


class LegacyAppTrainer:
    """A ``ClientApp(client_fn=...)`` (Flower's legacy wrapping of a NumPyClient) as a
    trainer: called with Flower's own legacy records (``fitins.*``), as a SuperNode
    calls it.

    Parameters
    ----------
    app : ClientApp
        Built with ``client_fn``.
    initial : ArrayRecord, optional
        The initial model; default: the client's ``get_parameters``.
    """

    def __init__(self, app: ClientApp, initial: ArrayRecord | None = None) -> None:
        self.app, self.initial = app, initial

    def _ask(
        self, kind: str, content: RecordDict, context: Context, config: Mapping[str, Any]
    ) -> RecordDict:
        stream = {"train": "fit", "get_parameters": "initial"}.get(kind, kind)
        with keyed_call(config, context, stream):
            reply = self.app(_instruction(context, kind, content), context)
        if reply.has_error():
            raise ConfigError(f"the ClientApp's {kind} failed: {reply.error.reason}")
        return reply.content

    def initial_arrays(self, config: Mapping[str, Any], context: Context) -> ArrayRecord:
        if self.initial is not None:
            return self.initial
        from flwr.common import GetParametersIns, parameters_to_ndarrays
        from flwr.compat.common import recorddict_compat as compat

        content = compat.getparametersins_to_recorddict(GetParametersIns(config=dict(config)))
        res = compat.recorddict_to_getparametersres(
            self._ask("get_parameters", content, context, config), keep_input=True
        )
        arrays = parameters_to_ndarrays(res.parameters)
        return _initial_record(arrays)

    def fit(
        self, arrays: ArrayRecord, config: Mapping[str, Any], context: Context
    ) -> tuple[ArrayRecord, dict[str, Any]]:
        from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
        from flwr.compat.common import recorddict_compat as compat

        ins = FitIns(ndarrays_to_parameters(record_to_ndarrays(arrays)), dict(config))
        out = self._ask("train", compat.fitins_to_recorddict(ins, keep_input=True), context, config)
        res = compat.recorddict_to_fitres(out, keep_input=True)
        record = ndarrays_to_record(parameters_to_ndarrays(res.parameters))
        check_like(arrays, record, "the client's fit")
        return record, {**(res.metrics or {}), "num-examples": int(res.num_examples)}

    def evaluate(
        self, arrays: ArrayRecord, config: Mapping[str, Any], context: Context
    ) -> dict[str, Any]:
        from flwr.common import EvaluateIns, ndarrays_to_parameters
        from flwr.compat.common import recorddict_compat as compat

        ins = EvaluateIns(ndarrays_to_parameters(record_to_ndarrays(arrays)), dict(config))
        out = self._ask(
            "evaluate", compat.evaluateins_to_recorddict(ins, keep_input=True), context, config
        )
        res = compat.recorddict_to_evaluateres(out)
        return {**(res.metrics or {}), "loss": float(res.loss), "num-examples": res.num_examples}


def app_trainer(app: ClientApp, initial: ArrayRecord | None = None) -> Trainer:
    """The trainer of any Flower ``ClientApp``, called in this process.

    A :class:`RelayClientApp` gives its own; a ``ClientApp(client_fn=...)`` is called
    with Flower's legacy records (initial model: its ``get_parameters``); a Message-API
    ``ClientApp`` with ``@app.train()`` (and ``@app.evaluate()``) is called with
    ``train`` / ``evaluate`` messages (initial model: ``initial``).

    Raises
    ------
    ConfigError
        When the app has no ``client_fn`` and no ``@app.train()`` function.
    """
    if isinstance(app, RelayClientApp):
        return app.trainer if initial is None else _WithInitial(app.trainer, initial)
    if getattr(app, "_call", None) is not None:
        return LegacyAppTrainer(app, initial)
    funcs = getattr(app, "_registered_funcs", {})
    if "train.default" not in funcs:
        raise ConfigError(
            "this ClientApp has neither a client_fn nor an @app.train() function; "
            "register one with @app.train() (Flower's Message API)"
        )
    return MessageTrainer(app, app if "evaluate.default" in funcs else None, initial)


def can_give_initial(trainer: Trainer) -> bool:
    """False for a Message-API trainer without an initial model (checked up front)."""
    return not (isinstance(trainer, MessageTrainer) and trainer.initial is None)


def partition_of(context: Context) -> tuple[int, int]:
    """``(partition-id, num-partitions)`` from the node config (set by Flower's
    simulation, or ``flower-supernode --node-config``)."""
    cfg = context.node_config
    if "partition-id" not in cfg:
        raise ConfigError(
            "this SuperNode has no partition-id in its node config; start it with "
            "--node-config 'partition-id=<i> num-partitions=<n>'"
        )
    return int(cfg["partition-id"]), int(cfg.get("num-partitions", -1))


def keyed_call(
    config: Mapping[str, Any], context: Context, stream: str
) -> contextlib.AbstractContextManager[None]:
    """:func:`relayfl.rng.seeded_globals` for one call of the user's client, keyed by
    the run's ``seed``, the partition id and ``server-round`` (the initial model: 0),
    so every path draws the same numbers; no seeding when the config has no ``seed``
    or the node no partition id (a plain Flower run)."""
    if "seed" not in config or "partition-id" not in context.node_config:
        return contextlib.nullcontext()
    pid, _ = partition_of(context)
    rnd = 0 if stream == "initial" else int(config.get("server-round", 0))
    return rng.seeded_globals(int(config["seed"]), pid, rnd, stream)


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
            return _WithInitial(self._numpy, self._initial)
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
                return self._app(msg, context)  # a Message-API app, unchanged
            record, config = _arrays_and_config(msg)
            new, metrics = self.trainer.fit(record, config, context)
        return Message(RecordDict({"arrays": new, "metrics": metric_record(metrics)}), reply_to=msg)

    def _flower_evaluate(self, msg: Message, context: Context) -> Message:
        with use_run_config(context, msg.content):
            msg = self._strip(msg)
            if self._app is not None and getattr(self._app, "_call", None) is None:
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


def _arrays_and_config(msg: Message) -> tuple[ArrayRecord, dict[str, Any]]:
    """The model and config of a Flower ``train`` / ``evaluate`` instruction."""
    arrays = msg.content.array_records
    record = arrays["arrays"] if "arrays" in arrays else next(iter(arrays.values()))
    config = dict(msg.content["config"]) if "config" in msg.content else {}
    return record, config


class _WithInitial:
    """A trainer with a given initial model instead of its own."""

    def __init__(self, trainer: Trainer, initial: ArrayRecord) -> None:
        self._trainer, self.initial = trainer, initial

    def initial_arrays(self, config: Mapping[str, Any], context: Context) -> ArrayRecord:
        return self.initial

    def fit(
        self, arrays: ArrayRecord, config: Mapping[str, Any], context: Context
    ) -> tuple[ArrayRecord, dict[str, Any]]:
        return self._trainer.fit(arrays, config, context)

    def evaluate(
        self, arrays: ArrayRecord, config: Mapping[str, Any], context: Context
    ) -> dict[str, Any]:
        return self._trainer.evaluate(arrays, config, context)


@contextlib.contextmanager
def use_run_config(context: Context, content: RecordDict) -> Iterator[None]:
    """Within the block, ``context.run_config`` holds the user's run config carried by
    a relayfl message (over Flower's own values, from ``flwr run``); restored after,
    as Flower's SuperNode refuses a changed ``run_config``."""
    if RUN_CONFIG not in content:
        yield
        return
    saved = context.run_config
    context.run_config = {**dict(saved), **dict(content[RUN_CONFIG])}
    try:
        yield
    finally:
        context.run_config = saved


def as_trainer(
    client: ClientFn | ClientApp | Trainer, initial_arrays: ArrayRecord | None = None
) -> Trainer:
    """A trainer from a ``client_fn``, any ``ClientApp`` (see :func:`app_trainer`), or a
    trainer; ``initial_arrays`` replaces the client's own initial model."""
    if isinstance(client, ClientApp):
        return app_trainer(client, initial_arrays)
    if all(hasattr(client, a) for a in ("initial_arrays", "fit", "evaluate")):
        trainer: Trainer = client  # type: ignore[assignment]
    else:
        trainer = NumPyClientTrainer(client)  # type: ignore[arg-type]
    return trainer if initial_arrays is None else _WithInitial(trainer, initial_arrays)


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
