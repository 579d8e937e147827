"""``simulate(task, config)``: N workers in one process, on CPU or one torch device.

All workers' parameters live in one flat ``Tensor[n, d]`` and their optimizer state
in tensors of the same shape. Each step: every worker draws its batch (and dropout
masks) from its keyed generators, one engine call gives all gradients, one
optimizer update serves all workers, and every ``local_steps`` steps the algorithm's
mixing step communicates (docs/algorithm.md sections 1.5, 1.6, 3).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from relayfl import divergence, partition, rng, sizes, topology
from relayfl.algorithms import Mixer, local_optimizer, make_mixer
from relayfl.checkpoint import Checkpointer, SimulationState
from relayfl.config import RunConfig
from relayfl.distributed import (
    check_same_step,
    consensus_distance,
    current_shard,
    describe_shard,
    gather_losses,
)
from relayfl.engine import FunctionalModel, make_engine
from relayfl.errors import ConfigError, DivergenceError, PartitionError, RunInterrupted
from relayfl.optim import learning_rate, schedule_notes
from relayfl.results import EvalRecord, RunResult, library_versions
from relayfl.task import Task

__all__ = [
    "ClientData",
    "Progress",
    "check_model",
    "dropout_masks",
    "lr_schedule",
    "make_partitions",
    "simulate",
]

#: Called after every step with (step, total_steps, latest evaluation or None).
Progress = Callable[[int, int, EvalRecord | None], None]


def make_partitions(task: Task, config: RunConfig) -> list[np.ndarray]:
    """The data split every algorithm sees for this task, client count, alpha and seed."""
    labels = task.partition_labels
    if config.num_clients > len(labels):
        raise PartitionError(
            f"cannot split {len(labels)} training samples over "
            f"{config.num_clients} clients; use at most {len(labels)} clients"
        )
    if config.iid:
        return partition.iid(len(labels), config.num_clients, seed=config.seed)
    parts = partition.dirichlet(
        labels, config.num_clients, config.alpha, seed=config.seed, even_split=config.even_split
    )
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        shown = ", ".join(map(str, empty[:5])) + (", ..." if len(empty) > 5 else "")
        raise PartitionError(
            f"{len(empty)} of {config.num_clients} clients get no training samples "
            f"(clients {shown}) with alpha {config.alpha} and --no-even-split; use fewer "
            "--clients, a larger --alpha, or drop --no-even-split"
        )
    return parts


def check_model(task: Task, fm: FunctionalModel, sample_inputs: Tensor) -> None:
    """Raise before training if the model cannot score ``task``'s classes.

    One forward pass in eval mode on two samples ``sample_inputs`` [B, ...]; see
    :meth:`Task.check_outputs`.
    """
    fm.model.eval()
    try:
        with torch.no_grad():
            task.check_outputs(fm.logits(fm.x0, sample_inputs[:2]))
    finally:
        fm.model.train()


@dataclass
class ClientData:
    """Each worker's partition as device tensors, with keyed batch sampling.

    A worker's epoch is ``max(size // B, 1)`` steps (``drop_last``); its order is a
    permutation drawn from generator ``(seed, client, epoch, "batch")``. A worker with
    fewer than ``B`` samples cycles through its permutation to fill the batch.
    """

    x: Tensor
    y: Tensor
    parts: list[Tensor]
    batch_size: int
    seed: int
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None

    def __post_init__(self) -> None:
        self._perm: dict[int, tuple[int, Tensor]] = {}

    @classmethod
    def from_task(
        cls, task: Task, parts: list[np.ndarray], config: RunConfig, device: torch.device | str
    ) -> ClientData:
        """The run's partitions of ``task`` as device tensors with the run's seed and batch."""
        return cls(
            task.x_train.to(device),
            task.y_train.to(device),
            [torch.as_tensor(p, dtype=torch.long, device=device) for p in parts],
            config.batch_size,
            config.seed,
            task.augment,
        )

    def indices(self, client: int, step: int) -> Tensor:
        """Tensor[B]: training indices of ``client``'s batch at ``step``."""
        part, B = self.parts[client], self.batch_size
        size = len(part)
        per_epoch = max(size // B, 1)
        epoch, k = divmod(step, per_epoch)
        cached = self._perm.get(client)
        if cached is None or cached[0] != epoch:
            gen = rng.generator(self.seed, client, epoch, "batch")
            perm = part[torch.randperm(size, generator=gen).to(part.device)]
            cached = self._perm[client] = (epoch, perm)
        perm = cached[1]
        if size >= B:
            return perm[k * B : (k + 1) * B]
        return perm.repeat(math.ceil(B / size))[:B]

    def client_batch(self, client: int, step: int) -> tuple[Tensor, Tensor]:
        """One worker's batch at ``step``: Tensor[B, ...] inputs, Tensor[B] targets."""
        idx = self.indices(client, step)
        xb, yb = self.x[idx], self.y[idx]
        if self.augment is not None:
            xb = self.augment(xb, rng.generator(self.seed, client, step, "augment"))
        return xb, yb

    def batch(self, step: int, clients: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
        """The batches of ``clients`` (default every worker): Tensor[n, B, ...] inputs and
        Tensor[n, B] targets."""
        clients = range(len(self.parts)) if clients is None else clients
        idx = torch.stack([self.indices(i, step) for i in clients])  # [n, B]
        xb, yb = self.x[idx], self.y[idx]  # [n, B, ...], [n, B]
        if self.augment is not None:
            xb = torch.stack(
                [
                    self.augment(xb[k], rng.generator(self.seed, i, step, "augment"))
                    for k, i in enumerate(clients)
                ]
            )
        return xb, yb


def dropout_masks(
    fm: FunctionalModel,
    shapes: dict[str, tuple[int, ...]],
    seed: int,
    clients: range | list[int],
    step: int,
    device: torch.device | str,
) -> dict[str, Tensor] | None:
    """Dropout masks of ``clients`` at ``step``, each from generator (seed, client, step),
    stacked to Tensor[len(clients), B, ...]; None for a model without dropout."""
    if not shapes:
        return None
    per = [
        fm.dropout_masks(shapes, rng.generator(seed, i, step, "dropout"), device) for i in clients
    ]
    return {k: torch.stack([m[k] for m in per]) for k in shapes}


def lr_schedule(
    config: RunConfig, parts: list[np.ndarray], graphs: tuple, *, notes: bool = True
) -> tuple[Callable[[int], float], float, float]:
    """The learning rate per step for this run (docs/algorithm.md 1.8).

    Returns ``(lr_at, correction, steps_per_epoch)``: the epoch is a worker's mean
    partition size over the batch size; ``correction`` is ``1 + mean delay`` for
    ``relaysgd`` with ``lr_correction`` (mean over trees), else 1. Logs one line when
    the default warm-up is capped to fit the run, and warns when an explicit
    ``warmup_epochs`` covers the whole run (:func:`relayfl.optim.schedule_notes`);
    ``notes=False`` for a caller asking every round.
    """
    correction = 1.0
    if config.lr_correction and config.algorithm == "relaysgd":
        correction = float(np.mean([topology.delay_correction(g) for g in graphs]))
    steps_per_epoch = float(np.mean([len(p) for p in parts])) / config.batch_size
    if notes and config.schedule and config.num_clients > 1:
        info, warning = schedule_notes(
            config.warmup_epochs, steps_per_epoch=steps_per_epoch, total_steps=config.steps
        )
        if info:
            logging.getLogger("relayfl.schedule").info(info)
        if warning:
            warnings.warn(warning, UserWarning, stacklevel=2)

    def lr_at(step: int) -> float:
        return learning_rate(
            step,
            base=config.lr * correction,
            steps_per_epoch=steps_per_epoch,
            total_steps=config.steps,
            warmup_epochs=config.warmup_epochs,
            milestones=config.milestones,
            world_size=config.num_clients,
            enabled=config.schedule,
        )

    return lr_at, correction, steps_per_epoch


def _drop_masks(
    mixer: Mixer, n: int, p: float, seed: int, step: int, receivers: Sequence[int] | None = None
) -> list[Tensor] | None:
    """Which messages arrive this step (section 1.4): each receiver draws for its incoming
    edges from generator ``(seed, receiver, step, "drop")``, graph by graph, by sender.
    Only the edges into ``receivers`` (default all) are drawn; the rest stay True."""
    if p <= 0 or not mixer.edges:
        return None
    incoming: list[list[tuple[int, int]]] = [[] for _ in range(n)]  # receiver -> (graph, e)
    for k, (_, dst) in enumerate(mixer.edges):
        for e, j in enumerate(dst.tolist()):
            incoming[j].append((k, e))
    keep = [torch.ones(len(dst), dtype=torch.bool) for _, dst in mixer.edges]
    for j in range(n) if receivers is None else receivers:
        if not incoming[j]:
            continue
        draws = torch.rand(len(incoming[j]), generator=rng.generator(seed, j, step, "drop"))
        for (k, e), u in zip(incoming[j], draws.tolist(), strict=True):
            keep[k][e] = u >= p
    device = mixer.edges[0][0].device
    return [m.to(device) for m in keep]


def _receivers(mixer: Mixer, clients: list[int]) -> list[int]:
    """This rank's workers and every worker one of them sends to (their drops are drawn
    by the receiver's generator, and a sender applies them)."""
    mine = set(clients)
    out = set(mine)
    for src, dst in mixer.edges:
        out.update(int(j) for i, j in zip(src.tolist(), dst.tolist(), strict=True) if i in mine)
    return sorted(out)


def simulate(
    task: Task | RunConfig | None = None,
    config: RunConfig | None = None,
    *,
    progress: Progress | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    stop: Callable[[], bool] | None = None,
) -> RunResult:
    """Run one decentralized training simulation.

    Parameters
    ----------
    task : Task, optional
        Model, loss and data. Default: the built-in dataset named by ``config.dataset``.
    config : RunConfig, optional
        Default: ``RunConfig()`` (RelaySGD, binary tree, 16 clients, alpha 0.1, digits).
    progress : callable, optional
        Called after every step as ``progress(step, total, latest_eval)``.
    checkpoint_dir : str or Path, optional
        Folder for checkpoints (:mod:`relayfl.checkpoint`), usually the run's ``--out``.
    checkpoint_every : int, default 0
        Save the full state every this many communication rounds (0: only when stopped).
    resume : bool, default False
        Continue from the checkpoint in ``checkpoint_dir``: same models and evaluations
        as a run never stopped.
    stop : callable, optional
        Checked after every step; when it returns True the run saves a checkpoint (with
        ``checkpoint_dir``) and raises :class:`relayfl.errors.RunInterrupted` carrying the
        result so far (``status="interrupted"``). The CLI sets it on SIGINT / SIGTERM.

    Returns
    -------
    RunResult

    Raises
    ------
    RunInterrupted
        ``stop()`` returned True.
    ConfigError
        ``resume`` without a matching checkpoint (none, another config, other ranks).

    Notes
    -----
    Inside a ``torch.distributed`` process group of several ranks (``torchrun``), each
    rank simulates its share of the workers (:mod:`relayfl.distributed`) and every rank
    returns the whole result (models gathered).

    Examples
    --------
    >>> import relayfl
    >>> result = relayfl.simulate(config=relayfl.RunConfig(steps=100))  # doctest: +SKIP
    >>> result.final.worst_accuracy  # doctest: +SKIP
    """
    if isinstance(task, RunConfig):
        task, config = None, task
    config = config or RunConfig()
    if task is None:
        task = config.load_task()
    started = time.perf_counter()
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {config.device!r} requested but CUDA is not available; use --device cpu"
        )
    n = config.num_clients

    graphs = config.build_graphs()
    parts = make_partitions(task, config)
    shard = current_shard(graphs, config.device)  # None in one process
    if shard is not None:
        device = shard.device
    clients = list(range(n)) if shard is None else shard.nodes.tolist()
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = Checkpointer(
            checkpoint_dir,
            checkpoint_every,
            config.to_dict(),
            rank=0 if shard is None else shard.rank,
            world_size=1 if shard is None else shard.world_size,
        )
    elif resume:
        raise ConfigError("resume=True needs checkpoint_dir (the run's --out folder)")

    fm = FunctionalModel(task.init_model(config.seed), task.loss_fn).to(device)
    if shard is None or shard.rank == 0:  # one warning per run, not one per rank
        sizes.warn_small_partitions([len(p) for p in parts], config.batch_size)
    sizes.check_memory(
        fm.model,
        task.x_train[: sizes.PROBE_BATCH].to(device),
        workers=len(clients),
        batch_size=config.batch_size,
        batched=config.engine != "loop",
        device=device,
    )
    x = fm.x0.unsqueeze(0).repeat(len(clients), 1)  # [n, d] ([n_k, d] on a rank)
    data = ClientData.from_task(task, parts, config, device)
    x_test = task.x_test[: config.eval_limit].to(device)
    y_test = task.y_test[: config.eval_limit].to(device)
    sample_inputs, _ = data.batch(0, clients[:1])
    check_model(task, fm, sample_inputs[0])
    engine = make_engine(
        fm,
        config.engine,  # type: ignore[arg-type]
        sample_inputs[0],
        autocast=torch.bfloat16 if config.precision == "bf16" else None,
        channels_last=config.channels_last,
    )
    shapes = fm.dropout_shapes(sample_inputs[0])

    mixer = make_mixer(
        config.algorithm,
        graphs,
        fm.x0,
        fill=config.fill,  # type: ignore[arg-type]
        normalization=config.normalization,
        shard=shard,
    )
    receivers = None if shard is None else _receivers(mixer, clients)
    optimizer = local_optimizer(  # the base optimizer; qgm's quasi-global SGD
        config.algorithm,
        config.optimizer,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    lr_at, correction, steps_per_epoch = lr_schedule(config, parts, graphs)
    per_round = mixer.bytes_per_round(fm.numel, fm.x0.dtype)  # [n]
    sent = torch.zeros(n, dtype=torch.int64)

    evaluations: list[EvalRecord] = []
    x_start = x
    lr, train_loss = 0.0, float("nan")

    def evaluate(step: int, rounds: int) -> EvalRecord:
        acc, loss = engine.evaluate(x, x_test, y_test)
        if shard is not None:  # every worker's numbers, in worker order
            both = shard.all_gather(torch.stack([acc.float(), loss.float()], 1))  # [n, 2]
            acc, loss = both[:, 0], both[:, 1]
        acc_l, loss_l = acc.tolist(), loss.tolist()
        consensus = consensus_distance(x, shard)
        record = EvalRecord(
            step=step,
            round=rounds,
            epoch=step / steps_per_epoch,
            lr=lr,
            mean_accuracy=float(np.mean(acc_l)),
            worst_accuracy=float(min(acc_l)),
            best_accuracy=float(max(acc_l)),
            mean_loss=float(np.mean(loss_l)),
            worst_loss=float(max(loss_l)),
            train_loss=train_loss,
            consensus_distance=consensus,
            accuracies=acc_l,
            losses=loss_l,
            bytes_sent=sent.tolist(),
            bytes_received=sent.tolist(),
            wall_s=time.perf_counter() - started,
        )
        evaluations.append(record)
        return record

    def state(step: int) -> SimulationState:
        return SimulationState(
            step, rounds, x, x_start, sent, optimizer.state_dict(), mixer.state_dict(),
            lr, train_loss, list(evaluations), time.perf_counter() - started,
        )  # fmt: skip

    def finish(status: str) -> RunResult:
        """The run so far: every step done, stopped by the user, or by divergence."""
        models = x.detach() if shard is None else shard.all_gather(x.detach())  # [n, d]
        return RunResult(
            config=config.to_dict(),
            evaluations=list(evaluations),
            topology={
                "name": config.topology_name,
                "graphs": [topology.describe(g) for g in graphs],
                "lr_correction_factor": correction,
            },
            versions=library_versions(),
            wall_s=time.perf_counter() - started,
            engine=engine.name,
            models=models,
            layout=fm.layout,
            task={
                "name": task.name,
                "parameters": fm.numel,
                "train_samples": len(task.x_train),
                "test_samples": len(x_test),
                "partition_sizes": [len(p) for p in parts],
                "partition_counts": partition.count_matrix(
                    task.partition_labels, parts, task.num_classes
                ).tolist(),
                **task.info,
            },
            extra={} if shard is None else {"distributed": describe_shard(shard, graphs)},
            status=status,
        )

    def diverged_params(done: int) -> str | None:
        """Rule 2 and 3 of relayfl.divergence over every worker (gathered when sharded)."""
        stats = divergence.row_stats(x)  # [n(_k), 2]
        if shard is not None:
            stats = shard.all_gather(stats)  # [n, 2], worker order: every rank agrees
        return divergence.check_stats(stats, fm.numel, bound, step=done, lr=lr)

    bound = divergence.limit(fm.x0)
    rounds, first = 0, 0
    if resume and ckpt is not None:
        st = ckpt.load(device)
        x, x_start, sent, rounds, first = st.x, st.x_start, st.sent.cpu(), st.rounds, st.step
        lr, train_loss, evaluations[:] = st.lr, st.train_loss, st.evaluations
        optimizer.load_state_dict(st.optimizer)
        mixer.load_state_dict(st.mixer)
        started -= st.elapsed_s
        if shard is not None:
            check_same_step(shard, first)
    elif config.eval_every:
        evaluate(0, 0)
    for step in range(first, config.steps):
        lr = lr_at(step)
        xb, yb = data.batch(step, clients)
        masks = dropout_masks(fm, shapes, config.seed, clients, step, device)  # [n, B, ...]
        g, losses = engine.grads(x, xb, yb, masks)  # [n, d], [n]
        x = fm.freeze(x + optimizer.update(x, g, lr))  # [n, d]: x^(t+1/2)
        stopping = stop is not None and bool(stop())
        if shard is not None:  # every rank stops at the same step
            losses, stopping = gather_losses(shard, losses, stopping)
        train_loss = float(losses.mean())
        if not math.isfinite(train_loss):
            worst = int(torch.nonzero(~torch.isfinite(losses))[0])
            message = divergence.check_loss(train_loss, step=step, where=f"client {worst}", lr=lr)
            raise DivergenceError(message or "", finish("diverged"))
        if (step + 1) % config.local_steps == 0:
            keep = _drop_masks(mixer, n, config.drop_probability, config.seed, step, receivers)
            x = fm.freeze(mixer.mix(x_start, x, keep))  # [n, d]
            optimizer.after_round(x_start, x)  # qgm: quasi-global momentum update
            x_start = x
            rounds += 1
            sent += per_round
        latest = None
        done = step + 1
        evaluating = (config.eval_every and done % config.eval_every == 0) or done == config.steps
        if evaluating or done % divergence.CHECK_EVERY == 0:
            message = diverged_params(done)
            if message:
                raise DivergenceError(message, finish("diverged"))
        if evaluating:
            latest = evaluate(done, rounds)
        if progress is not None:
            progress(done, config.steps, latest)
        if ckpt is not None and ckpt.due(rounds - 1, rounds) and done % config.local_steps == 0:
            ckpt.save(state(done))
        if stopping and done < config.steps:
            where = ckpt.save(state(done)) if ckpt is not None else None
            raise RunInterrupted(
                f"stopped after step {done} of {config.steps}"
                + (f"; checkpoint {where}" if where else ""),
                result=finish("interrupted"),
            )
    return finish("completed")
