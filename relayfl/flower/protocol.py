"""The relay protocol on Flower: message types, record names, routing and bookkeeping.

Shared by the nodes (:mod:`relayfl.flower.client`), the forwarding ``ServerApp``
(:mod:`relayfl.flower.server`) and the in-process driver, so all three agree.

One relay round per message (``query.relayfl_round``): a node receives the messages its
tree neighbours sent in the previous round (records ``relayfl.from.<j>.<k>``), finishes
that round's average, optionally evaluates, trains its local steps, and replies with one
record per neighbour (``relayfl.to.<j>.<k>``). The server only moves each
``relayfl.to.<j>.<k>`` record of node ``i`` into node ``j``'s next message as
``relayfl.from.<i>.<k>``: the same object, never read, never combined.
"""

from __future__ import annotations

import functools
import math
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from logging import INFO
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, RecordDict
from flwr.common.logger import log
from torch import Tensor

from relayfl import topology
from relayfl.config import RunConfig
from relayfl.errors import ConfigError
from relayfl.flower.records import arrays_to_flat, config_record, json_metrics, scalar
from relayfl.relay import Layout
from relayfl.results import EvalRecord, RunResult, library_versions

__all__ = [
    "EVALUATE_METRICS",
    "FINAL",
    "FIT_METRICS",
    "HELLO",
    "PARTITION",
    "ROUND",
    "RUN_CONFIG",
    "STEPS_KEY",
    "X0",
    "RelayRecorder",
    "UserRunConfig",
    "checksum",
    "client_epoch",
    "client_run_config",
    "eval_due",
    "from_key",
    "num_rounds",
    "parse_key",
    "relay_rounds",
    "round_lr",
    "route",
    "steps_taken",
    "to_key",
]

#: Handshake: nodes report their partition id (the ServerApp cannot see it).
HELLO = "query.relayfl_hello"
#: One relay round (and, with ``final``, the last average and evaluation).
ROUND = "query.relayfl_round"
#: The shared initial model, forwarded to every node in round 1.
X0 = "relayfl.x0"
#: The final model a node returns when asked (``return-model``).
FINAL = "arrays"
#: The user's ``context.run_config``, carried in every relayfl message.
RUN_CONFIG = "relayfl.run-config"
#: The client's own fit / evaluate metrics in a node's reply (``ConfigRecord``).
FIT_METRICS = "relayfl.fit-metrics"
#: A FedAvg ``train`` reply's partition id (a ``ConfigRecord``).
PARTITION = "relayfl.partition"
EVALUATE_METRICS = "relayfl.evaluate-metrics"


def to_key(neighbour: int, graph: int) -> str:
    """Record name of a message for ``neighbour`` on graph ``graph``."""
    return f"relayfl.to.{neighbour}.{graph}"


def from_key(sender: int, graph: int) -> str:
    """Record name of a message from ``sender`` on graph ``graph``."""
    return f"relayfl.from.{sender}.{graph}"


def parse_key(name: str) -> tuple[str, int, int] | None:
    """``("to" | "from", peer, graph)`` for a relay record name, else None."""
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "relayfl" and parts[1] in ("to", "from"):
        return parts[1], int(parts[2]), int(parts[3])
    return None


def route(
    outgoing: Mapping[int, Mapping[str, Any]], num_nodes: int
) -> dict[int, dict[str, ArrayRecord]]:
    """Move every ``relayfl.to.<j>.<k>`` record of sender ``i`` to ``j`` as
    ``relayfl.from.<i>.<k>``.

    The records are passed on as they are (the same objects): the forwarder reads only
    their names.

    Parameters
    ----------
    outgoing : mapping of partition id to that node's reply records
    num_nodes : int

    Returns
    -------
    dict of partition id to the records for its next message
    """
    incoming: dict[int, dict[str, ArrayRecord]] = {p: {} for p in range(num_nodes)}
    for src, records in outgoing.items():
        for name, record in records.items():
            key = parse_key(name)
            if key is None or key[0] != "to":
                continue
            _, dst, graph = key
            if dst not in incoming:
                raise ConfigError(
                    f"node {src} addressed a message to worker {dst}, outside "
                    f"0..{num_nodes - 1}; every node must run with the same num-clients"
                )
            incoming[dst][from_key(src, graph)] = record
    return incoming


