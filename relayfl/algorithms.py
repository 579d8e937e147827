"""The communication half of each algorithm, on stacked flat models ``Tensor[n, d]``.

A step of every algorithm is a local optimizer step (``x_half = x + u``) followed by a
mixing step implemented here (docs/algorithm.md section 3):

* ``relaysgd``: ``x <- RelaySum/Model(x_half)`` (section 1.5);
* ``relaysgd-grad``: ``x <- x + RelaySum/Grad(x_half - x)`` (section 1.6);
* ``dpsgd``: ``x <- W x_half`` with Metropolis-Hastings weights (sections 2.5 and 3);
* ``d2``: ``x <- W(x_half + c)``, ``c <- x - x_half`` (D², exact diffusion);
* ``gradient-tracking``: ``x <- W(x_half + c)``, ``c <- W(c + u) - u``, two gossips;
* ``qgm``: D-PSGD with quasi-global momentum. It changes the *local* step, so its
  mixing is plain gossip and the momentum lives in :class:`relayfl.optim.QuasiGlobalSGD`
  (built by :func:`local_optimizer`), which updates its buffer after every round;
* ``sgp``: stochastic gradient push on the time-varying exponential graph (section
  2.3): two rounds of pairwise 1/2-1/2 averaging per step, the peer depending on the
  round index;
* ``allreduce``: ``x <- mean(x_half)``, the centralized reference.

Every mixer acts on the stacked models after the engine computed the gradients, so the
batched (vmap) and per-client loop engines run the same algorithms. Dropped messages
(section 1.4): gossip-based mixers drop the neighbour term and renormalise by the weight
that arrived; SGP keeps its own model when its one message is lost; relays are handled
in :mod:`relayfl.relay`.

With ``local_steps > 1`` the "update" is everything the worker did since the last
round. Pure tensor code: no I/O, no config objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np
import torch
from torch import Tensor

from relayfl import topology as _topology
from relayfl.errors import ConfigError, NotATreeError
from relayfl.optim import SGD, Adam, QuasiGlobalSGD, make_optimizer
from relayfl.relay import RelaySum, message_dtype, tree_slices
from relayfl.typing import Fill

if TYPE_CHECKING:
    from relayfl.shard import Shard

__all__ = [
    "ALGORITHMS",
    "D2",
    "DEFAULT_TOPOLOGY",
    "AllReduce",
    "Gossip",
    "GradientTracking",
    "Mixer",
    "Relay",
    "TimeVaryingExponential",
    "local_optimizer",
    "make_mixer",
]

ALGORITHMS: tuple[str, ...] = (
    "relaysgd",
    "relaysgd-grad",
    "dpsgd",
    "d2",
    "gradient-tracking",
    "qgm",
    "sgp",
    "allreduce",
)

#: Default topology per algorithm (relay: binary tree; gossip family: ring; SGP: its
#: time-varying exponential graph, section 2.3).
DEFAULT_TOPOLOGY: dict[str, str] = {
    "relaysgd": "binary-tree",
    "relaysgd-grad": "binary-tree",
    "dpsgd": "ring",
    "d2": "ring",
    "gradient-tracking": "ring",
    "qgm": "ring",
    "sgp": "exponential",
    "allreduce": "fully-connected",
}

#: Algorithms whose mixing is Metropolis-Hastings gossip on the given graph(s).
GOSSIP_FAMILY: tuple[str, ...] = ("dpsgd", "d2", "gradient-tracking", "qgm")


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

    def state_dict(self) -> dict:
        """What the mixer carries from round to round (relay messages, D²'s and gradient
        tracking's corrections, SGP's round counter), for checkpoints."""
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; the next :meth:`mix` continues bit for bit."""
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
        shard: Shard | None = None,
    ) -> None:
        norm = normalization or ("sum" if grad else "world_size")
        self.grad = grad
        self.relay = RelaySum(
            trees,
            normalization=norm,  # type: ignore[arg-type]
            initial=None if norm != "world_size" else x0,
            fill=fill,
            device=x0.device,
            shard=shard,
        )
        self.edges = [(e.src, e.dst) for e in self.relay.edge_indices]

    def mix(self, x_start: Tensor, x_half: Tensor, keep: list[Tensor] | None = None) -> Tensor:
        if self.grad:
            avg = self.relay.step(x_half - x_start, keep=keep)  # [n, d]: mean of updates
            return x_start + avg.to(x_start.dtype)
        return self.relay.step(x_half, keep=keep).to(x_half.dtype)

    def bytes_per_round(self, d: int, dtype: torch.dtype) -> Tensor:
        return self.relay.bytes_per_step(d, dtype)

    def state_dict(self) -> dict:
        return {"relay": self.relay.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.relay.load_state_dict(state["relay"])


class Gossip(Mixer):
    """D-PSGD: ``x_i <- sum_j W_ij x_j`` on each graph (its own slice with several).

    Parameters
    ----------
    graphs : sequence of networkx.Graph
        One graph, or several (double binary trees): graph ``k`` mixes the flat indices
        ``k::len(graphs)`` with its own weights (section 2.2).
    device : torch.device or str (default: "cpu")
    weight : float, optional
        Uniform edge weight instead of Metropolis-Hastings (section 2.5).
    shard : relayfl.shard.Shard, optional
        Split over ranks: ``gossip`` takes and returns this rank's rows ``[n_k, d]`` and
        fetches the neighbours' rows it needs from their ranks (``shard.exchange``).

    Notes
    -----
    A dropped neighbour term is removed and the rest renormalised by the weight that
    arrived (self weight + kept neighbour weights; section 1.4). Sharded, each row sums
    its terms in the single-process order (bitwise equal results on CPU).
    """

    def __init__(
        self,
        graphs: Sequence[nx.Graph],
        device: torch.device | str = "cpu",
        *,
        weight: float | None = None,
        shard: Shard | None = None,
    ) -> None:
        self.graphs = tuple(graphs)
        self.slices = tree_slices(len(self.graphs))
        self.shard = shard if shard is not None and shard.sharded else None
        self.edges, self._w, self._self_w = [], [], []
        self._src, self._dst, self._eid = [], [], []  # rows read, rows written, edge ids
        as_t = lambda a: torch.as_tensor(np.asarray(a), device=device)  # noqa: E731
        if self.shard is not None:
            self._plan_halo(self.shard)
        for graph in self.graphs:
            W = _topology.gossip_weights(graph, weight=weight)
            src, dst, _ = _topology.edge_index(graph)
            src_t, dst_t = as_t(src).long(), as_t(dst).long()
            self.edges.append((src_t, dst_t))
            w, self_w = as_t(W[src, dst]), as_t(np.diag(W).copy())  # [e], [n]
            if self.shard is None:
                self._src.append(src_t)
                self._dst.append(dst_t)
                self._eid.append(None)
            else:  # the edges into this rank's rows; sources in [own rows, halo rows]
                owner = self.shard.owner.to(dst_t.device)
                eid = torch.nonzero(owner[dst_t] == self.shard.rank).flatten()
                self._src.append(self._ext[src_t[eid]])
                self._dst.append(self._pos[dst_t[eid]])
                self._eid.append(eid)
                w, self_w = w[eid], self_w[self.shard.nodes.to(self_w.device)]
            self._w.append(w)  # [e]
            self._self_w.append(self_w)  # [n]

    def _plan_halo(self, shard: Shard) -> None:
        """Which own rows each peer rank needs, and where the rows it sends us go."""
        owner = shard.owner.tolist()
        n = len(owner)
        need: dict[int, set[int]] = {}  # peer -> our workers it reads
        halo: dict[int, set[int]] = {}  # peer -> its workers we read
        for graph in self.graphs:
            for a, b in graph.edges():
                a, b = int(a), int(b)
                for i, j in ((a, b), (b, a)):
                    if owner[i] == shard.rank and owner[j] != shard.rank:
                        need.setdefault(owner[j], set()).add(i)
                        halo.setdefault(owner[j], set()).add(j)
        nodes = shard.nodes.tolist()
        pos = {g: k for k, g in enumerate(nodes)}
        self._send = {p: torch.tensor([pos[i] for i in sorted(v)]) for p, v in need.items()}
        self._recv = {p: len(v) for p, v in halo.items()}
        ext = torch.full((n,), -1, dtype=torch.long)
        ext[shard.nodes] = torch.arange(len(nodes))
        k = len(nodes)
        for p in sorted(halo):
            ids = torch.tensor(sorted(halo[p]), dtype=torch.long)
            ext[ids] = torch.arange(k, k + len(ids))
            k += len(ids)
        self._ext = ext.to(shard.device)  # worker -> row of [own rows, halo rows]
        self._pos = ext.to(shard.device)  # own workers map to their own rows

    def _with_halo(self, v: Tensor) -> Tensor:
        """``[own rows, neighbours' rows from other ranks]`` (``v`` itself unsharded)."""
        if self.shard is None:
            return v
        got = self.shard.exchange(
            {p: v[idx.to(v.device)] for p, idx in self._send.items()}, self._recv, v
        )
        return torch.cat([v, *(got[p] for p in sorted(got))])

    def gossip(self, v: Tensor, keep: Sequence[Tensor] | None = None) -> Tensor:
        """One gossip step ``W v`` (per graph, on its slice), with drops renormalised.

        Parameters
        ----------
        v : Tensor[n, d]
        keep : sequence of Tensor[e_k] of bool, optional
            One mask per graph, aligned with ``self.edges``.

        Returns
        -------
        Tensor[n, d]
        """
        out = torch.empty_like(v)
        rows = len(v)
        v = self._with_halo(v)  # [n_k + halo, d] when sharded
        for k, sl in enumerate(self.slices):
            src, dst, eid = self._src[k], self._dst[k], self._eid[k]
            vk = v[:, sl]  # [n, d_k]
            w = self._w[k].to(v.dtype)  # [e]
            if keep is not None:
                kk = keep[k] if eid is None else keep[k][eid]
                w = w * kk.to(v.dtype)
            self_w = self._self_w[k].to(v.dtype)  # [n]
            acc = vk[:rows] * self_w.unsqueeze(-1)  # [n, d_k]
            acc.index_add_(0, dst, vk[src] * w.unsqueeze(-1))  # [n, d_k]
            if keep is not None:
                total = self_w.index_add(0, dst, w)  # [n]: 1 without drops
                acc = acc / total.unsqueeze(-1)
            out[:, sl] = acc
        return out

    def mix(self, x_start: Tensor, x_half: Tensor, keep: list[Tensor] | None = None) -> Tensor:
        return self.gossip(x_half, keep)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def bytes_per_round(self, d: int, dtype: torch.dtype) -> Tensor:
        itemsize = torch.empty((), dtype=dtype).element_size()
        total = torch.zeros(self.graphs[0].number_of_nodes(), dtype=torch.int64)
        for graph, sl in zip(self.graphs, self.slices, strict=True):
            deg = torch.tensor([graph.degree(i) for i in range(graph.number_of_nodes())])
            total += deg * len(range(d)[sl]) * itemsize
        return total


class D2(Gossip):
    """D² / exact diffusion: gossip with a correction that removes the heterogeneity bias.

    ``x^{t+1} = W (x^{t+1/2} + c^t)`` and ``c^{t+1} = x^{t+1} - x^{t+1/2}``, ``c^0 = 0``
    (docs/algorithm.md section 3), which equals
    ``W (2 x^t - x^{t-1} - lr g^t + lr g^{t-1})`` for plain SGD.

    Parameters are those of :class:`Gossip`.

    Notes
    -----
    D² needs the smallest eigenvalue of ``W`` above ``-1/3``; on an even ring the
    Metropolis-Hastings weights (all 1/3) sit exactly on that edge, as in the paper's
    deep-learning runs. The quadratics use ``weight = 1/3 - 0.01`` (section 2.5), and
    figure 3 uses ``(W + I) / 2``: pass ``lazy=True``. With drops the gossip is
    renormalised and the correction no longer cancels: D² diverges (Table 5).
    """

    def __init__(
        self,
        graphs: Sequence[nx.Graph],
        device: torch.device | str = "cpu",
        *,
        weight: float | None = None,
        lazy: bool = False,
        shard: Shard | None = None,
    ) -> None:
        super().__init__(graphs, device, weight=weight, shard=shard)
        if lazy:  # W' = (W + I) / 2 (exact diffusion, section 2.5)
            self._w = [w / 2 for w in self._w]
            self._self_w = [(s + 1) / 2 for s in self._self_w]
        self.c: Tensor | None = None  # [n, d], correction c^t

    def mix(self, x_start: Tensor, x_half: Tensor, keep: list[Tensor] | None = None) -> Tensor:
        c = self.c if self.c is not None else torch.zeros_like(x_half)
        x = self.gossip(x_half + c, keep)  # [n, d]
        self.c = x - x_half
        return x

    def state_dict(self) -> dict:
        return {"c": self.c}

    def load_state_dict(self, state: dict) -> None:
        self.c = state["c"]


class GradientTracking(Gossip):
    """Gradient tracking: gossip the models and a tracker of the average update.

    ``x^{t+1} = W (x^{t+1/2} + c^t)`` and ``c^{t+1} = W (c^t + u^t) - u^t`` with
    ``u^t = x^{t+1/2} - x^t``, ``c^0 = 0`` (docs/algorithm.md section 3): the tracker
    ``y = u + c`` follows ``y^{t+1} = W y^t + u^{t+1} - u^t``. Two gossips per round, so
    twice the bytes of D-PSGD.

    Parameters are those of :class:`Gossip`.

    Notes
    -----
    ``edges`` lists every graph twice: the first copies carry the models, the second
    the corrections, and each message is dropped independently (as the paper's two
    gossip mechanisms).
    """

    def __init__(
        self,
        graphs: Sequence[nx.Graph],
        device: torch.device | str = "cpu",
        *,
        weight: float | None = None,
        shard: Shard | None = None,
    ) -> None:
        super().__init__(graphs, device, weight=weight, shard=shard)
        self._num_graphs = len(self.edges)
        self.edges = self.edges + list(self.edges)
        self.c: Tensor | None = None  # [n, d]

    def mix(self, x_start: Tensor, x_half: Tensor, keep: list[Tensor] | None = None) -> Tensor:
        k = self._num_graphs
        keep_x = None if keep is None else keep[:k]
        keep_c = None if keep is None else keep[k:]
        c = self.c if self.c is not None else torch.zeros_like(x_half)
        u = x_half - x_start  # [n, d]
        x = self.gossip(x_half + c, keep_x)  # [n, d]
        self.c = self.gossip(c + u, keep_c) - u
        return x

    def bytes_per_round(self, d: int, dtype: torch.dtype) -> Tensor:
        return 2 * super().bytes_per_round(d, dtype)

    def state_dict(self) -> dict:
        return {"c": self.c}

    def load_state_dict(self, state: dict) -> None:
        self.c = state["c"]


class TimeVaryingExponential(Mixer):
    """SGP on the time-varying exponential graph (docs/algorithm.md sections 2.3 and 3).

    Each mixing step runs ``rounds`` rounds (2 in the paper). In global round ``r``
    worker ``i`` sends its model to ``(i + 2^k) mod n`` and receives from
    ``(i - 2^k) mod n`` with ``k = r mod log2(n)``, then sets ``x_i <- (x_i + x_recv)/2``.
    In- and out-degree are 1, so the mixing matrix is doubly stochastic and no push-sum
    weights are needed.

    Parameters
    ----------
    num_nodes : int
        A power of two.
    rounds : int (default: 2)
        Gossip rounds per mixing step (``push_sum_avg_steps``).
    device : torch.device or str (default: "cpu")

    Attributes
    ----------
    round : int
        Global round counter; the peers depend on it. Set it to resume a run.

    Notes
    -----
    The offsets follow the paper's simulator (``2^(r mod log2 n)``, every power of two in
    turn, so ``log2 n`` rounds without updates average exactly). The authors' distributed
    code computes ``2^((step (rounds + j)) mod log2 n)`` for round ``j`` of step ``step``,
    which also visits every offset but in a less regular order. A dropped message leaves
    the receiver's model as it was (section 1.4). ``edges`` holds one (sender, receiver)
    pair per worker and round of the *next* mixing step, for the drop masks.
    """

    def __init__(
        self, num_nodes: int, *, rounds: int = 2, device: torch.device | str = "cpu"
    ) -> None:
        n = num_nodes
        if n < 1 or n & (n - 1):
            raise ConfigError(
                f"sgp needs a power-of-two number of workers (time-varying exponential "
                f"graph), got {n}; use e.g. --clients {1 << max(n - 1, 1).bit_length()}"
            )
        if rounds < 1:
            raise ConfigError(f"sgp needs at least 1 gossip round per step, got {rounds}")
        self.num_nodes, self.rounds = n, rounds
        self.log2n = n.bit_length() - 1
        self.device = device
        self.round = 0
        self.edges = []
        self._set_edges()

    def offset(self, r: int) -> int:
        """The peer offset ``2^(r mod log2 n)`` of global round ``r`` (0 for one worker)."""
        return 1 << (r % self.log2n) if self.log2n else 0

    def _set_edges(self) -> None:
        dst = torch.arange(self.num_nodes, device=self.device)  # [n]
        self.edges = (
            [
                ((dst - self.offset(self.round + j)) % self.num_nodes, dst)
                for j in range(self.rounds)
            ]
            if self.num_nodes > 1
            else []
        )

    def mix(self, x_start: Tensor, x_half: Tensor, keep: list[Tensor] | None = None) -> Tensor:
        x = x_half
        if self.num_nodes > 1:
            for j in range(self.rounds):
                src = torch.arange(self.num_nodes, device=x.device) - self.offset(self.round + j)
                mixed = 0.5 * (x + x[src % self.num_nodes])  # [n, d]
                if keep is not None:
                    mixed = torch.where(keep[j].to(x.device).unsqueeze(-1), mixed, x)
                x = mixed
        self.round += self.rounds
        self._set_edges()
        return x

    def state_dict(self) -> dict:
        return {"round": self.round}

    def load_state_dict(self, state: dict) -> None:
        self.round = int(state["round"])
        self._set_edges()

    def bytes_per_round(self, d: int, dtype: torch.dtype) -> Tensor:
        itemsize = torch.empty((), dtype=dtype).element_size()
        per = self.rounds * d * itemsize if self.num_nodes > 1 else 0
        return torch.full((self.num_nodes,), per, dtype=torch.int64)


class AllReduce(Mixer):
    """Exact average every round: the centralized reference.

    Bytes are booked as a ring all-reduce: ``2 (n - 1) / n`` models per worker. Sharded,
    the sum goes through ``shard.all_reduce`` (another summation order: equal to the
    single-process mean within float rounding, not bitwise).
    """

    def __init__(self, num_nodes: int, *, shard: Shard | None = None) -> None:
        self.num_nodes = num_nodes
        self.edges = []
        self.shard = shard if shard is not None and shard.sharded else None

    def mix(self, x_start: Tensor, x_half: Tensor, keep: list[Tensor] | None = None) -> Tensor:
        v = x_half.to(message_dtype(x_half.dtype))
        if self.shard is None:
            mean = v.mean(0, keepdim=True)  # [1, d]
        else:
            mean = self.shard.all_reduce(v.sum(0, keepdim=True)) / self.num_nodes
        return mean.to(x_half.dtype).expand_as(x_half).clone()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def bytes_per_round(self, d: int, dtype: torch.dtype) -> Tensor:
        itemsize = torch.empty((), dtype=dtype).element_size()
        n = self.num_nodes
        per = round(2 * (n - 1) / n * d * itemsize) if n > 1 else 0
        return torch.full((n,), per, dtype=torch.int64)


def _is_exponential(graph: nx.Graph) -> bool:
    """Whether ``graph`` is :func:`relayfl.topology.exponential` of its size."""
    n = graph.number_of_nodes()
    ref = _topology.exponential(n)
    return {frozenset(e) for e in graph.edges()} == {frozenset(e) for e in ref.edges()}


def make_mixer(
    algorithm: str,
    graphs: Sequence[nx.Graph],
    x0: Tensor,
    *,
    fill: Fill = "initial",
    normalization: str | None = None,
    gossip_weight: float | None = None,
    shard: Shard | None = None,
) -> Mixer:
    """Build the mixing step of ``algorithm`` on ``graphs`` (checked and explained).

    Parameters
    ----------
    algorithm : str
        One of :data:`ALGORITHMS`.
    graphs : sequence of networkx.Graph
        The topology (two graphs for double binary trees).
    x0 : Tensor[d]
        The shared initial model (the relay's fill; sets the device).
    fill, normalization : str, optional
        RelaySum/Model options (section 1.2).
    gossip_weight : float, optional
        Uniform gossip edge weight instead of Metropolis-Hastings (gossip family).
    shard : relayfl.shard.Shard, optional
        This rank's workers when the simulation is split over ranks: the mixer then
        takes and returns ``[n_k, d]`` and exchanges across ranks (``sgp`` refuses).

    Returns
    -------
    Mixer

    Raises
    ------
    ConfigError
        Unknown algorithm, or ``sgp`` off its exponential graph or with ``n`` not a
        power of two.
    NotATreeError
        A relay on a graph with cycles.
    """
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")
    n = graphs[0].number_of_nodes()
    if shard is not None and not shard.sharded:
        shard = None
    if shard is not None and algorithm == "sgp":
        raise ConfigError(
            f"sgp does not run split over {shard.world_size} ranks yet; run it in one "
            "process (without torchrun), or use --algorithm dpsgd or relaysgd"
        )
    if algorithm in ("relaysgd", "relaysgd-grad"):
        for g in graphs:
            if not nx.is_tree(g):
                raise NotATreeError(
                    f"{algorithm} needs a spanning tree, but the graph has {g.number_of_edges()} "
                    f"edges on {g.number_of_nodes()} nodes (a cycle); use --spanning-tree bfs or "
                    "min-diameter (topology.spanning_tree(graph)), or use --algorithm dpsgd"
                )
        return Relay(
            graphs,
            x0,
            grad=algorithm == "relaysgd-grad",
            fill=fill,
            normalization=normalization,
            shard=shard,
        )
    if algorithm in ("dpsgd", "qgm"):
        return Gossip(graphs, x0.device, weight=gossip_weight, shard=shard)
    if algorithm == "d2":
        return D2(graphs, x0.device, weight=gossip_weight, shard=shard)
    if algorithm == "gradient-tracking":
        return GradientTracking(graphs, x0.device, weight=gossip_weight, shard=shard)
    if algorithm == "sgp":
        if len(graphs) != 1 or not _is_exponential(graphs[0]):
            raise ConfigError(
                "sgp mixes on its own time-varying exponential graph; use --topology "
                f"exponential (its default), got {len(graphs)} graph(s) with "
                f"{sum(g.number_of_edges() for g in graphs)} edges"
            )
        return TimeVaryingExponential(n, device=x0.device)
    return AllReduce(n, shard=shard)


def local_optimizer(
    algorithm: str,
    name: str = "sgd",
    *,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = True,
) -> SGD | Adam | QuasiGlobalSGD:
    """The local optimizer ``algorithm`` runs between mixing steps.

    Every algorithm uses the named base optimizer (:func:`relayfl.optim.make_optimizer`,
    local momentum never communicated) except ``qgm``, whose local step uses the
    quasi-global momentum buffer: :class:`relayfl.optim.QuasiGlobalSGD`. Callers invoke
    ``optimizer.after_round(x_start, x_mixed)`` after each mixing step; it is a no-op
    for the others.

    Raises
    ------
    ConfigError
        ``qgm`` with Adam or without momentum.
    """
    if algorithm == "qgm":
        if name != "sgd":
            raise ConfigError(
                f"qgm (quasi-global momentum) is SGD-only, got optimizer {name!r}; "
                "use --optimizer sgd"
            )
        if momentum <= 0:
            raise ConfigError(
                f"qgm needs momentum > 0 (it is dpsgd without it), got {momentum}; "
                "use e.g. --momentum 0.9"
            )
        return QuasiGlobalSGD(momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    return make_optimizer(name, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
