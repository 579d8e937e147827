"""Any Flower client as a trainer: what the relay calls, whatever the client's kind.

* :class:`NumPyClientTrainer`: a ``client_fn(context)`` returning a ``NumPyClient`` (or
  a ``Client``), built fresh for every call as Flower does for every message;
* :class:`MessageTrainer`: Message-API ``@app.train()`` / ``@app.evaluate()`` functions;
* :class:`LegacyAppTrainer`: a ``ClientApp(client_fn=...)``, called with Flower's own
  legacy records, as a SuperNode calls it.

Every call of the user's code runs inside :func:`keyed_call` (the process's generators
keyed by seed, partition and round), and the metric names it reports are read the
same way on every path (:func:`accuracy_of`, :data:`LOSS_KEYS`, :data:`TRAIN_LOSS_KEYS`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
from flwr.app import (
    DEFAULT_TTL,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    Metadata,
    RecordDict,
)
from flwr.client import Client, NumPyClient
from flwr.clientapp import ClientApp

from relayfl import rng
from relayfl.errors import ConfigError
from relayfl.flower.records import (
    check_like,
    ndarrays_to_record,
    record_to_ndarrays,
    scalar,
)

__all__ = [
    "ACCURACY_KEYS",
    "LOSS_KEYS",
    "NO_INITIAL",
    "TRAIN_LOSS_KEYS",
    "ClientFn",
    "Handler",
    "LegacyAppTrainer",
    "MessageTrainer",
    "NumPyClientTrainer",
    "Trainer",
    "WithInitial",
    "accuracy_of",
    "app_trainer",
    "as_trainer",
    "can_give_initial",
    "keyed_call",
    "partition_of",
]

#: Flower's ``client_fn``: ``Context -> Client`` (or a ``NumPyClient``).
ClientFn = Callable[[Context], "Client | NumPyClient"]
#: Flower's Message-API handler: ``(Message, Context) -> Message``.
Handler = Callable[[Message, Context], Message]

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
        _check_fraction(float(metrics[key]), key)
        return float(metrics[key])
    value = scalar(metrics, ACCURACY_KEYS)
    _check_fraction(value, next((k for k in ACCURACY_KEYS if k in metrics), ""))
    if math.isnan(value) and tuple(reported) not in _UNREPORTED:
        _UNREPORTED.add(tuple(reported))
        log.warning(
            "the client's evaluate reported no accuracy (it reported: %s); accuracy is "
            "null; name the metric with --accuracy-key (accuracy_key= in Python)",
            ", ".join(reported) or "nothing",
        )
    return value


def _check_fraction(value: float, key: str) -> None:
    """Refuse an accuracy outside [0, 1] (a percentage would be averaged silently)."""
    if math.isfinite(value) and not 0.0 <= value <= 1.0:
        raise ConfigError(
            f"the client's evaluate reported {key}={value:g}; relayfl reads accuracy as a "
            "fraction in [0, 1]: report it divided by 100, or name a metric that is one "
            "with --accuracy-key"
        )


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
    if isinstance(getattr(type(app), "trainer", None), property):  # a RelayClientApp
        trainer: Trainer = app.trainer  # type: ignore[attr-defined]
        return trainer if initial is None else WithInitial(trainer, initial)
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
    the run's ``seed``, the partition id and ``server-round`` (the initial model: one
    key for every node, so an unseeded ``Net()`` is the same model on each),
    so every path draws the same numbers; no seeding when the config has no ``seed``
    or the node no partition id (a plain Flower run)."""
    if "seed" not in config or "partition-id" not in context.node_config:
        return contextlib.nullcontext()
    pid, _ = partition_of(context)
    if stream == "initial":  # one key on every node: each serverless node asks its own
        pid, rnd = 0, 0
    else:
        rnd = int(config.get("server-round", 0))
    return rng.seeded_globals(int(config["seed"]), pid, rnd, stream)


class WithInitial:
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
    return trainer if initial_arrays is None else WithInitial(trainer, initial_arrays)
