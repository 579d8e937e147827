"""The communication half of each algorithm, on stacked flat models ``Tensor[n, d]``.

A step of every algorithm is a local optimizer step (``x_half = x + u``) followed by a
mixing step implemented here (ALGORITHM.md section 3):

* ``relaysgd``: ``x <- RelaySum/Model(x_half)`` (section 1.5);
* ``relaysgd-grad``: ``x <- x + RelaySum/Grad(x_half - x)`` (section 1.6);
* ``dpsgd``: ``x <- W x_half`` with Metropolis-Hastings weights (sections 2.5 and 3);
* ``allreduce``: ``x <- mean(x_half)``, the centralized reference.

With ``local_steps > 1`` the "update" is everything the worker did since the last
round. Pure tensor code: no I/O, no config objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
import numpy as np
import torch
from torch import Tensor

from relayfl import topology as _topology
from relayfl.errors import ConfigError, NotATreeError
from relayfl.relay import RelaySum, message_dtype, tree_slices
from relayfl.typing import Fill

__all__ = ["ALGORITHMS", "AllReduce", "Gossip", "Mixer", "Relay", "make_mixer"]

ALGORITHMS: tuple[str, ...] = ("relaysgd", "relaysgd-grad", "dpsgd", "allreduce")

#: Default topology per algorithm (relay: binary tree; gossip: ring).
DEFAULT_TOPOLOGY: dict[str, str] = {
    "relaysgd": "binary-tree",
    "relaysgd-grad": "binary-tree",
    "dpsgd": "ring",
    "allreduce": "fully-connected",
}


class Mixer:
    """The communication step of one algorithm, for all workers at once."""

    #: Directed edges of each graph (for per-message drop masks), or empty.
    edges: list[tuple[Tensor, Tensor]]

    def mix(self, x_start: Tensor, x_half: Tensor, keep: list[Tensor] | None = None) -> Tensor:
        """New models from the round's start ``x_start`` and local result ``x_half``.

        Parameters
        ----------
        x_start, x_half : Tensor[n, d]
        keep : list of Tensor[e_k] of bool, optional
            Per graph, which directed-edge messages arrive (section 1.4 drops).

        Returns
        -------
        Tensor[n, d]
        """
        raise NotImplementedError

    def bytes_per_round(self, d: int, dtype: torch.dtype) -> Tensor:
        """Tensor[n] of int64: bytes each worker sends (= receives) per round."""
        raise NotImplementedError


class Relay(Mixer):
    """RelaySGD (``grad=False``) or RelaySGD/Grad (``grad=True``) on one or more trees."""

    def __init__(
        self,
        trees: Sequence[nx.Graph],
        x0: Tensor,
        *,
        grad: bool = False,
        normalization: str | None = None,
        fill: Fill = "initial",
    ) -> None:
        norm = normalization or ("sum" if grad else "world_size")
        self.grad = grad
        self.relay = RelaySum(
            trees,
            normalization=norm,  # type: ignore[arg-type]
            initial=None if norm != "world_size" else x0,
            fill=fill,
            device=x0.device,
        )
        self.edges = [(e.src, e.dst) for e in self.relay.edge_indices]

    def mix(self, x_start: Tensor, x_half: Tensor, keep: list[Tensor] | None = None) -> Tensor:
        if self.grad:
            avg = self.relay.step(x_half - x_start, keep=keep)  # [n, d]: mean of updates
            return x_start + avg.to(x_start.dtype)
        return self.relay.step(x_half, keep=keep).to(x_half.dtype)

    def bytes_per_round(self, d: int, dtype: torch.dtype) -> Tensor:
        return self.relay.bytes_per_step(d, dtype)


class Gossip(Mixer):
    """D-PSGD: ``x_i <- sum_j W_ij x_j`` on each graph (its own slice with several).

    A dropped neighbour term is removed and the rest renormalised by the weight that
    arrived (self weight + kept neighbour weights; section 1.4).
    """

    def __init__(
        self,
        graphs: Sequence[nx.Graph],
        device: torch.device | str = "cpu",
        *,
        weight: float | None = None,
    ) -> None:
        self.graphs = tuple(graphs)
        self.slices = tree_slices(len(self.graphs))
        self.edges, self._w, self._self_w = [], [], []
        for graph in self.graphs:
            W = _topology.gossip_weights(graph, weight=weight)
            src, dst, _ = _topology.edge_index(graph)
            as_t = lambda a: torch.as_tensor(np.asarray(a), device=device)  # noqa: E731
            self.edges.append((as_t(src).long(), as_t(dst).long()))
            self._w.append(as_t(W[src, dst]))  # [e]
            self._self_w.append(as_t(np.diag(W).copy()))  # [n]

    def mix(self, x_start: Tensor, x_half: Tensor, keep: list[Tensor] | None = None) -> Tensor:
        out = torch.empty_like(x_half)
        for k, sl in enumerate(self.slices):
            src, dst = self.edges[k]
            v = x_half[:, sl]  # [n, d_k]
            w = self._w[k].to(v.dtype)  # [e]
            if keep is not None:
                w = w * keep[k].to(v.dtype)
            self_w = self._self_w[k].to(v.dtype)  # [n]
            acc = v * self_w.unsqueeze(-1)  # [n, d_k]
            acc.index_add_(0, dst, v[src] * w.unsqueeze(-1))  # [n, d_k]
            total = self_w.index_add(0, dst, w)  # [n]: 1 without drops
            out[:, sl] = acc / total.unsqueeze(-1) if keep is not None else acc
        return out

    def bytes_per_round(self, d: int, dtype: torch.dtype) -> Tensor:
        itemsize = torch.empty((), dtype=dtype).element_size()
        total = torch.zeros(self.graphs[0].number_of_nodes(), dtype=torch.int64)
        for graph, sl in zip(self.graphs, self.slices, strict=True):
            deg = torch.tensor([graph.degree(i) for i in range(graph.number_of_nodes())])
            total += deg * len(range(d)[sl]) * itemsize
        return total


class AllReduce(Mixer):
    """Exact average every round: the centralized reference.

    Bytes are booked as a ring all-reduce: ``2 (n - 1) / n`` models per worker.
    """

    def __init__(self, num_nodes: int) -> None:
        self.num_nodes = num_nodes
        self.edges = []

    def mix(self, x_start: Tensor, x_half: Tensor, keep: list[Tensor] | None = None) -> Tensor:
        mean = x_half.to(message_dtype(x_half.dtype)).mean(0, keepdim=True)  # [1, d]
        return mean.to(x_half.dtype).expand_as(x_half).clone()

    def bytes_per_round(self, d: int, dtype: torch.dtype) -> Tensor:
        itemsize = torch.empty((), dtype=dtype).element_size()
        n = self.num_nodes
        per = round(2 * (n - 1) / n * d * itemsize) if n > 1 else 0
        return torch.full((n,), per, dtype=torch.int64)


def make_mixer(
    algorithm: str,
    graphs: Sequence[nx.Graph],
    x0: Tensor,
    *,
    fill: Fill = "initial",
    normalization: str | None = None,
    gossip_weight: float | None = None,
) -> Mixer:
    """Build the mixing step of ``algorithm`` on ``graphs`` (checked and explained)."""
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")
    n = graphs[0].number_of_nodes()
    if algorithm in ("relaysgd", "relaysgd-grad"):
        for g in graphs:
            if not nx.is_tree(g):
                raise NotATreeError(
                    f"{algorithm} needs a spanning tree, but the graph has {g.number_of_edges()} "
                    f"edges on {g.number_of_nodes()} nodes (a cycle); use --spanning-tree bfs or "
                    "min-diameter (topology.spanning_tree(graph)), or use --algorithm dpsgd"
                )
        return Relay(
            graphs, x0, grad=algorithm == "relaysgd-grad", fill=fill, normalization=normalization
        )
    if algorithm == "dpsgd":
        return Gossip(graphs, x0.device, weight=gossip_weight)
    return AllReduce(n)
