"""One worker's local training: a single row of the simulator, for nodes and Flower clients.

:class:`LocalWorker` draws the same keyed batches and dropout masks, uses the same
functional model, optimizer and learning-rate schedule as :func:`relayfl.simulate`, so a
deployed node (or a Flower client) that trains worker ``i`` reproduces row ``i`` of a
simulation on the same seed (up to float summation order between vmap and a loop).
"""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
import numpy as np
import torch
from torch import Tensor

from relayfl.config import RunConfig
from relayfl.engine import FunctionalModel, LoopEngine
from relayfl.errors import ConfigError
from relayfl.optim import make_optimizer
from relayfl.simulation import (
    ClientData,
    check_model,
    dropout_masks,
    lr_schedule,
    make_partitions,
)
from relayfl.task import Task

__all__ = ["LocalWorker"]


class LocalWorker:
    """Local SGD/Adam steps and evaluation for one worker of a run.

    Parameters
    ----------
    task : Task
    config : RunConfig
        The run's config (every worker of a run holds the same one).
    client : int
        This worker's id, ``0 <= client < config.num_clients``.
    parts : list of numpy arrays, optional
        The run's partitions (default: :func:`relayfl.simulation.make_partitions`).
    graphs : tuple of networkx.Graph, optional
        The run's topology, for the relay learning-rate correction (default: built
        from the config).

    Attributes
    ----------
    x0 : Tensor[d]
        The shared initial model (flat).
    layout : relay.Layout
        How the flat vector maps to the model's named parameters.
    """

    def __init__(
        self,
        task: Task,
        config: RunConfig,
        client: int,
        *,
        parts: list[np.ndarray] | None = None,
        graphs: Sequence[nx.Graph] | None = None,
    ) -> None:
        if not 0 <= client < config.num_clients:
            raise ConfigError(
                f"client id {client} is outside 0..{config.num_clients - 1}; "
                f"pass an id below --clients {config.num_clients}"
            )
        self.task, self.config, self.client = task, config, client
        device = torch.device(config.device)
        self.device = device
        parts = parts if parts is not None else make_partitions(task, config)
        if graphs is None:
            graphs = config.build_graphs()
        self.lr_at, self.lr_correction, self.steps_per_epoch = lr_schedule(
            config, parts, tuple(graphs)
        )
        self.fm = FunctionalModel(task.init_model(config.seed), task.loss_fn).to(device)
        self.x0: Tensor = self.fm.x0
        self.layout = self.fm.layout
        self.data = ClientData.from_task(task, parts, config, device)
        self.num_samples = len(parts[client])
        self.engine = LoopEngine(self.fm)
        self.optimizer = make_optimizer(
            config.optimizer,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.nesterov,
        )
        sample, _ = self.data.client_batch(client, 0)
        check_model(task, self.fm, sample)
        self._shapes = self.fm.dropout_shapes(sample)

    def train(self, x: Tensor, step: int, num_steps: int = 1) -> tuple[Tensor, float]:
        """Run ``num_steps`` local steps from global step ``step``.

        Parameters
        ----------
        x : Tensor[d]
            The model at the start (flat).
        step : int
            Index of the first step (keys the batches, masks and learning rate).

        Returns
        -------
        x_half, loss : Tensor[d], float
            The model after the local steps and the mean training loss.
        """
        row = self.fm.freeze(x.to(self.device).unsqueeze(0))  # [1, d]
        losses = []
        for s in range(step, step + num_steps):
            xb, yb = self.data.client_batch(self.client, s)
            masks = dropout_masks(
                self.fm, self._shapes, self.config.seed, [self.client], s, self.device
            )
            g, loss = self.engine.grads(row, xb.unsqueeze(0), yb.unsqueeze(0), masks)  # [1, d]
            row = self.fm.freeze(row + self.optimizer.update(row, g, self.lr_at(s)))
            losses.append(float(loss[0]))
        return row[0], float(np.mean(losses))

    def evaluate(self, x: Tensor, *, limit: int | None = None) -> tuple[float, float]:
        """Accuracy and mean loss of model ``x`` [d] on the task's test set."""
        limit = limit if limit is not None else self.config.eval_limit
        xt = self.task.x_test[:limit].to(self.device)
        yt = self.task.y_test[:limit].to(self.device)
        acc, loss = self.engine.evaluate(x.to(self.device).unsqueeze(0), xt, yt)
        return float(acc[0]), float(loss[0])

    def state_dict(self) -> dict:
        """Optimizer state (momentum buffers) for checkpoints."""
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