def num_rounds(config: RunConfig) -> int:
    """Communication rounds of a run: ``steps / local_steps`` (which must divide)."""
    if config.steps % config.local_steps:
        raise ConfigError(
            f"steps ({config.steps}) must be a multiple of local-steps "
            f"({config.local_steps}) on Flower, where every round ends with communication; "
            f"use steps={max(config.steps // config.local_steps, 1) * config.local_steps}"
        )
    return config.steps // config.local_steps


def eval_due(rounds_done: int, config: RunConfig, total_rounds: int) -> bool:
    """Evaluate after ``rounds_done`` rounds? At 0 and every ``eval_every`` steps (as the
    simulator), and always at the end."""
    if rounds_done >= total_rounds:
        return True
    ev = config.eval_every
    if not ev:
        return False
    if rounds_done == 0:
        return True
    ls = config.local_steps
    return (rounds_done * ls) // ev > ((rounds_done - 1) * ls) // ev


def client_run_config(
    config: RunConfig, run_config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``context.run_config`` relayfl gives the user's clients.

    relayfl's own settings under a ``relayfl.`` prefix (``relayfl.num-clients``, ...),
    ``num-server-rounds`` (relay rounds) and ``local-epochs`` (1), as a Flower app's
    ``[tool.flwr.app.config]`` declares them for the quickstarts, then the user's
    ``run_config``, which wins.
    """
    rounds = config.steps // config.local_steps if config.local_steps else config.steps
    out: dict[str, Any] = {f"relayfl.{k}": v for k, v in config.to_flower().items()}
    out.update({"num-server-rounds": rounds, "local-epochs": 1})
    out.update(dict(run_config or {}))
    return out


class UserRunConfig(dict):
    """``context.run_config`` as relayfl fills it: a ``dict`` whose missing key raises
    a ``KeyError`` that names the keys it holds and how to pass the missing one (a
    quickstart client reads ``context.run_config["lr"]`` that its pyproject declared)."""

    def __missing__(self, key: str) -> Any:
        mine = sorted(k for k in self if not str(k).startswith("relayfl."))
        raise MissingRunConfigKey(
            f"{key!r} is not in context.run_config (it holds {', '.join(mine)}); pass it in "
            f'`run_config` (Python) or with --run-config "{key}=..." (command line)'
        )


class MissingRunConfigKey(KeyError):
    """A ``KeyError`` (what user code catches) whose message reads as a sentence."""

    def __str__(self) -> str:
        return str(self.args[0])


def partition_context(
    partition: int,
    num_partitions: int,
    run_config: Mapping[str, Any],
    *,
    node_id: int | None = None,
) -> Context:
    """The ``Context`` a SuperNode gives the ClientApp of ``partition`` (of
    ``num_partitions``): ``node_config`` with ``partition-id`` / ``num-partitions``, an
    empty ``state`` and ``run_config`` (from :func:`client_run_config`). ``node_id``
    defaults to ``partition + 1``."""
    return Context(
        run_id=0,
        node_id=partition + 1 if node_id is None else node_id,
        node_config={"partition-id": partition, "num-partitions": num_partitions},
        state=RecordDict(),
        run_config=UserRunConfig(run_config),
    )


def checksum(record: ArrayRecord) -> int:
    """CRC-32 of a record's array bytes (equal records, equal checksums)."""
    crc = 0
    for key, array in record.items():
        crc = zlib.crc32(array.data, zlib.crc32(key.encode(), crc))
    return crc


def _metric(values: Mapping[str, Any], *names: str) -> float:
    for name in names:
        if name in values:
            return float(values[name])
    return math.nan


def round_lr(config: RunConfig, sizes: Sequence[int], step: int) -> float:
    """The learning rate relayfl's own workers use at ``step``
    (:func:`relayfl.simulation.lr_schedule`: warm-up, decay and, for ``relaysgd``, the
    relay correction ``1 + mean delay``; docs/algorithm.md 1.8).

    The epoch is the clients' mean reported ``num-examples`` (``sizes``) over the batch
    size; before any report (round 1, step 0) warm-up gives 0 whatever the size.
    """
    from relayfl.simulation import lr_schedule

    parts = [np.arange(k) for k in (sizes if any(sizes) else [config.batch_size])]
    lr_at, _, _ = lr_schedule(config, parts, _graphs(config), notes=False)
    return float(lr_at(step))


@functools.lru_cache(maxsize=8)
def _graphs(config: RunConfig) -> tuple:
    """The graphs the relay correction of ``round_lr`` needs (built once per run)."""
    correct = config.algorithm == "relaysgd" and config.lr_correction
    return tuple(config.build_graphs()) if correct else ()


def client_epoch(
    steps: float,
    rounds: int,
    local_epochs: float | None,
    sizes: Sequence[float],
    batch_size: int,
) -> float:
    """The epoch of a Flower client after ``rounds`` rounds and ``steps`` local steps:
    ``rounds * local-epochs`` when the user sets ``local-epochs``, else ``steps`` times
    the config's ``batch-size`` over the mean ``num-examples`` the clients reported
    (NaN before any report)."""
    if local_epochs:
        return rounds * local_epochs
    size = float(np.mean(sizes)) if any(sizes) else 0.0
    return steps * batch_size / size if size else math.nan


#: Fit metric a client may report with the optimizer steps it took (default: the
#: round's ``local-steps``); results count steps from it.
STEPS_KEY = "num-steps"


def steps_taken(fit_metrics: Sequence[Mapping[str, Any]], local_steps: int) -> float:
    """Local steps of one round: the mean ``num-steps`` the clients' fits reported when
    every one reported it, else ``local_steps`` (the same rule on every path)."""
    reported = [scalar(m, (STEPS_KEY,)) for m in fit_metrics]
    if reported and all(math.isfinite(v) for v in reported):
        return float(np.mean(reported))
    return float(local_steps)


class RelayRecorder:
    """Collects per-worker metrics round by round and builds the :class:`RunResult`.

    Parameters
    ----------
    config : RunConfig
    started : float
        ``time.perf_counter()`` at the engine call (``wall_s`` counts from there).
    client : str, optional
        The user's client (``module:name``): the run's task name, and the partition
        sizes are the ``num-examples`` the clients report.
    """

    def __init__(self, config: RunConfig, started: float, client: str | None = None) -> None:
        self.config, self.started, self.client = config, started, client
        n = config.num_clients
        #: Every metric each client reported: ``{"round", "partition-id", "fit",
        #: "evaluate"}`` per worker and round (bytes as base64).
        self.client_metrics: list[dict[str, Any]] = []
        #: The user's ``local-epochs`` per round, when set: epochs count from it.
        self.local_epochs: float | None = None
        self.evaluations: list[EvalRecord] = []
        self.train_loss = math.nan
        self.lr = math.nan
        self.sent = [0] * n
        self.received = [0] * n
        self.num_examples = [0] * n
        #: Local steps so far: the clients' mean reported ``num-steps``, else
        #: ``local-steps`` per round.
        self.steps = 0.0

    def round_lr(self, step: int, partition: int) -> float:
        """:func:`round_lr` at ``step`` from the ``num-examples`` client ``partition``
        reported last (what a serverless node knows, so every path sends a client the
        same lr)."""
        return round_lr(self.config, [self.num_examples[partition]], step)

    def client_reported(self, rnd: int, replies: Mapping[int, RecordDict]) -> None:
        """Keep every metric the clients reported in round ``rnd`` (1-based; the
        evaluation of a round's message is of the model after ``rnd - 1`` rounds)."""
        for p in sorted(replies):
            row: dict[str, Any] = {"round": rnd, "partition-id": p}
            for key, name in ((FIT_METRICS, "fit"), (EVALUATE_METRICS, "evaluate")):
                if key in replies[p]:
                    row[name] = json_metrics(dict(replies[p][key]))
            if len(row) > 2:
                self.client_metrics.append(row)

    def trained(self, metrics: Sequence[Mapping[str, Any]]) -> None:
        """Record the training metrics of one round, per worker."""
        losses = [_metric(m, "train-loss", "train_loss") for m in metrics]
        losses = [v for v in losses if not math.isnan(v)]
        self.train_loss = float(np.mean(losses)) if losses else math.nan
        lrs = [float(m["lr"]) for m in metrics if "lr" in m]
        self.lr = float(np.mean(lrs)) if lrs else math.nan
        self.num_examples = [int(_metric(m, "num-examples")) for m in metrics]
        self.steps += steps_taken(metrics, self.config.local_steps)

    def evaluated(
        self, rounds_done: int, metrics: Sequence[Mapping[str, Any]], models: Tensor | None = None
    ) -> EvalRecord:
        """Record one evaluation of every worker (``metrics`` in worker order)."""
        acc = [
            _metric(m, "eval-accuracy", "accuracy", "eval_acc", "eval_accuracy", "acc")
            for m in metrics
        ]
        loss = [_metric(m, "eval-loss", "loss", "eval_loss") for m in metrics]
        consensus = math.nan
        if models is not None:
            x = models.double()
            consensus = float(((x - x.mean(0, keepdim=True)) ** 2).sum(1).mean())
        step = round(self.steps)
        epoch = client_epoch(
            self.steps, rounds_done, self.local_epochs, self.num_examples, self.config.batch_size
        )
        record = EvalRecord(
            step=step,
            round=rounds_done,
            epoch=epoch,
            lr=self.lr if rounds_done else 0.0,
            mean_accuracy=float(np.mean(acc)),
            worst_accuracy=float(np.min(acc)),
            best_accuracy=float(np.max(acc)),
            mean_loss=float(np.mean(loss)),
            worst_loss=float(np.max(loss)),
            train_loss=self.train_loss,
            consensus_distance=consensus,
            accuracies=acc,
            losses=loss,
            bytes_sent=list(self.sent),
            bytes_received=list(self.received),
            wall_s=time.perf_counter() - self.started,
        )
        self.evaluations.append(record)
        return record

    def result(
        self,
        *,
        engine: str,
        models: Tensor | None,
        layout: Any,
        extra: Mapping[str, Any],
        task: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> RunResult:
        """The run in the core schema (``wall_s`` up to now)."""
        cfg = self.config
        graphs = cfg.build_graphs()
        if task is None and self.client is not None:
            task = {
                "name": self.client,
                "partition_sizes": list(self.num_examples),
                "train_size": int(sum(self.num_examples)),
                "partition": "the client's own (partition-id of num-partitions)",
            }
        extra = {**extra, "client_metrics": self.client_metrics}
        return RunResult(
            config=dict(config) if config is not None else cfg.to_dict(),
            evaluations=self.evaluations,
            topology={"name": cfg.topology_name, "graphs": [topology.describe(g) for g in graphs]},
            versions=library_versions("flwr", "ray"),
            task=dict(task or {"name": cfg.dataset, "partition_sizes": list(self.num_examples)}),
            wall_s=time.perf_counter() - self.started,
            engine=engine,
            extra=dict(extra),
            models=models,
            layout=layout,
        )


#: ``exchange(server_round, contents)``: deliver each worker's message, return its reply.
Exchange = Callable[[int, dict[int, RecordDict]], dict[int, RecordDict]]


def relay_rounds(
    config: RunConfig,
    exchange: Exchange,
    *,
    x0: ArrayRecord | None,
    fit_config: Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None,
    return_models: bool,
    recorder: RelayRecorder,
    run_config: Mapping[str, Any] | None = None,
) -> tuple[Tensor | None, Layout | None]:
    """The relay's round loop, whatever carries the messages (Flower's grid or a loop).

    Round ``r`` (1-based) sends every worker the round's settings and what its
    neighbours sent in round ``r - 1``; one more message, ``final``, finishes the last
    average, evaluates and (``return_models``) collects the models. Round 1 carries
    the shared initial model ``x0``; with ``x0=None`` every worker starts from its own
    (``initial="own"``: the workers report a checksum, which must agree).

    Each round's config holds ``RunConfig.to_flower()``, ``server-round``,
    ``num-rounds``, ``local-steps`` and ``round-lr``: the learning rate relayfl's own
    workers use at the round's first step, its epoch from that client's own
    ``num-examples`` as on a serverless node (:meth:`RelayRecorder.round_lr`). A
    ``run_config`` travels as the record ``relayfl.run-config`` (the nodes merge it
    into ``context.run_config``).

    Returns
    -------
    models, layout : Tensor[n, d] and Layout, or None
        The workers' final flat models.
    """
    n = config.num_clients
    total = num_rounds(config)
    base = config.to_flower()
    if run_config and "local-epochs" in run_config:
        recorder.local_epochs = float(run_config["local-epochs"])
    first = {X0: x0} if x0 is not None else {}
    incoming: dict[int, dict[str, ArrayRecord]] = {p: dict(first) for p in range(n)}
    models: Tensor | None = None
    layout: Layout | None = None
    for rnd in range(1, total + 2):
        final = rnd == total + 1
        extra = fit_config(rnd) if callable(fit_config) else (fit_config or {})
        settings = {
            **base,
            **extra,
            "server-round": rnd,
            "num-rounds": total,
            "final": final,
            "evaluate": eval_due(rnd - 1, config, total),
            "return-model": bool(return_models and final),
            "initial": "shared" if x0 is not None else "own",
        }
        if run_config and "local-epochs" in run_config:
            settings["local-epochs"] = run_config["local-epochs"]
        user = {RUN_CONFIG: config_record(client_run_config(config, run_config))}
        step = (rnd - 1) * config.local_steps
        contents = {
            p: RecordDict(
                {
                    "config": config_record({**settings, "round-lr": recorder.round_lr(step, p)}),
                    **user,
                    **incoming[p],
                }
            )
            for p in range(n)
        }
        log(INFO, "")
        log(
            INFO, "[RELAY ROUND %s/%s]%s", min(rnd, total), total, " final average" if final else ""
        )
        replies = exchange(rnd, contents)
        metrics = [dict(replies[p]["metrics"]) for p in range(n)]
        recorder.client_reported(rnd, replies)
        if rnd == 1 and x0 is None:
            sums = {int(m.get("x0-checksum", -1)) for m in metrics}
            if len(sums) != 1:
                raise ConfigError(
                    "with initial='own' the workers started from different initial models "
                    f"(checksums {sorted(sums)[:4]}); seed the model, or share node 0's "
                    "(initial='node-0')"
                )
        if final and return_models:
            flats = [arrays_to_flat(replies[p][FINAL]) for p in range(n)]  # type: ignore[arg-type]
            models = torch.stack([f for f, _ in flats])  # [n, d]
            layout = flats[0][1]
        if settings["evaluate"]:  # the model after rnd - 1 rounds
            e = recorder.evaluated(rnd - 1, metrics, models)
            log(
                INFO,
                "\t└──> after %s rounds: mean accuracy %.4f, worst client %.4f",
                rnd - 1,
                e.mean_accuracy,
                e.worst_accuracy,
            )
        if not final:
            recorder.trained(metrics)
        if not final:
            incoming = route({p: dict(replies[p].array_records) for p in range(n)}, n)
    return models, layout
