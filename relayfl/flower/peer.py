"""One worker's communication step, for workers that exchange messages one by one.

:class:`PeerMixer` is the one-node view of :mod:`relayfl.algorithms`' stacked mixers
(``relaysgd``, ``relaysgd-grad``, ``dpsgd``): per round a worker calls :meth:`send` with
its model at the round's start and after local training, which gives the message for
each neighbour, then :meth:`receive` with what its neighbours sent, which gives its new
model. The relay uses :class:`relayfl.relay.RelayNode` (proven equal to the stacked
:class:`relayfl.relay.RelaySum`); gossip uses the same Metropolis-Hastings weights as
:class:`relayfl.algorithms.Gossip`. Flower nodes keep this state between messages in
``context.state``: :meth:`state_dict` / :meth:`load_state_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import networkx as nx
import torch
from torch import Tensor

from relayfl import topology
from relayfl.errors import ConfigError, NotATreeError
from relayfl.relay import RelayNode, message_dtype, tree_slices

__all__ = ["PEER_ALGORITHMS", "MessageKey", "PeerMixer"]

#: Algorithms a worker can run by exchanging messages with its neighbours only.
PEER_ALGORITHMS: tuple[str, ...] = ("relaysgd", "relaysgd-grad", "dpsgd")

#: ``(graph index k, neighbour j)``: graph k handles the flat slice ``k::num_graphs``.
MessageKey = tuple[int, int]


class PeerMixer:
    """The mixing step of one worker (docs/algorithm.md sections 1.5, 1.6 and 3).

    Parameters
    ----------
    algorithm : {"relaysgd", "relaysgd-grad", "dpsgd"}
    graphs : sequence of networkx.Graph
        The run's topology (every worker holds the same); a relay needs trees.
    node : int
        This worker's id.
    x0 : Tensor[d]
        The shared initial model (the RelaySum/Model fill).
    fill : {"initial", "latest"}
    normalization : {"world_size", "counts", "sum"}, optional
        Default: ``world_size`` for ``relaysgd``, ``sum`` for ``relaysgd-grad``.

    Raises
    ------
    ConfigError
        For an algorithm that needs more than neighbour messages (``allreduce``).
    NotATreeError
        For a relay on a graph with cycles.
    """

    def __init__(
        self,
        algorithm: str,
        graphs: Sequence[nx.Graph],
        node: int,
        x0: Tensor,
        *,
        fill: str = "initial",
        normalization: str | None = None,
    ) -> None:
        if algorithm not in PEER_ALGORITHMS:
            raise ConfigError(
                f"algorithm {algorithm!r} cannot run as neighbour messages; use one of "
                f"{', '.join(PEER_ALGORITHMS)} (FedAvg: relayfl.flower.run_fedavg; "
                "allreduce and the other baselines: relayfl simulate)"
            )
        self.algorithm, self.node = algorithm, node
        self.graphs = tuple(graphs)
        self.slices = tree_slices(len(self.graphs))
        self.dtype = message_dtype(x0.dtype)
        self.x0 = x0.detach()
        self.relay = algorithm != "dpsgd"
        self._relays: list[RelayNode] = []
        self._self_w: list[float] = []
        self._w: list[dict[int, float]] = []
        if self.relay:
            norm = normalization or ("sum" if algorithm == "relaysgd-grad" else "world_size")
            for g, sl in zip(self.graphs, self.slices, strict=True):
                if not nx.is_tree(g):
                    raise NotATreeError(
                        f"{algorithm} needs a spanning tree, but the graph has "
                        f"{g.number_of_edges()} edges on {g.number_of_nodes()} nodes; use "
                        "--spanning-tree bfs or min-diameter, or --algorithm dpsgd"
                    )
                self._relays.append(
                    RelayNode(
                        g,
                        node,
                        normalization=norm,  # type: ignore[arg-type]
                        initial=self.x0[sl] if norm == "world_size" else None,
                        fill=fill,  # type: ignore[arg-type]
                    )
                )
        else:
            for g in self.graphs:
                W = topology.gossip_weights(g)
                self._self_w.append(float(W[node, node]))
                self._w.append({j: float(W[node, j]) for j in sorted(g.neighbors(node))})
        self._x_start: Tensor | None = None
        self._x_half: Tensor | None = None

    @property
    def neighbors(self) -> list[MessageKey]:
        """Every ``(graph, neighbour)`` this worker exchanges a message with per round."""
        if self.relay:
            return [(k, j) for k, r in enumerate(self._relays) for j in r.neighbors]
        return [(k, j) for k, w in enumerate(self._w) for j in w]

    def send(self, x_start: Tensor, x_half: Tensor) -> dict[MessageKey, tuple[Tensor, float]]:
        """The messages of this round: ``{(k, j): (payload, count)}``.

        Parameters
        ----------
        x_start, x_half : Tensor[d]
            The model at the round's start and after the local steps.
        """
        self._x_start, self._x_half = x_start.detach(), x_half.detach()
        out: dict[MessageKey, tuple[Tensor, float]] = {}
        if self.relay:
            v = x_half - x_start if self.algorithm == "relaysgd-grad" else x_half  # [d]
            for k, (r, sl) in enumerate(zip(self._relays, self.slices, strict=True)):
                for j, (m, c) in r.send(v[sl]).items():
                    out[(k, j)] = (m, c)
            return out
        payload = x_half.to(self.dtype)
        for k, (w, sl) in enumerate(zip(self._w, self.slices, strict=True)):
            for j in w:
                out[(k, j)] = (payload[sl], 1.0)
        return out

    def receive(self, messages: Mapping[MessageKey, tuple[Tensor, float] | None]) -> Tensor:
        """This worker's model after the round, from the neighbours' messages.

        Parameters
        ----------
        messages : mapping of ``(k, j)`` to ``(payload, count)``
            A relay treats a missing message as dropped (section 1.4); gossip needs all.

        Returns
        -------
        Tensor[d]
            In the dtype of ``x_half``.
        """
        if self._x_half is None or self._x_start is None:
            raise ConfigError("PeerMixer.receive called before send; call send first")
        x_half, x_start = self._x_half, self._x_start
        out = torch.empty_like(x_half, dtype=self.dtype)  # [d]
        if self.relay:
            for k, (r, sl) in enumerate(zip(self._relays, self.slices, strict=True)):
                got = {j: messages.get((k, j)) for j in r.neighbors}
                out[sl] = r.receive(got)
            if self.algorithm == "relaysgd-grad":
                return x_start + out.to(x_start.dtype)
            return out.to(x_half.dtype)
        v = x_half.to(self.dtype)
        for k, (w, sl) in enumerate(zip(self._w, self.slices, strict=True)):
            acc = v[sl] * self._self_w[k]  # [d_k]
            for j, wj in w.items():
                got = messages.get((k, j))
                if got is None:
                    raise ConfigError(
                        f"dpsgd: worker {self.node} got no model from neighbour {j}; "
                        "gossip on Flower needs every message (no drops)"
                    )
                acc = acc + got[0].to(self.dtype) * wj
            out[sl] = acc
        return out.to(x_half.dtype)

    def state_dict(self) -> dict[str, Tensor]:
        """What must survive until the next round (tensors only; absent = not set yet)."""
        state: dict[str, Tensor] = {}
        if self._x_start is not None and self._x_half is not None:
            state["x_start"], state["x_half"] = self._x_start, self._x_half
        for k, r in enumerate(self._relays):
            for name, t in r.state_dict().items():
                if t is not None:
                    state[f"{name}.{k}"] = t
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore :meth:`state_dict` (e.g. from ``context.state`` in a new process)."""
        for k, r in enumerate(self._relays):
            r.load_state_dict(
                {
                    "m": state.get(f"m.{k}"),
                    "c": state.get(f"c.{k}"),
                    "fill": state.get(f"fill.{k}", r.state_dict()["fill"]),
                }
            )
        if "x_half" in state:
            # send() is what records the shared value in a RelayNode; it changes no other
            # state, so sending again restores the node exactly (the output is discarded).
            self.send(state["x_start"], state["x_half"])
