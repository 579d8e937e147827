"""Flower clients built from a relayfl ``Task``: what the ready clients in ``clients/`` are.

:class:`TaskClient` trains one partition with :class:`relayfl.worker.LocalWorker` (the
simulator's keyed batches, model, optimizer and schedule), so worker ``i`` on Flower
reproduces row ``i`` of ``relayfl simulate`` on the same seed. Its settings come, in
increasing priority, from relayfl's defaults, ``context.run_config`` (``flwr run``'s
``[tool.flwr.app.config]``), the node config (``partition-id``, ``num-partitions``) and
each message's config (what relayfl's servers send, kebab-case ``RunConfig`` keys plus
``server-round`` and ``local-steps``).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.client import Client, NumPyClient

from relayfl.config import RunConfig
from relayfl.errors import ConfigError
from relayfl.flower.client import RelayClientApp
from relayfl.flower.trainers import partition_of
from relayfl.optim import make_optimizer
from relayfl.relay import unpack
from relayfl.simulation import make_partitions
from relayfl.task import DATASETS, Task, builtin
from relayfl.worker import LocalWorker

__all__ = ["ReadyClient", "TaskClient", "load_task", "ready_client", "task_app", "task_client_fn"]

_OPTIM_ARRAYS = "relayfl.optimizer"
_OPTIM_META = "relayfl.optimizer-meta"
_WORKERS: OrderedDict[tuple[RunConfig, int], LocalWorker] = OrderedDict()
_MAX_WORKERS = 64


@functools.lru_cache(maxsize=8)
def _task(
    name: str, root: str | None, model: str | None, limit: int | None, dropout: float
) -> Task:
    return builtin(name, root=root, model=model, limit_test=limit, dropout=dropout)


def load_task(dataset: str, config: RunConfig | None = None) -> Task:
    """The dataset's :class:`Task`, as ``relayfl simulate`` builds it for ``config``
    (cached per process)."""
    config = config or RunConfig(dataset=dataset)
    return _task(dataset, config.data_root, config.model, config.eval_limit, config.dropout)


@functools.lru_cache(maxsize=16)
def _partitions(config: RunConfig) -> list[np.ndarray]:
    return make_partitions(load_task(config.dataset, config), config)


def _worker(config: RunConfig, client: int) -> LocalWorker:
    """One worker per (config, client) and process; Ray actors serve many nodes."""
    key = (config, client)
    worker = _WORKERS.get(key)
    if worker is None:
        task = load_task(config.dataset, config)
        worker = LocalWorker(task, config, client, parts=_partitions(config))
        _WORKERS[key] = worker
        while len(_WORKERS) > _MAX_WORKERS:
            _WORKERS.popitem(last=False)
    else:
        _WORKERS.move_to_end(key)
    return worker


class TaskClient(NumPyClient):
    """A Flower ``NumPyClient`` that trains one Dirichlet partition of a relayfl task.

    Parameters
    ----------
    dataset : str
        ``digits``, ``fashion-mnist`` or ``cifar10``.
    context : Context
        Flower's context: ``node_config`` gives ``partition-id`` / ``num-partitions``;
        ``state`` keeps the optimizer buffers between rounds.

    Notes
    -----
    ``fit`` runs ``config["local-steps"]`` steps starting at global step
    ``(server-round - 1) * local-steps`` (the step keys the batches and the learning
    rate), and reports ``num-examples`` (the partition size), ``train-loss`` and ``lr``.
    ``evaluate`` uses the whole test set, as every simulated worker does.
    """

    def __init__(self, dataset: str, context: Context) -> None:
        self.dataset = dataset
        self.context = context
        self.partition_id, num = partition_of(context)
        base = RunConfig(dataset=dataset, num_clients=num if num > 0 else RunConfig().num_clients)
        self.base = RunConfig.from_flower(context.run_config, base=base)

    def run_config(self, config: dict[str, Any]) -> RunConfig:
        """This round's settings (message config over run config over defaults)."""
        rc = RunConfig.from_flower(config, base=self.base)
        return rc if rc.dataset == self.dataset else rc.replace(dataset=self.dataset)

    def _flat(self, parameters: list[np.ndarray], worker: LocalWorker) -> torch.Tensor:
        flat = torch.cat([torch.as_tensor(np.asarray(a)).reshape(-1) for a in parameters])
        if flat.numel() != worker.layout.numel:
            raise ConfigError(
                f"got {flat.numel()} parameters, the {self.dataset} model has "
                f"{worker.layout.numel}; send this client's own model (get_parameters)"
            )
        return flat.to(worker.x0.dtype)

    @staticmethod
    def _arrays(flat: torch.Tensor, worker: LocalWorker) -> list[np.ndarray]:
        return [t.detach().cpu().numpy() for t in unpack(flat, worker.layout).values()]

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        worker = _worker(self.run_config(config), self.partition_id)
        return self._arrays(worker.x0, worker)

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        rc = self.run_config(config)
        worker = _worker(rc, self.partition_id)
        local_steps = int(config.get("local-steps", rc.local_steps))
        step = (int(config.get("server-round", 1)) - 1) * local_steps
        self._load_optimizer(worker, rc)
        x_half, loss = worker.train(self._flat(parameters, worker), step, local_steps)
        self._save_optimizer(worker)
        metrics = {"train-loss": loss, "lr": worker.lr_at(step + local_steps - 1)}
        return self._arrays(x_half, worker), worker.num_samples, metrics

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        rc = self.run_config(config)
        worker = _worker(rc, self.partition_id)
        acc, loss = worker.evaluate(self._flat(parameters, worker))
        return loss, len(worker.task.x_test[: rc.eval_limit]), {"accuracy": acc}

    # The optimizer state (momentum, Adam moments) lives in context.state, not in the
    # cached worker: Ray actors and flwr-clientapp processes serve many nodes and rounds.
    def _load_optimizer(self, worker: LocalWorker, rc: RunConfig) -> None:
        fresh = make_optimizer(
            rc.optimizer, momentum=rc.momentum, weight_decay=rc.weight_decay, nesterov=rc.nesterov
        ).state_dict()
        state = self.context.state
        if _OPTIM_ARRAYS in state:
            arrays: ArrayRecord = state[_OPTIM_ARRAYS]  # type: ignore[assignment]
            for k, a in arrays.items():
                fresh[k] = torch.from_numpy(a.numpy())
        if _OPTIM_META in state:
            fresh.update(dict(state[_OPTIM_META]))  # type: ignore[arg-type]
        worker.load_state_dict({"optimizer": fresh})

    def _save_optimizer(self, worker: LocalWorker) -> None:
        opt = worker.state_dict()["optimizer"]
        tensors = {k: v for k, v in opt.items() if isinstance(v, torch.Tensor)}
        meta = {k: v for k, v in opt.items() if isinstance(v, int | float)}
        if tensors:
            self.context.state[_OPTIM_ARRAYS] = ArrayRecord(
                {k: Array(v.detach().cpu().numpy()) for k, v in tensors.items()}
            )
        if meta:
            self.context.state[_OPTIM_META] = ConfigRecord(meta)


