"""FedAvg through Flower's own strategy, on Flower's simulation engine, in relayfl's schema.

The baseline Flower users actually run: ``flwr.serverapp.strategy.FedAvg`` with any
Flower client: a Message-API ``ClientApp`` as it is, a ``client_fn`` returning a
``NumPyClient`` inside :class:`relayfl.flower.RelayClientApp` (which answers the
Message API with the client's ``fit`` / ``evaluate``). Every
client trains ``local_steps`` steps per round, as in a relay round, so the comparison
uses the same clients, partitions and budget of local samples.

The one global model is evaluated on the server, on the same test set as the relay
workers, so its mean and worst-client accuracy are that model's accuracy; bytes count
the arrays through the server both ways.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from relayfl.config import RunConfig
from relayfl.errors import ConfigError
from relayfl.flower.client import RUN_CONFIG, RelayClientApp, describe_client
from relayfl.flower.protocol import (
    FIT_METRICS,
    PARTITION,
    client_epoch,
    client_run_config,
    eval_due,
    num_rounds,
    partition_context,
    round_lr,
    steps_taken,
)
from relayfl.flower.records import (
    arrays_to_flat,
    client_metrics,
    config_record,
    json_metrics,
    ndarrays_to_record,
    scalar,
)
from relayfl.flower.runtime import (
    CountingGrid,
    FlowerRunError,
    last_line,
    reply_error,
    run_simulation,
)
from relayfl.flower.trainers import (
    NO_INITIAL,
    TRAIN_LOSS_KEYS,
    ClientFn,
    app_trainer,
    can_give_initial,
)
from relayfl.results import EvalRecord, RunResult, library_versions
from relayfl.task import Task

__all__ = [
    "client_evaluator",
    "fedavg_worker_config",
    "run_fedavg",
    "task_evaluator",
    "task_initial_arrays",
]

#: Evaluation callback: ``(server_round, arrays) -> MetricRecord | None`` (Flower's).
EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


def fedavg_worker_config(config: RunConfig) -> RunConfig:
    """What FedAvg's clients train with: local SGD with the run's schedule and no relay
    learning-rate correction (``algorithm="allreduce"``: exact averaging)."""
    return config.replace(algorithm="allreduce", topology=None, drop_probability=0.0)


def task_initial_arrays(task: Task, config: RunConfig) -> ArrayRecord:
    """The shared initial model of ``task`` (``task.init_model(config.seed)``) in the
    order of the ready clients' ``get_parameters``."""
    from relayfl.engine import FunctionalModel
    from relayfl.relay import unpack

    fm = FunctionalModel(task.init_model(config.seed), task.loss_fn)
    return ndarrays_to_record([t.numpy() for t in unpack(fm.x0, fm.layout).values()])


def task_evaluator(task: Task, config: RunConfig) -> EvaluateFn:
    """A server-side ``evaluate_fn``: accuracy and loss of the global model on the
    task's test set (the same test set every relay worker is evaluated on)."""
    from relayfl.worker import LocalWorker

    worker: list[LocalWorker] = []

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        if not worker:
            worker.append(LocalWorker(task, fedavg_worker_config(config), 0))
        flat, _ = arrays_to_flat(arrays)
        acc, loss = worker[0].evaluate(flat.to(worker[0].x0.dtype))
        return MetricRecord({"accuracy": acc, "loss": loss})

    return evaluate


def client_evaluator(
    client: ClientApp | ClientFn,
    config: RunConfig,
    *,
    initial_arrays: ArrayRecord | None = None,
    run_config: Mapping[str, Any] | None = None,
) -> EvaluateFn:
    """An ``evaluate_fn`` for a user's client without a server-side test set: the global
    model evaluated by every client's own ``evaluate`` (in this process, partition
    ``p`` of ``num_clients``), as each relay worker evaluates its model; returns
    ``accuracy`` (mean over clients), ``worst-accuracy``, ``loss`` and the per-client
    ``accuracies`` / ``losses``."""
    from relayfl.flower.trainers import LOSS_KEYS, accuracy_of, as_trainer

    trainer = as_trainer(client, initial_arrays)
    n = config.num_clients
    user_config = client_run_config(config, run_config)
    contexts = [partition_context(p, n, user_config) for p in range(n)]
    settings = fedavg_worker_config(config).to_flower()

    kept: list[dict[str, Any]] = []

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        acc, loss = [], []
        for p in range(n):
            ev = trainer.evaluate(arrays, {**settings, "server-round": server_round}, contexts[p])
            acc.append(accuracy_of(ev, config.accuracy_key))
            loss.append(scalar(ev, LOSS_KEYS))
            # as on the relay paths: the round whose message found the model evaluated
            row = {"round": server_round + 1, "partition-id": p}
            kept.append({**row, "evaluate": json_metrics(client_metrics(ev))})
        return MetricRecord(
            {
                "accuracy": float(np.mean(acc)),
                "worst-accuracy": float(np.min(acc)),
                "loss": float(np.mean(loss)),
                "accuracies": [float(a) for a in acc],
                "losses": [float(v) for v in loss],
            }
        )

    evaluate.client_metrics = kept  # type: ignore[attr-defined]  # run_fedavg keeps them
    return evaluate


