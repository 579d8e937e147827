"""One node's share of the gossip mixing (relays use :class:`relayfl.relay.RelayNode`)."""

from __future__ import annotations

from collections.abc import Mapping

import networkx as nx
import torch
from torch import Tensor

from relayfl import topology
from relayfl.transport.buffers import BufferPool

__all__ = ["GossipNode"]


class GossipNode:
    """One worker's D-PSGD mixing on one graph: ``x_i <- sum_j W_ij x_j`` (section 3).

    The same Metropolis-Hastings weights, order of summation and drop renormalisation as
    :class:`relayfl.algorithms.Gossip` (section 1.4: a dropped neighbour term is removed
    and the rest renormalised by the weight that arrived).

    Parameters
    ----------
    graph : networkx.Graph
    node : int
    weight : float, optional
        Uniform edge weight instead of Metropolis-Hastings.
    """

    def __init__(
        self,
        graph: nx.Graph,
        node: int,
        *,
        weight: float | None = None,
        pool: BufferPool | None = None,
    ) -> None:
        self.pool = pool or BufferPool()
        W = topology.gossip_weights(graph, weight=weight)  # [n, n]
        self.node = node
        self.neighbors: list[int] = sorted(int(j) for j in graph.neighbors(node))
        self._self_w = torch.tensor(float(W[node, node]), dtype=torch.float64)
        self._w = {j: torch.tensor(float(W[j, node]), dtype=torch.float64) for j in self.neighbors}

    def mix(self, v: Tensor, received: Mapping[int, Tensor | None], *, renormalize: bool) -> Tensor:
        """This worker's mixed model from its own ``v`` [d] and its neighbours' values.

        Parameters
        ----------
        v : Tensor[d]
        received : mapping of neighbour id to Tensor[d], or None when dropped
        renormalize : bool
            Divide by the weight that arrived (the simulator does so whenever drops are
            enabled).
        """
        self_w = self._self_w.to(v.dtype)
        acc = torch.mul(v, self_w, out=self.pool.get(v.numel(), v.dtype))  # [d]
        scratch = self.pool.get(v.numel(), v.dtype)
        total = self_w
        for j in self.neighbors:
            got = received.get(j)
            w = self._w[j].to(v.dtype)
            if got is None:
                w = w * 0
            else:
                acc.add_(torch.mul(got.to(v.dtype), w, out=scratch))  # acc + x_j w_ij
            total = total + w
        return acc.div_(total) if renormalize else acc
