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

import math
import time
import uuid
from collections.abc import Callable, Mapping
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

from relayfl import divergence, topology
from relayfl.config import RunConfig
from relayfl.errors import ConfigError, DivergenceError
from relayfl.flower import protocol
from relayfl.flower.peer import PeerMixer
from relayfl.flower.records import (
    arrays_to_flat,
    flat_to_arrays,
    metric_record,
    ndarrays_to_record,
    record_to_ndarrays,
    record_to_tensors,
    tensors_to_record,
)
from relayfl.results import RunResult

__all__ = [
    "ClientFn",
    "MessageTrainer",
    "NumPyClientTrainer",
    "RelayClientApp",
    "Trainer",
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

_ACCURACY_KEYS = ("accuracy", "eval-accuracy", "eval_acc", "eval_accuracy", "acc")
_LOSS_KEYS = ("loss", "eval-loss", "eval_loss")


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
        client = self.client(context)
        if isinstance(client, NumPyClient):
            arrays = client.get_parameters(dict(config))
        else:
            from flwr.common import GetParametersIns, parameters_to_ndarrays

            res = client.get_parameters(GetParametersIns(config=dict(config)))
            arrays = parameters_to_ndarrays(res.parameters)
        if not arrays:
            raise ConfigError(
                "the client's get_parameters returned no arrays, so there is no initial "
                "model to share; implement get_parameters or pass initial_arrays"
            )
        return ndarrays_to_record(arrays)

    def fit(
        self, arrays: ArrayRecord, config: Mapping[str, Any], context: Context
    ) -> tuple[ArrayRecord, dict[str, Any]]:
        client = self.client(context)
        params = record_to_ndarrays(arrays)
        if isinstance(client, NumPyClient):
            new, num_examples, metrics = client.fit(params, dict(config))
        else:
            from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays

            res = client.fit(FitIns(ndarrays_to_parameters(params), dict(config)))
            new = parameters_to_ndarrays(res.parameters)
            num_examples, metrics = res.num_examples, res.metrics
        if len(new) != len(params):
            raise ConfigError(
                f"the client's fit returned {len(new)} arrays for a model of {len(params)}; "
                "return the updated model, every array in the same order"
            )
        return ndarrays_to_record(new), {**(metrics or {}), "num-examples": int(num_examples)}

    def evaluate(
        self, arrays: ArrayRecord, config: Mapping[str, Any], context: Context
    ) -> dict[str, Any]:
        client = self.client(context)
        params = record_to_ndarrays(arrays)
        if isinstance(client, NumPyClient):
            loss, num_examples, metrics = client.evaluate(params, dict(config))
        else:
            from flwr.common import EvaluateIns, ndarrays_to_parameters

            res = client.evaluate(EvaluateIns(ndarrays_to_parameters(params), dict(config)))
            loss, num_examples, metrics = res.loss, res.num_examples, res.metrics
        return {**(metrics or {}), "loss": float(loss), "num-examples": int(num_examples)}


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
    """

    def __init__(self, train: Handler, evaluate: Handler | None = None) -> None:
        self.train_fn, self.evaluate_fn = train, evaluate

    def initial_arrays(self, config: Mapping[str, Any], context: Context) -> ArrayRecord:
        raise ConfigError(
            "a Message-API ClientApp has no get_parameters to take the initial model "
            "from; pass initial_arrays=ArrayRecord(model.state_dict()) to "
            "relay_server_app / run_relay_simulation / simulate_clients"
        )

    def _call(self, fn: Handler, kind: str, content: RecordDict, context: Context) -> RecordDict:
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


def _first(values: Mapping[str, Any], keys: tuple[str, ...]) -> float:
    for k in keys:
        if k in values:
            return float(values[k])
    return math.nan


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
    if config.get("evaluate"):
        ev = trainer.evaluate(arrays, client_config, context)
        metrics["eval-accuracy"] = _first(ev, _ACCURACY_KEYS)
        metrics["eval-loss"] = _first(ev, _LOSS_KEYS)
    if config.get("final"):
        out = RecordDict({"metrics": metric_record(metrics)})
        if config.get("return-model"):
            out[protocol.FINAL] = arrays
        return out
    fit_config = {**client_config, "local-steps": rc.local_steps}
    new_arrays, fit_metrics = trainer.fit(arrays, fit_config, context)
    x_half, new_layout = arrays_to_flat(new_arrays)
    if new_layout.numel != layout.numel:
        raise ConfigError(
            f"fit returned a model of {new_layout.numel} values, the shared model has "
            f"{layout.numel}; return the updated arrays of the same model"
        )
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
    outbox = peer.send(x, x_half.to(x.dtype))
    state[STATE_PEER] = tensors_to_record(peer.state_dict())
    if layout.local:  # integer arrays are never relayed: keep this node's own
        state[STATE_LOCAL] = new_arrays
    out = RecordDict()
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
            "train-loss": _first(fit_metrics, ("train-loss", "train_loss", "loss")),
        }
    )
    if "lr" in fit_metrics:
        metrics["lr"] = float(fit_metrics["lr"])
    out["metrics"] = metric_record(metrics)
    return out


class RelayClientApp(ClientApp):
    """A Flower ``ClientApp`` that runs as a relay worker (and still speaks FedAvg).

    Build it around a ``client_fn`` (NumPyClient), or register Message-API functions
    with its ``@app.train()`` / ``@app.evaluate()`` decorators, exactly as on Flower's
    ``ClientApp``. Besides Flower's own ``train`` / ``evaluate`` messages it answers
    ``query.relayfl_hello`` (reports the node's partition id) and
    ``query.relayfl_round`` (one relay round, :func:`node_step`).

    Parameters
    ----------
    client_fn : callable, optional
        ``client_fn(context) -> NumPyClient | Client``.
    mods : list, optional
        Flower mods, applied to every handler.

    Examples
    --------
    From a NumPyClient::

        app = RelayClientApp(client_fn=lambda context: MyClient().to_client())

    With the Message API::

        app = RelayClientApp()

        @app.train()
        def train(msg: Message, context: Context) -> Message:
            ...  # msg.content["arrays"], msg.content["config"]["local-steps"]
            return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
    """

    def __init__(self, client_fn: ClientFn | None = None, *, mods: list | None = None) -> None:
        super().__init__(mods=mods)
        self._numpy = NumPyClientTrainer(client_fn) if client_fn is not None else None
        self._train_fn: Handler | None = None
        self._evaluate_fn: Handler | None = None
        if self._numpy is not None:
            super().train()(self._flower_train)
            super().evaluate()(self._flower_evaluate)
        super().query("relayfl_hello")(self._hello)
        super().query("relayfl_round")(self._round)

    # Flower's decorators, remembering the default handlers the relay calls
    def train(self, action: str = "default", *, mods: list | None = None) -> Callable:
        register = super().train(action, mods=mods)

        def decorator(fn: Handler) -> Handler:
            if self._numpy is not None:
                raise ConfigError(
                    "this RelayClientApp wraps a client_fn; use either client_fn or "
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
            return self._numpy
        if self._train_fn is None:
            raise ConfigError(
                "RelayClientApp has no training: pass client_fn=... or register a "
                "function with @app.train()"
            )
        return MessageTrainer(self._train_fn, self._evaluate_fn)

    # -------------------------------------------------------------- Flower messages
    def _flower_train(self, msg: Message, context: Context) -> Message:
        arrays = msg.content.array_records
        record = arrays["arrays"] if "arrays" in arrays else next(iter(arrays.values()))
        config = dict(msg.content["config"]) if "config" in msg.content else {}
        new, metrics = self.trainer.fit(record, config, context)
        return Message(RecordDict({"arrays": new, "metrics": metric_record(metrics)}), reply_to=msg)

    def _flower_evaluate(self, msg: Message, context: Context) -> Message:
        arrays = msg.content.array_records
        record = arrays["arrays"] if "arrays" in arrays else next(iter(arrays.values()))
        config = dict(msg.content["config"]) if "config" in msg.content else {}
        metrics = self.trainer.evaluate(record, config, context)
        return Message(RecordDict({"metrics": metric_record(metrics)}), reply_to=msg)

    # -------------------------------------------------------------- relay messages
    def _hello(self, msg: Message, context: Context) -> Message:
        config = dict(msg.content["config"]) if "config" in msg.content else {}
        pid, num = partition_of(context)
        out = RecordDict({"config": ConfigRecord({"partition-id": pid, "num-partitions": num})})
        if config.get("send-initial") and pid == 0:
            out[protocol.X0] = self.trainer.initial_arrays(config, context)
        return Message(out, reply_to=msg)

    def _round(self, msg: Message, context: Context) -> Message:
        config = dict(msg.content["config"])
        records = dict(msg.content.array_records)
        return Message(node_step(self.trainer, context, config, records), reply_to=msg)


def as_trainer(client: ClientFn | RelayClientApp | Trainer) -> Trainer:
    """A trainer from a ``client_fn``, a :class:`RelayClientApp`, or a trainer."""
    if isinstance(client, RelayClientApp):
        return client.trainer
    if isinstance(client, ClientApp):
        raise ConfigError(
            "a plain flwr ClientApp cannot be called in process; pass its client_fn, "
            "or build it as relayfl.flower.RelayClientApp"
        )
    if all(hasattr(client, a) for a in ("initial_arrays", "fit", "evaluate")):
        return client  # type: ignore[return-value]
    return NumPyClientTrainer(client)  # type: ignore[arg-type]


def _count(records: Mapping[str, Any]) -> int:
    return sum(r.count_bytes() for r in records.values() if isinstance(r, ArrayRecord))


def simulate_clients(
    client: ClientFn | RelayClientApp | Trainer,
    config: RunConfig | None = None,
    *,
    initial_arrays: ArrayRecord | str | None = None,
    fit_config: Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None = None,
    return_models: bool = True,
) -> RunResult:
    """Run the relay over Flower clients in this process (no Flower runtime).

    Every worker runs :func:`node_step` with its own ``Context`` (partition id in
    ``node_config``, state in ``context.state``), and the messages are routed exactly
    as the forwarding ``ServerApp`` routes them, so this is the same computation as
    :func:`relayfl.flower.run_relay_simulation` without Ray or a SuperLink.

    Parameters
    ----------
    client : client_fn, RelayClientApp or Trainer
        ``client_fn(context) -> NumPyClient``: its ``fit`` and ``evaluate`` are called
        directly.
    config : RunConfig, optional
        Algorithm (``relaysgd``, ``relaysgd-grad``, ``dpsgd``), topology, clients,
        ``steps`` / ``local_steps`` (rounds = steps / local_steps), ``eval_every``.
    initial_arrays : ArrayRecord or {"node-0", "own"}, optional
        The shared initial model; default (``"node-0"``): worker 0's
        ``get_parameters``, sent to every worker; ``"own"``: each worker's own (they
        must agree, e.g. a seeded model; checked).
    fit_config : mapping or callable ``server_round -> mapping``, optional
        Extra entries of each ``fit`` config (Flower's ``on_fit_config_fn``).
    return_models : bool (default: True)
        Keep every worker's final flat model in ``RunResult.models``.

    Returns
    -------
    RunResult
        ``engine="client-adapter"``.
    """
    config = config or RunConfig()
    started = time.perf_counter()
    trainer = as_trainer(client)
    n = config.num_clients
    contexts = [
        Context(
            run_id=0,
            node_id=p + 1,
            node_config={"partition-id": p, "num-partitions": n},
            state=RecordDict(),
            run_config={},
        )
        for p in range(n)
    ]
    x0: ArrayRecord | None
    if isinstance(initial_arrays, ArrayRecord):
        x0 = initial_arrays
    elif initial_arrays in (None, "node-0"):
        x0 = trainer.initial_arrays(config.to_flower(), contexts[0])
    elif initial_arrays == "own":
        x0 = None
    else:
        raise ConfigError(
            f"initial_arrays must be an ArrayRecord, 'node-0' or 'own', got {initial_arrays!r}"
        )
    recorder = protocol.RelayRecorder(config, started)

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
    )
    return recorder.result(
        engine="client-adapter",
        models=models,
        layout=layout,
        extra={"runtime": "in-process", "server": "none"},
    )