class _CheckedFedAvg(FedAvg):
    """Flower's FedAvg that fails loudly: any error reply or missing reply raises
    (Flower's own logs them and carries on, which ends in an empty result)."""

    def __init__(
        self,
        num_nodes: int,
        *,
        worker_config: RunConfig | None = None,
        run_config: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_nodes = num_nodes
        self.worker_config = worker_config
        self.run_config = dict(run_config or {})
        self.last_train_metrics: MetricRecord | None = None
        self.last_lr = math.nan
        self.sizes: list[int] = []
        self.client_metrics: list[dict[str, Any]] = []
        #: Local steps so far: the clients' mean reported ``num-steps``, else local-steps.
        self.steps = 0.0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's, plus ``round-lr`` in the config and the user's run config record."""
        wcfg = self.worker_config
        if wcfg is not None:
            self.last_lr = round_lr(wcfg, self.sizes, (server_round - 1) * wcfg.local_steps)
            config["round-lr"] = self.last_lr
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if self.run_config:
            for msg in messages:
                msg.content[RUN_CONFIG] = config_record(self.run_config)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        for msg in replies:
            if msg.has_error():
                raise reply_error(msg, f"FedAvg round {server_round}")
        if len(replies) < self.num_nodes:
            raise FlowerRunError(
                f"FedAvg round {server_round}: {len(replies)} of {self.num_nodes} nodes "
                "replied in time; raise the timeout or check the SuperNodes"
            )
        arrays, metrics = super().aggregate_train(server_round, replies)
        self.last_train_metrics = metrics
        sizes, fits = {}, []
        for msg in replies:
            fit = dict(next(iter(msg.content.metric_records.values()), {}))
            if FIT_METRICS in msg.content:  # every metric the client reported (str, bool, ..)
                fit = dict(msg.content[FIT_METRICS])  # type: ignore[arg-type]
            fits.append(fit)
            row: dict[str, Any] = {"round": server_round}
            if PARTITION in msg.content:
                row["partition-id"] = int(msg.content[PARTITION]["partition-id"])  # type: ignore[index]
            else:  # a SuperNode of a plain Flower app: its node id
                row["node"] = msg.metadata.src_node_id
            sizes[row.get("partition-id", row.get("node"))] = int(fit.get("num-examples", 0))
            self.client_metrics.append({**row, "fit": fit})
        self.sizes = [sizes[k] for k in sorted(sizes)]  # in partition order
        local = self.worker_config.local_steps if self.worker_config else 1
        self.steps += steps_taken(fits, local)  # as RelayRecorder counts them
        return arrays, metrics


def _legacy_strategy(num_nodes: int, **kwargs: Any) -> Any:
    from flwr.server.strategy import FedAvg as LegacyFedAvg

    class _CheckedLegacyFedAvg(LegacyFedAvg):
        """Legacy FedAvg that raises on failures instead of skipping the round."""

        last_train_metrics: dict[str, Any] | None = None

        def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
            if failures or len(results) < num_nodes:
                first = failures[0] if failures else "a client did not reply in time"
                why = first if isinstance(first, BaseException | str) else first[1].status
                raise FlowerRunError(
                    f"FedAvg round {server_round}: {len(results)} of {num_nodes} clients "
                    f"trained; first failure: {last_line(str(why))}"
                )
            params, metrics = super().aggregate_fit(server_round, results, failures)
            self.last_train_metrics = metrics
            return params, metrics

    return _CheckedLegacyFedAvg(**kwargs)


def _weighted_metrics(pairs: list[tuple[int, Mapping[str, Any]]]) -> dict[str, float]:
    """Example-weighted mean of every numeric metric (legacy fit_metrics_aggregation_fn)."""
    total = sum(n for n, _ in pairs) or 1
    keys = {k for _, m in pairs for k, v in m.items() if isinstance(v, int | float)}
    return {k: sum(n * float(m.get(k, 0.0)) for n, m in pairs) / total for k in sorted(keys)}


def run_fedavg(
    client: ClientApp | ClientFn,
    config: RunConfig | None = None,
    *,
    task: Task | None = None,
    initial_arrays: ArrayRecord | None = None,
    evaluate_fn: EvaluateFn | None = None,
    train_config: Mapping[str, Any] | None = None,
    run_config: Mapping[str, Any] | None = None,
    client_resources: Mapping[str, float] | None = None,
    timeout: float = 600.0,
    quiet: bool = False,
) -> RunResult:
    """FedAvg with Flower's strategy on Flower's simulation engine.

    Parameters
    ----------
    client : ClientApp or client_fn
        Any Flower client, run unchanged with ``flwr.serverapp.strategy.FedAvg``: a
        Message-API ``ClientApp`` (e.g. ``clients.digits.app``) as it is; a
        ``client_fn(context) -> NumPyClient`` or a ``ClientApp(client_fn=...)`` inside
        :class:`RelayClientApp`, which answers Flower's Message-API ``train`` and
        ``evaluate`` with the client's ``fit`` and ``evaluate``.
    config : RunConfig, optional
        ``num_clients`` SuperNodes, all sampled every round; ``steps / local_steps``
        rounds of ``local_steps`` local steps; evaluation every ``eval_every`` steps
        and at the end. The clients receive it in every train config (kebab-case keys,
        with ``local-steps`` and ``server-round``), as :func:`fedavg_worker_config`.
    task : Task, optional
        Gives the initial model and the server-side evaluation on its test set.
    initial_arrays : ArrayRecord, optional
        Default: from ``task``, else partition 0's client's ``get_parameters`` (asked
        in this process, as relay runs do); a Message-API ``ClientApp`` needs it.
    evaluate_fn : callable ``(server_round, arrays) -> MetricRecord``, optional
        Server-side evaluation (``accuracy``, ``loss``); default: from ``task``.
    train_config : mapping, optional
        Extra entries of every train config. Every train config also holds
        ``server-round``, ``local-steps`` and ``round-lr`` (relayfl's schedule at the
        round's first step, no relay correction).
    run_config : mapping, optional
        The clients' ``context.run_config``
        (:func:`relayfl.flower.protocol.client_run_config`).
    client_resources : mapping, optional
        Ray resources per ClientApp (default 1 CPU).
    timeout : float
        Seconds to wait for one round's replies.
    quiet : bool (default: False)
        Show only Flower's warnings.

    Returns
    -------
    RunResult
        ``config["algorithm"] == "fedavg"``, ``engine="flower-simulation"``;
        ``extra["round_times"]``: seconds from the call to the end of each round
        (index 0: before round 1); ``extra["client_metrics"]``: each node's train
        metrics per round; ``wall_s`` includes Ray's start and stop.

    Raises
    ------
    ConfigError
        Before Ray starts: no evaluation, or no initial model to be had.
    FlowerRunError
        When a client fails or does not answer, or the simulation crashes.
    """
    config = config or RunConfig()
    started = time.perf_counter()
    n = config.num_clients
    rounds = num_rounds(config)
    wcfg = fedavg_worker_config(config)
    if evaluate_fn is None:
        if task is None:
            raise ConfigError(
                "run_fedavg needs a task (its test set evaluates the global model) or an "
                "evaluate_fn(server_round, arrays) -> MetricRecord"
            )
        evaluate_fn = task_evaluator(task, config)
    if initial_arrays is None and task is not None:
        initial_arrays = task_initial_arrays(task, config)
    settings = {**wcfg.to_flower(), "local-steps": config.local_steps, **(train_config or {})}
    if run_config and "local-epochs" in run_config:
        settings["local-epochs"] = run_config["local-epochs"]
    user_config = client_run_config(config, run_config)
    # RelayClientApp passes the user's run config on, and answers the Message API for a
    # NumPyClient (a ClientApp(client_fn=...) alone gets Flower's KeyError 'fitins')
    client_app: ClientApp
    if isinstance(client, RelayClientApp):
        client_app = client
    elif isinstance(client, ClientApp):
        client_app = RelayClientApp(app=client)
    else:
        client_app = RelayClientApp(client_fn=client)
    if initial_arrays is None:
        trainer = app_trainer(client_app)
        if not can_give_initial(trainer):
            raise ConfigError(NO_INITIAL)
        initial_arrays = trainer.initial_arrays(settings, partition_context(0, n, user_config))
    state: dict[str, Any] = {"grid": None, "strategy": None}
    evaluations: list[EvalRecord] = []
    round_times: list[float] = []

    def record(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        round_times.append(time.perf_counter() - started)
        if not eval_due(server_round, config, rounds):
            return None
        metrics = evaluate_fn(server_round, arrays)
        if metrics is None:
            return None
        acc = scalar(metrics, ("accuracy",))
        loss = scalar(metrics, ("loss",))
        accs = list(metrics.get("accuracies", [acc] * n))  # per client, when evaluated so
        losses = list(metrics.get("losses", [loss] * n))
        grid: CountingGrid = state["grid"]
        nodes = sorted(grid.get_node_ids())
        strategy = state["strategy"]
        trained = getattr(strategy, "last_train_metrics", None) or {}
        steps = strategy.steps if strategy is not None else 0.0
        if task is not None:  # the simulator's epoch: the task's mean partition
            local_epochs, sizes = None, [len(task.x_train) / n]
        else:
            user_epochs = (run_config or {}).get("local-epochs")
            local_epochs = float(user_epochs) if user_epochs is not None else None
            sizes = strategy.sizes if strategy is not None else []
        epoch = client_epoch(steps, server_round, local_epochs, sizes, config.batch_size)
        evaluations.append(
            EvalRecord(
                step=round(steps),
                round=server_round,
                epoch=epoch,
                lr=0.0 if server_round == 0 else _round_lr(trained, state["strategy"]),
                mean_accuracy=acc,
                worst_accuracy=float(np.min(accs)),
                best_accuracy=float(np.max(accs)),
                mean_loss=loss,
                worst_loss=float(np.max(losses)),
                train_loss=scalar(trained, TRAIN_LOSS_KEYS),
                consensus_distance=0.0,
                accuracies=[float(a) for a in accs],
                losses=[float(v) for v in losses],
                bytes_sent=[grid.sent.get(i, 0) for i in nodes],
                bytes_received=[grid.received.get(i, 0) for i in nodes],
                wall_s=time.perf_counter() - started,
            )
        )
        return metrics

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cgrid = state["grid"] = CountingGrid(grid)
        cgrid.wait_for_nodes(n, timeout=120.0)
        strategy = state["strategy"] = _CheckedFedAvg(
            n,
            worker_config=wcfg,
            run_config=user_config,
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=n,
            min_evaluate_nodes=0,
            min_available_nodes=n,
        )
        strategy.start(
            grid=cgrid,
            initial_arrays=initial_arrays,  # type: ignore[arg-type]
            num_rounds=rounds,
            timeout=timeout,
            train_config=ConfigRecord(dict(config_record(settings))),
            evaluate_fn=record,
        )

    run_simulation(app, client_app, n, client_resources=client_resources, quiet=quiet)
    if len(round_times) < rounds + 1:
        raise FlowerRunError(
            f"FedAvg finished {max(len(round_times) - 1, 0)} of {rounds} rounds; see the "
            "Flower log above"
        )
    cfg = config.to_dict()
    cfg.update(algorithm="fedavg", topology="star")
    return RunResult(
        config=cfg,
        evaluations=evaluations,
        topology={"name": "star", "server": "Flower SuperLink (FedAvg aggregates there)"},
        versions=library_versions("flwr", "ray"),
        task={"name": task.name, **task.info}
        if task is not None
        else {
            "name": describe_client(client),
            "partition": "the client's own (partition-id of num-partitions)",
            "partition_sizes": list(getattr(state["strategy"], "sizes", [])),
        },
        wall_s=time.perf_counter() - started,
        engine="flower-simulation",
        extra={
            "strategy": "flwr.serverapp.strategy.FedAvg",
            "round_times": round_times,
            "num_supernodes": n,
            "client_metrics": sorted(
                [
                    {**row, "fit": json_metrics(row["fit"])}
                    for row in getattr(state["strategy"], "client_metrics", [])
                ]
                + list(getattr(evaluate_fn, "client_metrics", [])),  # client_evaluator's
                key=lambda row: (row["round"], row.get("partition-id", -1)),
            ),
        },
    )


def _round_lr(trained: Mapping[str, Any], strategy: Any) -> float:
    """The lr the clients report, else the ``round-lr`` the round's config carried."""
    lr = scalar(trained, ("lr",))
    return getattr(strategy, "last_lr", math.nan) if math.isnan(lr) else lr
