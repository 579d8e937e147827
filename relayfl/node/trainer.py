"""What a node trains: the :class:`Trainer` protocol and :func:`load_trainer`.

The one place that decides how a ``--client`` is loaded (a built-in dataset, a
:class:`~relayfl.task.Task`, or a Flower client through :class:`FlowerTrainer`).
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import sys
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from relayfl.config import RunConfig
from relayfl.errors import ConfigError, DivergenceError
from relayfl.task import Task

__all__ = ["FlowerTrainer", "Trainer", "load_trainer"]


@runtime_checkable
class Trainer(Protocol):
    """One worker's local training, as a node drives it (``LocalWorker`` is one).

    Attributes
    ----------
    x0 : Tensor[d]
        The initial model, flat (every node of a run must start from the same one).
    """

    x0: Tensor

    def train(self, x: Tensor, step: int, num_steps: int = 1) -> tuple[Tensor, float]:
        """``num_steps`` local steps from model ``x`` at global step ``step``;
        returns the new model and the mean training loss."""

    def evaluate(self, x: Tensor) -> tuple[float, float]:
        """Test accuracy and loss of model ``x``."""

    def state_dict(self) -> dict:
        """Local state to checkpoint (optimizer buffers)."""

    def load_state_dict(self, state: dict) -> None: ...


class FlowerTrainer:
    """A Flower client as a :class:`Trainer`, through :mod:`relayfl.flower`'s adapter.

    Takes what :func:`relayfl.flower.trainers.as_trainer` takes: a ``client_fn(context)``
    returning a ``NumPyClient`` (or ``Client``), any Flower ``ClientApp`` (a
    :class:`relayfl.flower.RelayClientApp` such as ``clients.digits:app``, a
    ``ClientApp(client_fn=...)``, or a Message-API ``ClientApp``), or a NumPyClient
    instance. The node keeps one Flower ``Context`` (``partition-id`` = node id,
    ``run_config`` = :func:`relayfl.flower.protocol.client_run_config`) whose ``state``
    persists across rounds, as on a SuperNode. ``fit`` gets ``server-round`` (round +
    1), ``local-steps``, ``step`` and ``round-lr`` (the learning rate relayfl's own
    worker would use at ``step``, the epoch taken from this client's ``num-examples``).

    Parameters
    ----------
    client : client_fn, ClientApp or NumPyClient
    config : RunConfig
    node : int
    initial : ArrayRecord or path, optional
        The initial model (``--initial FILE``: :func:`relayfl.flower.inputs.load_initial`);
        default: the client's own (``get_parameters``).
    run_config : mapping, optional
        The user's ``context.run_config`` entries (``--run-config``).

    Raises
    ------
    ConfigError
        When no initial model can be had (a Message-API app without ``initial``).
    """

    def __init__(
        self,
        client: Any,
        config: RunConfig,
        node: int,
        *,
        initial: Any = None,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        from relayfl.flower.client import describe_client
        from relayfl.flower.inputs import load_initial
        from relayfl.flower.records import arrays_to_flat
        from relayfl.flower.trainers import NO_INITIAL, as_trainer, can_give_initial

        if callable(getattr(client, "fit", None)) and callable(
            getattr(client, "get_parameters", None)
        ):
            instance = client
            client = lambda context: instance  # noqa: E731 - a client_fn for one client
        if isinstance(initial, str | os.PathLike):
            initial = load_initial(initial)
        self._trainer = as_trainer(client, initial)
        if not can_give_initial(self._trainer):
            raise ConfigError(NO_INITIAL)
        self.config = config
        self.user_config = dict(run_config or {})
        self.context = _flower_context(node, config, self.user_config)
        self._base = dict(config.to_flower())
        self._like = self._trainer.initial_arrays(self._base, self.context)
        self.x0, self.layout = arrays_to_flat(self._like)
        self.num_samples = 0
        #: False after a fit that reported no training loss (NaN is then no divergence).
        self.reports_loss = True
        #: Local steps so far: the client's reported ``num-steps``, else ``local-steps``.
        self.steps = 0.0
        self.node = node
        self._rounds = 0
        #: Every metric the client reported, per round (``results.json`` extra).
        self.client_metrics: list[dict[str, Any]] = []
        #: The user's task in ``results.json`` (name, data size from ``num-examples``).
        self.task_info: dict[str, Any] = {
            "name": describe_client(client),
            "partition": "the client's own (partition-id of num-partitions)",
        }

    def _arrays(self, x: Tensor) -> Any:
        from relayfl.flower.records import flat_to_arrays

        # a copy: the client may change its arrays in place, the node's model must not move
        return flat_to_arrays(x.detach().cpu().clone(), self.layout, self._like)

    def train(self, x: Tensor, step: int, num_steps: int = 1) -> tuple[Tensor, float]:
        from relayfl.flower.protocol import steps_taken
        from relayfl.flower.records import arrays_to_flat, client_metrics, json_metrics, scalar
        from relayfl.flower.trainers import TRAIN_LOSS_KEYS

        config = {
            **self._base,
            "server-round": step // num_steps + 1,
            "local-steps": num_steps,
            "step": step,
            "round-lr": self.lr_at(step),
        }
        if "local-epochs" in self.user_config:
            config["local-epochs"] = self.user_config["local-epochs"]
        arrays, metrics = self._trainer.fit(self._arrays(x), config, self.context)
        self._like = arrays
        self.num_samples = int(metrics.get("num-examples", 0))
        self.steps += steps_taken([metrics], num_steps)
        flat, _ = arrays_to_flat(arrays)
        if not bool(torch.isfinite(flat).all()):
            raise DivergenceError(
                f"training diverged at step {step}: the client's fit returned non-finite "
                f"parameters at lr {config['round-lr']:g}; lower --lr"
            )
        loss = scalar(metrics, TRAIN_LOSS_KEYS)
        self.reports_loss = not math.isnan(loss)
        self._rounds += 1
        fit = json_metrics(client_metrics(metrics))
        self.client_metrics.append({"round": self._rounds, "partition-id": self.node, "fit": fit})
        return flat.to(x.dtype), loss

    def evaluate(self, x: Tensor) -> tuple[float, float]:
        from relayfl.flower.records import client_metrics, json_metrics, scalar
        from relayfl.flower.trainers import LOSS_KEYS, accuracy_of

        config = {**self._base, "server-round": self._rounds + 1}  # as node_step's
        ev = self._trainer.evaluate(self._arrays(x), config, self.context)
        row = {"round": self._rounds + 1, "partition-id": self.node}
        self.client_metrics.append({**row, "evaluate": json_metrics(client_metrics(ev))})
        return accuracy_of(ev, self.config.accuracy_key), scalar(ev, LOSS_KEYS)

    def progress(self, rounds: int) -> tuple[int, float]:
        """``(step, epoch)`` after ``rounds`` rounds, from what the client reported
        (:func:`relayfl.flower.protocol.client_epoch`), as on the other Flower paths."""
        from relayfl.flower.protocol import client_epoch

        local_epochs = self.user_config.get("local-epochs")
        # per round as reported, times the run's rounds: a node that resumed from a
        # checkpoint and caught up with its neighbours trained fewer rounds itself
        per_round = self.steps / self._rounds if self._rounds else self.config.local_steps
        steps = per_round * rounds
        sizes = [self.num_samples]
        epoch = client_epoch(steps, rounds, float(local_epochs or 0), sizes, self.config.batch_size)
        return round(steps), epoch

    def lr_at(self, step: int) -> float:
        """The ``round-lr`` sent at ``step`` (results' ``lr``, as on the other paths)."""
        from relayfl.flower.protocol import round_lr

        return round_lr(self.config, [self.num_samples], step)

    def state_dict(self) -> dict:
        return {"context_state": self.context.state, "steps": self.steps, "rounds": self._rounds}

    def load_state_dict(self, state: dict) -> None:
        if "context_state" in state:
            self.context.state = state["context_state"]
        self.steps = float(state.get("steps", self.steps))
        self._rounds = int(state.get("rounds", self._rounds))


def _import(spec: str) -> Any:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(
            f"--client {spec!r} is not module:attribute; write e.g. clients.digits:client_fn"
        )
    sys.path.insert(0, os.getcwd()) if os.getcwd() not in sys.path else None
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"cannot import {module_name!r} for --client {spec!r} ({err}); run from the "
            "folder that holds it, or install it"
        ) from None
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    return obj


def _flower_context(node: int, config: RunConfig, run_config: Mapping[str, Any]) -> Any:
    """A Flower ``Context`` for node ``node`` (``partition-id`` = the node id)."""
    from relayfl.flower.protocol import client_run_config, partition_context

    return partition_context(
        node, config.num_clients, client_run_config(config, run_config), node_id=node
    )


def load_trainer(
    client: str | Any | None,
    config: RunConfig,
    node: int,
    *,
    initial: Any = None,
    run_config: Mapping[str, Any] | None = None,
) -> Trainer:
    """The trainer a node runs: the one place that decides how a client is loaded.

    Parameters
    ----------
    client : str, object or None
        None: the built-in dataset of ``config`` on the simulator's
        :class:`~relayfl.worker.LocalWorker` (so the node reproduces the simulation).
        ``"module:attribute"`` (or the object itself): a :class:`~relayfl.task.Task` or a
        factory returning one (``fn()`` or ``fn(node_id, num_nodes)``), which run on
        ``LocalWorker``; or any Flower client :class:`FlowerTrainer` takes: a
        ``client_fn(context)``, a ``RelayClientApp`` (the ready ``clients.digits:app``,
        ...) or a ``NumPyClient``. Clients are built under ``torch.manual_seed(seed)``
        so every node starts from the same initial model.
    config : RunConfig
    node : int
    initial, run_config
        For a Flower client: see :class:`FlowerTrainer` (``--initial``,
        ``--run-config``).

    Returns
    -------
    Trainer
    """
    from relayfl.worker import LocalWorker

    if client is None and (initial is not None or run_config):
        raise ConfigError(
            "--initial and --run-config are for a Flower --client; the built-in dataset "
            "starts from its own seeded model and reads the run options"
        )
    if client is None:
        return LocalWorker(config.load_task(), config, node)
    obj = _import(client) if isinstance(client, str) else client
    if isinstance(obj, Task):
        return LocalWorker(obj, config, node)
    if isinstance(obj, Trainer) and not callable(getattr(obj, "get_parameters", None)):
        return obj
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if callable(obj) and not _is_flower_client(obj):  # a factory: fn() or fn(id, n)
            made = obj(node, config.num_clients) if _positional(obj) >= 2 else obj()
            if isinstance(made, Task):
                return LocalWorker(made, config, node)
            obj = made
        trainer = FlowerTrainer(obj, config, node, initial=initial, run_config=run_config)
    if isinstance(client, str):  # the user's own words for it (an app object has no name)
        trainer.task_info["name"] = client
    return trainer


def _is_flower_client(obj: Any) -> bool:
    """A ClientApp, a NumPyClient/Client, or a ``client_fn(context)``."""
    if callable(getattr(obj, "fit", None)):
        return True
    try:
        from flwr.clientapp import ClientApp
    except ImportError:  # pragma: no cover - flwr is a dependency
        return False
    return isinstance(obj, ClientApp) or _positional(obj) == 1


def _positional(fn: Any) -> int:
    """How many positional arguments ``fn`` requires (-1 when it cannot be told)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return -1
    return sum(
        1
        for p in params
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    )
