"""Simulations split over ranks with ``torch.distributed`` (``torchrun``).

``torchrun --standalone --nproc-per-node K -m relayfl.cli simulate ...`` starts K
processes; each calls :func:`init_from_env`, which joins the process group (NCCL between
GPUs, gloo on CPU) with an explicit timeout and returns its :class:`relayfl.shard.Shard`:
its workers (a tree-aware split, :func:`relayfl.shard.split_workers`) and the
collectives the mixers use. Every exchange is bounded by that timeout: a rank that dies
or hangs ends the run with one line naming this rank, the peers and the cause
(:class:`DistributedError`) instead of a hang.

Cross-rank traffic per step: the relay messages (and counts) on tree edges whose ends
live on different ranks, the gossip neighbours' rows, or one ``all_reduce`` of the
summed models (``allreduce``); all through batched point-to-point
``batch_isend_irecv``.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Callable, Mapping, Sequence

import networkx as nx
import torch
import torch.distributed as dist
from torch import Tensor

from relayfl.errors import ConfigError, RelayflError
from relayfl.shard import Shard, cut_edges, split_workers

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistributedError",
    "check_same_step",
    "consensus_distance",
    "current_shard",
    "describe_shard",
    "exchange",
    "gather_losses",
    "init_from_env",
    "launched",
    "make_shard",
    "shutdown",
]

#: Seconds any collective may take before the run ends (gloo's own default is 30 min).
DEFAULT_TIMEOUT_S: float = 120.0


class DistributedError(RelayflError, RuntimeError):
    """A collective between ranks failed or timed out (a rank died or hung)."""


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def _fail(what: str, err: BaseException) -> DistributedError:
    cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return DistributedError(
        f"rank {_rank()} on {socket.gethostname()}: {what} failed ({cause[:300]}); another "
        "rank died or hung (see its log above), or the --dist-timeout is too short"
    )


def init_from_env(
    device: str = "cpu", *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> tuple[str, torch.device]:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ...).

    Parameters
    ----------
    device : str
        ``"cpu"`` (gloo) or ``"cuda"`` (NCCL; rank uses ``cuda:LOCAL_RANK``).
    timeout_s : float
        Bound on every collective, seconds.

    Returns
    -------
    backend, device : str, torch.device

    Raises
    ------
    ConfigError
        CUDA asked for but missing, or fewer GPUs on this machine than local ranks.
    DistributedError
        The rendezvous failed within ``timeout_s``.
    """
    if timeout_s <= 0:
        raise ConfigError(f"--dist-timeout must be > 0 seconds, got {timeout_s}")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available() or torch.cuda.device_count() <= local:
            raise ConfigError(
                f"rank {os.environ.get('RANK')} wants cuda:{local}, but this machine has "
                f"{torch.cuda.device_count()} GPUs; start at most that many ranks per node "
                "(--nproc-per-node) or use --device cpu"
            )
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(
                backend,
                timeout=datetime.timedelta(seconds=timeout_s),
                device_id=dev if dev.type == "cuda" else None,
            )
        except Exception as err:  # rendezvous: torchrun's store did not answer
            raise _fail("joining the process group", err) from None
    return backend, dev


