"""Which rank holds which workers when a simulation is split over ranks.

A :class:`Shard` is one rank's view: its workers, the owner of every worker, and the
collectives the mixers call (``exchange``, ``all_reduce``, ``all_gather``). This module
plans the split and holds no communication code: :mod:`relayfl.distributed` fills the
collectives with ``torch.distributed``, so the relay and gossip math
(:mod:`relayfl.relay`, :mod:`relayfl.algorithms`) never imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import networkx as nx
import torch
from torch import Tensor

from relayfl.errors import ConfigError

__all__ = ["Exchange", "Shard", "cut_edges", "split_workers"]

#: ``exchange(outgoing, incoming, like)``: send ``outgoing[p]`` (``Tensor[r, w]``) to each
#: peer rank ``p``, receive ``incoming[p]`` rows of width ``like.shape[1]`` from each, and
#: return the received tensors by peer rank.
Exchange = Callable[[Mapping[int, Tensor], Mapping[int, int], Tensor], dict[int, Tensor]]


def split_workers(graphs: Sequence[nx.Graph], world_size: int) -> Tensor:
    """Tree-aware split of the workers over ``world_size`` ranks.

    Workers are ordered by a depth-first walk of the first graph from worker 0 (a
    subtree, or a run of a ring, stays together), and the order is cut into
    ``world_size`` contiguous runs whose sizes differ by at most one.

    Returns
    -------
    Tensor[n] of int64
        The rank of every worker.

    Raises
    ------
    ConfigError
        More ranks than workers.
    """
    n = graphs[0].number_of_nodes()
    if not 1 <= world_size <= n:
        raise ConfigError(
            f"cannot split {n} clients over {world_size} ranks; use at most {n} ranks "
            "(torchrun --nproc-per-node) or more --clients"
        )
    order = list(nx.dfs_preorder_nodes(graphs[0], source=0))
    order += sorted(set(range(n)) - set(order))  # a disconnected graph: the rest in order
    owner = torch.empty(n, dtype=torch.long)
    base, extra = divmod(n, world_size)
    start = 0
    for r in range(world_size):
        size = base + (r < extra)
        owner[torch.tensor(order[start : start + size], dtype=torch.long)] = r
        start += size
    return owner


def cut_edges(graphs: Sequence[nx.Graph], owner: Tensor) -> int:
    """How many (undirected) edges of ``graphs`` join workers on different ranks."""
    own = owner.tolist()
    return sum(own[int(a)] != own[int(b)] for g in graphs for a, b in g.edges())


def _identity_exchange(
    outgoing: Mapping[int, Tensor], incoming: Mapping[int, int], like: Tensor
) -> dict[int, Tensor]:
    if outgoing or incoming:
        raise ConfigError("a single-rank shard has no peers to exchange with")
    return {}


@dataclass
class Shard:
    """One rank's share of the workers and the collectives between ranks.

    Attributes
    ----------
    rank, world_size : int
    owner : Tensor[n] of int64
        The rank of every worker (:func:`split_workers`).
    device : torch.device
        This rank's device.
    backend : str
        ``"gloo"``, ``"nccl"`` or ``"none"`` (one process).
    exchange : Exchange
        Point-to-point rows between ranks (relay messages, gossip neighbours).
    all_reduce : callable
        ``all_reduce(t)``: the sum of ``t`` over ranks (in place; returns ``t``).
    all_gather : callable
        ``all_gather(t)``: ``Tensor[n_k, ...]`` of every rank into ``Tensor[n, ...]`` in
        worker order (on every rank).
    """

    rank: int
    world_size: int
    owner: Tensor
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str = "none"
    exchange: Exchange = _identity_exchange
    all_reduce: Callable[[Tensor], Tensor] = lambda t: t
    all_gather: Callable[[Tensor], Tensor] = lambda t: t

    @property
    def nodes(self) -> Tensor:
        """Tensor[n_k] of int64: this rank's workers, ascending."""
        return torch.nonzero(self.owner == self.rank).flatten()

    @property
    def sharded(self) -> bool:
        return self.world_size > 1

    def sizes(self) -> list[int]:
        """How many workers each rank holds."""
        return torch.bincount(self.owner, minlength=self.world_size).tolist()