def task_client_fn(dataset: str) -> Callable[[Context], Client]:
    """Flower's ``client_fn(context)`` for a ready client of ``dataset``."""

    def client_fn(context: Context) -> Client:
        return TaskClient(dataset, context).to_client()

    client_fn.__name__ = f"{dataset.replace('-', '_')}_client_fn"
    return client_fn


def task_app(dataset: str) -> RelayClientApp:
    """A :class:`RelayClientApp` of ``dataset``'s :class:`TaskClient`: relay and FedAvg."""
    return RelayClientApp(client_fn=task_client_fn(dataset))


class ReadyClient(NamedTuple):
    """What a ready client module in ``clients/`` exports for one dataset."""

    task: Callable[[RunConfig | None], Task]
    """``task(config)``: the fast simulator's :class:`Task` (:func:`load_task`)."""
    client_fn: Callable[[Context], Client]
    """Flower's ``client_fn``: the :class:`TaskClient` of ``partition-id``."""
    app: RelayClientApp
    """The ``ClientApp``: RelaySGD through relayfl's ServerApp, and Flower's FedAvg."""


def ready_client(dataset: str) -> ReadyClient:
    """The ``task``, ``client_fn`` and ``app`` of ``dataset``'s ready client.

    ``clients/digits.py`` is ``task, client_fn, app = ready_client("digits")``, so
    ``flwr run`` names ``clients.digits:app``.
    """
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")

    def task(config: RunConfig | None = None) -> Task:
        return load_task(dataset, config)

    task.__doc__ = f"The {dataset} :class:`relayfl.Task` (one definition for every engine)."
    client_fn = task_client_fn(dataset)
    return ReadyClient(task, client_fn, RelayClientApp(client_fn=client_fn))