def shutdown() -> None:
    """Leave the process group (no-op when none)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def exchange(
    outgoing: Mapping[int, Tensor], incoming: Mapping[int, int], like: Tensor
) -> dict[int, Tensor]:
    """Send rows to peer ranks and receive theirs, in one ``batch_isend_irecv``.

    Parameters
    ----------
    outgoing : mapping of rank to Tensor[r, w]
    incoming : mapping of rank to int
        Rows each peer sends here (of width ``like.shape[1]``, dtype of ``like``).
    like : Tensor[*, w]

    Returns
    -------
    dict of rank to Tensor[rows, w]

    Raises
    ------
    DistributedError
        A peer did not answer within the process group's timeout.
    """
    width = like.shape[1] if like.dim() > 1 else None
    got = {
        p: like.new_empty((rows, width) if width is not None else (rows,))
        for p, rows in incoming.items()
    }
    ops = []
    for p in sorted(set(outgoing) | set(got)):
        if p in outgoing:
            ops.append(dist.P2POp(dist.isend, outgoing[p].contiguous(), p))
        if p in got:
            ops.append(dist.P2POp(dist.irecv, got[p], p))
    if ops:
        try:
            for work in dist.batch_isend_irecv(ops):
                work.wait()
        except Exception as err:
            raise _fail(f"exchange with rank(s) {sorted(set(outgoing) | set(got))}", err) from None
    return got


def _others() -> str:
    """``rank(s) [..]``: every rank but this one (the peers of a collective)."""
    return f"rank(s) {[r for r in range(dist.get_world_size()) if r != dist.get_rank()]}"


def _all_reduce(t: Tensor) -> Tensor:
    try:
        dist.all_reduce(t)
    except Exception as err:
        raise _fail(f"all_reduce with {_others()}", err) from None
    return t


def _gather_rows(owner: Tensor, world_size: int) -> Callable[[Tensor], Tensor]:
    sizes = torch.bincount(owner, minlength=world_size).tolist()
    order = torch.cat([torch.nonzero(owner == r).flatten() for r in range(world_size)])
    biggest = max(sizes)

    def all_gather(t: Tensor) -> Tensor:
        pad = t.new_zeros((biggest, *t.shape[1:]))
        pad[: len(t)] = t
        parts = [torch.empty_like(pad) for _ in range(world_size)]
        try:
            dist.all_gather(parts, pad)
        except Exception as err:
            raise _fail(f"all_gather with {_others()}", err) from None
        rows = torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])
        out = torch.empty_like(rows)
        out[order.to(rows.device)] = rows  # back to worker order
        return out

    return all_gather


def make_shard(graphs: Sequence[nx.Graph], *, device: torch.device, backend: str) -> Shard:
    """This rank's :class:`relayfl.shard.Shard` of the workers of ``graphs``.

    The split is computed by every rank alike (:func:`relayfl.shard.split_workers`).
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    owner = split_workers(graphs, world)
    return Shard(
        rank=rank,
        world_size=world,
        owner=owner,
        device=device,
        backend=backend,
        exchange=exchange,
        all_reduce=_all_reduce,
        all_gather=_gather_rows(owner, world),
    )


def current_shard(graphs: Sequence[nx.Graph], device: str) -> Shard | None:
    """This rank's shard when the process group has several ranks, else None."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    backend = dist.get_backend()
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return make_shard(graphs, device=dev, backend=str(backend))


def gather_losses(shard: Shard, losses: Tensor, stop: bool) -> tuple[Tensor, bool]:
    """Every worker's training loss (``Tensor[n]``, worker order) and whether any rank
    asked to stop, in one ``all_gather`` (so every rank stops after the same step)."""
    flag = torch.full_like(losses, float(stop))
    both = shard.all_gather(torch.stack([losses.detach(), flag], 1))  # [n, 2]
    return both[:, 0].contiguous(), bool(both[:, 1].max() > 0)


def consensus_distance(x: Tensor, shard: Shard | None) -> float:
    """Mean squared distance of the workers' models ``x`` [n(_k), d] from their average.

    Sharded, the average and the sum go through ``all_reduce`` in float64 (equal to the
    single-process value within float rounding)."""
    if shard is None:
        return float(((x - x.mean(0, keepdim=True)) ** 2).sum(1).mean())
    n = len(shard.owner)
    mean = shard.all_reduce(x.double().sum(0, keepdim=True)) / n  # [1, d]
    sq = shard.all_reduce(((x.double() - mean) ** 2).sum().reshape(1))
    return float(sq / n)


def check_same_step(shard: Shard, step: int) -> None:
    """Refuse to resume from rank checkpoints of different steps (one line).

    Raises
    ------
    ConfigError
    """
    steps = shard.all_gather(torch.full((len(shard.nodes),), step, device=shard.device))
    if int(steps.min()) != int(steps.max()):
        raise ConfigError(
            f"the ranks' checkpoints are of different steps ({int(steps.min())} to "
            f"{int(steps.max())}): one was cut while saving; start without --resume"
        )


def describe_shard(shard: Shard, graphs: Sequence[nx.Graph]) -> dict:
    """What results.json records of the split: ranks, hosts, devices, backend, cut edges."""
    info = [None] * shard.world_size
    try:
        dist.all_gather_object(info, {"host": socket.gethostname(), "device": str(shard.device)})
    except Exception as err:
        raise _fail(f"all_gather_object with {_others()}", err) from None
    return {
        "world_size": shard.world_size,
        "backend": shard.backend,
        "ranks": info,
        "clients_per_rank": shard.sizes(),
        "cut_edges": cut_edges(graphs, shard.owner),
    }
