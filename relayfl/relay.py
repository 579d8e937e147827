"""RelaySum: the exact-averaging mechanism of RelaySGD (docs/algorithm.md section 1).

Pure tensor code, no I/O and no threads. Two views of one mechanism:

* :class:`RelaySum` works on stacked tensors, every worker at once (``Tensor[n, d]``),
  vectorised over the directed tree edges. The simulator uses it.
* :class:`RelayNode` is one worker's share of the same state: what it received from
  its neighbours at the previous step. A deployed node uses it.

Both call the same three functions, :func:`outgoing`, :func:`combine` and
:func:`average`, and a test proves they give identical results.

Notation (docs/algorithm.md): ``v`` value shared at this step, ``m``/``c`` message/count on a
directed edge, ``S``/``C`` a worker's sum and count, ``n`` workers, ``d`` flat length,
``e`` directed edges.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np
import torch
from torch import Tensor

from relayfl import topology as _topology
from relayfl.errors import ConfigError
from relayfl.typing import Fill, Normalization

if TYPE_CHECKING:
    from relayfl.shard import Shard

__all__ = [
    "EdgeIndex",
    "Layout",
    "RelayNode",
    "RelaySum",
    "average",
    "combine",
    "message_dtype",
    "outgoing",
    "pack",
    "tree_slices",
    "unpack",
]

NORMALIZATIONS: tuple[str, ...] = ("world_size", "counts", "sum")
FILLS: tuple[str, ...] = ("initial", "latest")


# --------------------------------------------------------------------------------------
# The math (sections 1.1-1.2), shared by the stacked and the one-node views
# --------------------------------------------------------------------------------------
def outgoing(
    total: Tensor, back: Tensor, c_total: Tensor, c_back: Tensor, *, out: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Messages and counts a sender puts on its edges (docs/algorithm.md section 1.1).

    ``m_{i->j} = v_i + sum_{k in N_i} m_{k->i} - m_{j->i}``: the sender's fresh value
    plus everything it received at the previous step except what came from ``j``. The
    first two terms are the sender's running total, :func:`combine` of its value with
    the previous step's inbox; the message subtracts what ``j`` itself sent.

    Parameters
    ----------
    total, c_total : Tensor[e, d], Tensor[e]
        The sender's ``v_i + sum_k m_{k->i}^(t-1)`` (``1 + sum_k c_{k->i}^(t-1)``), one
        row per outgoing edge.
    back, c_back : Tensor[e, d], Tensor[e]
        The message (count) the recipient sent to the sender at step t-1.
    out : Tensor[e, d], optional
        Where to write the messages (saves an allocation).

    Returns
    -------
    m, c : Tensor[e, d], Tensor[e]
    """
    return torch.sub(total, back, out=out), c_total - c_back


def combine(
    v: Tensor, received: Tensor, c_received: Tensor, *, out: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """A worker's sum and count after receiving (section 1.2).

    ``S_i = v_i + sum_j m_{j->i}`` and ``C_i = 1 + sum_j c_{j->i}``.

    Parameters
    ----------
    v : Tensor[n, d]
    received, c_received : Tensor[n, d], Tensor[n]
        Sum over neighbours of the messages (counts) that arrived this step.
    out : Tensor[n, d], optional
        Where to write the sums (saves an allocation).
    """
    return torch.add(v, received, out=out), 1 + c_received


def average(
    S: Tensor,
    C: Tensor | float,
    n: int,
    normalization: Normalization,
    fill: Tensor | None = None,
    *,
    inplace: bool = False,
) -> Tensor:
    """Turn a RelaySum sum into an average (section 1.2, the three normalisations).

    Parameters
    ----------
    S : Tensor[n, d]
        Sums ``S_i``.
    C : Tensor[n] or float
        Counts ``C_i``: how many workers' values ``S_i`` holds (a float for one worker).
    n : int
        World size.
    normalization : {"world_size", "counts", "sum"}
        ``world_size``: ``(S + (n - C) * fill) / n`` (RelaySum/Model); ``counts``:
        ``S / C``; ``sum``: ``S / n`` (RelaySum/Grad, missing workers count as 0).
    fill : Tensor[d] or Tensor[n, d], optional
        Stand-in for workers that have not arrived; required for ``world_size``.
    inplace : bool, default False
        Overwrite ``S`` with the result instead of allocating.
    """
    if not isinstance(C, Tensor):  # one worker: a Python count, S is [1, d]
        if normalization == "world_size" and n - C == 0:
            # nothing missing: addcmul(S, 0, fill) is S bit for bit, so skip the pass
            return S.div_(n) if inplace else S / n
        C = torch.full((S.shape[0],), float(C), dtype=S.dtype, device=S.device)  # [1]
    if normalization == "world_size":
        missing = (n - C).to(S.dtype).unsqueeze(-1)  # [n, 1]
        if inplace:
            return S.addcmul_(missing, fill).div_(n)
        return torch.addcmul(S, missing, fill).div_(n)  # (S + (n - C) * fill) / n
    if normalization == "counts":
        div = C.to(S.dtype).unsqueeze(-1)  # [n, 1]
        return S.div_(div) if inplace else S / div
    return S.div_(n) if inplace else S / n


def message_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of relayed sums: at least float32, never a downcast (float64 stays float64)."""
    if not dtype.is_floating_point:
        raise ConfigError(
            f"relay values must be floating point, got {dtype}; "
            "integer tensors are kept local (see relay.pack)"
        )
    return torch.promote_types(dtype, torch.float32)


# --------------------------------------------------------------------------------------
# Edge bookkeeping and double-tree slices (section 2.2)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EdgeIndex:
    """The directed edges of a tree, sorted by (src, dst).

    Attributes
    ----------
    src, dst, rev : Tensor[e]
        Sender, recipient and the index of the reverse edge (int64).
    num_nodes : int
    """

    src: Tensor
    dst: Tensor
    rev: Tensor
    num_nodes: int

    @classmethod
    def from_graph(cls, graph: nx.Graph, device: torch.device | str | None = None) -> EdgeIndex:
        """Build the index of a tree (``topology.require_tree`` is checked first)."""
        tree = _topology.require_tree(graph)
        src, dst, rev = _topology.edge_index(tree)
        as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), device=device)  # noqa: E731
        return cls(as_t(src), as_t(dst), as_t(rev), tree.number_of_nodes())

    def degrees(self) -> Tensor:
        """Tensor[n]: how many neighbours each worker has."""
        return torch.bincount(self.src, minlength=self.num_nodes)

    def to(self, device: torch.device | str) -> EdgeIndex:
        return EdgeIndex(
            self.src.to(device), self.dst.to(device), self.rev.to(device), self.num_nodes
        )


def tree_slices(num_trees: int) -> list[slice]:
    """Flat-vector slice handled by each tree: tree k takes indices ``k::num_trees``.

    With double binary trees, tree 0 relays the even and tree 1 the odd flat indices
    (docs/algorithm.md section 2.2).
    """
    return [slice(k, None, num_trees) for k in range(num_trees)]


def _as_trees(trees: nx.Graph | Sequence[nx.Graph]) -> tuple[nx.Graph, ...]:
    out = (trees,) if isinstance(trees, nx.Graph) else tuple(trees)
    if not out:
        raise ConfigError("RelaySum needs at least one tree; pass e.g. topology.binary_tree(n)")
    sizes = {t.number_of_nodes() for t in out}
    if len(sizes) != 1:
        raise ConfigError(
            f"all trees must span the same workers, got sizes {sorted(sizes)}; "
            "build them with the same n"
        )
    return out


def _check_mode(normalization: str, fill: str, initial: Tensor | None) -> None:
    if normalization not in NORMALIZATIONS:
        raise ConfigError(
            f"unknown normalization {normalization!r}; use one of {', '.join(NORMALIZATIONS)}"
        )
    if fill not in FILLS:
        raise ConfigError(f"unknown fill {fill!r}; use one of {', '.join(FILLS)}")
    if normalization == "world_size" and initial is None:
        raise ConfigError(
            "normalization='world_size' needs the initial model: pass "
            "initial=x0 (Tensor[d]), or use normalization='counts'"
        )


# --------------------------------------------------------------------------------------
# Stacked view: every worker at once
# --------------------------------------------------------------------------------------
class _TreeRelay:
    """State of one tree's relay on stacked tensors (messages on every directed edge).

    What a worker receives at step t is its inbox at step t+1, so it is kept rather than
    summed again: per step one gather over edges, one scatter-add, and elementwise ops.
    Every ``[e, d]`` and ``[n, d]`` intermediate lives in a buffer reused across steps
    (the step allocates only the sums it returns), which keeps peak memory at a few
    copies of the messages and spares the CPU allocator's page faults on large models.
    """

    def __init__(self, edges: EdgeIndex) -> None:
        self.edges = edges
        self.m: Tensor | None = None  # [e, d_k], messages sent at step t-1
        self.c: Tensor | None = None  # [e]
        self.inbox: Tensor | None = None  # [n, d_k], sum of the messages received at t-1
        self.c_inbox: Tensor | None = None  # [n]
        self._spare: Tensor | None = None  # [e, d_k]: the next step's messages go here
        self._back: Tensor | None = None  # [e, d_k]: m_{j->i} of t-1 gathered per edge
        self._total: Tensor | None = None  # [n, d_k]

    def step(self, v: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor]:
        E, n = self.edges, self.edges.num_nodes
        e, d = len(E.src), v.shape[1]
        if self.m is None:
            # m^(-1) = 0, c^(-1) = 0 (section 1.4, first step)
            self.m, self.c = v.new_zeros(e, d), v.new_zeros(e)  # [e, d_k], [e]
            self.inbox, self.c_inbox = v.new_zeros(n, d), v.new_zeros(n)  # [n, d_k], [n]
            self._spare, self._back = v.new_empty(e, d), v.new_empty(e, d)
            self._total = v.new_empty(n, d)
        assert self.c is not None and self.inbox is not None and self.c_inbox is not None
        assert self._spare is not None and self._back is not None
        total, c_total = combine(v, self.inbox, self.c_inbox, out=self._total)  # [n, d]
        torch.index_select(self.m, 0, E.rev, out=self._back)  # m_{j->i}^(t-1) on i->j
        m, c = outgoing(
            torch.index_select(total, 0, E.src, out=self._spare),
            self._back,
            c_total.index_select(0, E.src),
            self.c.index_select(0, E.rev),
            out=self._spare,  # total_src - back, written over the gathered total
        )  # [e, d], [e]
        if keep is not None:  # simulated drop (section 1.4): discarded and not relayed on
            m.mul_(keep.unsqueeze(-1).to(m.dtype))
            c = c * keep.to(c.dtype)
        self._spare, self.m, self.c = self.m, m, c
        self.inbox.zero_().index_add_(0, E.dst, m)  # [n, d_k]
        self.c_inbox = v.new_zeros(n).index_add_(0, E.dst, c)  # [n]
        return combine(v, self.inbox, self.c_inbox)

    def state_dict(self) -> dict[str, Tensor | None]:
        """The messages and counts on every directed edge at the latest step (the inbox
        is their sum, recomputed on load)."""
        return {"m": self.m, "c": self.c}

    def load_state_dict(self, state: Mapping[str, Tensor | None]) -> None:
        m, c = state["m"], state["c"]
        self.m, self.c = m, c
        if m is None or c is None:
            self.inbox = self.c_inbox = self._spare = self._back = self._total = None
            return
        n, dst = self.edges.num_nodes, self.edges.dst.to(m.device)
        self.inbox = m.new_zeros(n, m.shape[1]).index_add_(0, dst, m)  # as step() sums it
        self.c_inbox = c.new_zeros(n).index_add_(0, dst, c)
        self._spare, self._back = torch.empty_like(m), torch.empty_like(m)
        self._total = m.new_empty(n, m.shape[1])


class _ShardTreeRelay:
    """One rank's share of a tree's relay when the workers are split over ranks.

    The rank holds the workers ``nodes`` and the messages on the directed edges that
    end at them (received at the previous step, whoever sent them). Per step it computes
    the messages its workers send (the same :func:`outgoing` as :class:`_TreeRelay`),
    hands those whose recipient lives on another rank to ``exchange`` and receives the
    ones sent to its workers. Edges keep their global order, so every sum is taken in
    the single-process order and the results are bitwise equal to it.

    Parameters
    ----------
    edges : EdgeIndex
        The whole tree.
    nodes : Tensor[n_k] of int64
        This rank's workers (global ids, ascending).
    owner : Tensor[n] of int64
        The rank of every worker.
    rank : int
    exchange : callable
        ``exchange(outgoing, incoming, like)``: ``outgoing`` maps a peer rank to the
        ``Tensor[r, w]`` rows sent to it, ``incoming`` a peer rank to the number of
        rows it sends here; returns the received ``Tensor[rows, w]`` by peer rank
        (:func:`relayfl.distributed.exchange`).
    """

    def __init__(
        self,
        edges: EdgeIndex,
        nodes: Tensor,
        owner: Tensor,
        rank: int,
        exchange: Callable[..., dict[int, Tensor]],
    ) -> None:
        self.edges = edges
        self.exchange = exchange
        src, dst, rev = edges.src.cpu(), edges.dst.cpu(), edges.rev.cpu()
        owner = owner.cpu()
        n, e = edges.num_nodes, len(src)
        pos = torch.full((n,), -1, dtype=torch.long)
        pos[nodes.cpu()] = torch.arange(len(nodes))
        out_ids = torch.nonzero(owner[src] == rank).flatten()  # edges we send on
        in_ids = torch.nonzero(owner[dst] == rank).flatten()  # edges we receive on
        in_pos = torch.full((e,), -1, dtype=torch.long)
        in_pos[in_ids] = torch.arange(len(in_ids))
        device = edges.src.device
        self.out_ids = out_ids.to(device)
        self.out_src = pos[src[out_ids]].to(device)  # local row of each sender
        self.back = in_pos[rev[out_ids]].to(device)  # m_{j->i} of t-1, an in-edge of ours
        self.in_dst = pos[dst[in_ids]].to(device)
        peer_of_out, peer_of_in = owner[dst[out_ids]], owner[src[in_ids]]
        local_in = torch.nonzero(peer_of_in == rank).flatten()
        out_pos = torch.full((e,), -1, dtype=torch.long)
        out_pos[out_ids] = torch.arange(len(out_ids))
        self.local_in = local_in.to(device)  # in-edges we also send on (both ends ours)
        self.local_out = out_pos[in_ids[local_in]].to(device)
        peers = sorted((set(peer_of_out.tolist()) | set(peer_of_in.tolist())) - {rank})
        self.sends = {
            p: torch.nonzero(peer_of_out == p).flatten().to(device)
            for p in peers
            if bool((peer_of_out == p).any())
        }
        self.recvs = {
            p: torch.nonzero(peer_of_in == p).flatten().to(device)
            for p in peers
            if bool((peer_of_in == p).any())
        }
        self.m: Tensor | None = None  # [e_in, d_k]: messages received at t-1
        self.c: Tensor | None = None  # [e_in]
        self.inbox: Tensor | None = None  # [n_k, d_k]
        self.c_inbox: Tensor | None = None  # [n_k]
        self.num_local = len(nodes)

    def step(self, v: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor]:
        n_k, d, e_in = self.num_local, v.shape[1], len(self.in_dst)
        if self.m is None:  # m^(-1) = 0, c^(-1) = 0 (section 1.4, first step)
            self.m, self.c = v.new_zeros(e_in, d), v.new_zeros(e_in)
            self.inbox, self.c_inbox = v.new_zeros(n_k, d), v.new_zeros(n_k)
        assert self.c is not None and self.inbox is not None and self.c_inbox is not None
        total, c_total = combine(v, self.inbox, self.c_inbox)  # [n_k, d], [n_k]
        m, c = outgoing(
            total.index_select(0, self.out_src),
            self.m.index_select(0, self.back),
            c_total.index_select(0, self.out_src),
            self.c.index_select(0, self.back),
        )  # [e_out, d], [e_out]
        if keep is not None:  # the receiver's draw, applied by the sender (section 1.4)
            k = keep.index_select(0, self.out_ids)
            m.mul_(k.unsqueeze(-1).to(m.dtype))
            c = c * k.to(c.dtype)
        m_in, c_in = v.new_empty(e_in, d), v.new_empty(e_in)
        m_in[self.local_in] = m[self.local_out]
        c_in[self.local_in] = c[self.local_out]
        if self.sends or self.recvs:
            rows = torch.cat([m, c.unsqueeze(-1)], 1)  # [e_out, d + 1]: message and count
            got = self.exchange(
                {p: rows[idx] for p, idx in self.sends.items()},
                {p: len(idx) for p, idx in self.recvs.items()},
                rows,
            )
            for p, idx in self.recvs.items():
                m_in[idx] = got[p][:, :d]
                c_in[idx] = got[p][:, d]
        self.m, self.c = m_in, c_in
        self.inbox = v.new_zeros(n_k, d).index_add_(0, self.in_dst, m_in)  # [n_k, d]
        self.c_inbox = v.new_zeros(n_k).index_add_(0, self.in_dst, c_in)  # [n_k]
        return combine(v, self.inbox, self.c_inbox)

    def state_dict(self) -> dict[str, Tensor | None]:
        """The messages and counts received on this rank's in-edges at the latest step
        (each cross-rank message is saved once, by the rank that received it)."""
        return {"m": self.m, "c": self.c}

    def load_state_dict(self, state: Mapping[str, Tensor | None]) -> None:
        m, c = state["m"], state["c"]
        self.m, self.c = m, c
        if m is None or c is None:
            self.inbox = self.c_inbox = None
            return
        dst = self.in_dst.to(m.device)
        self.inbox = m.new_zeros(self.num_local, m.shape[1]).index_add_(0, dst, m)
        self.c_inbox = c.new_zeros(self.num_local).index_add_(0, dst, c)


class RelaySum:
    """RelaySum on stacked tensors: all workers of one or more spanning trees at once.

    Parameters
    ----------
    trees : networkx.Graph or sequence of networkx.Graph
        A spanning tree on workers ``0..n-1``, or several (double binary trees), in
        which case tree ``k`` relays the flat indices ``k::len(trees)`` (section 2.2).
    normalization : {"world_size", "counts", "sum"}, default "world_size"
        Section 1.2: RelaySum/Model with a fill, average over what arrived, or
        RelaySum/Grad (``S / n``).
    initial : Tensor[d], optional
        The shared initial model ``x0``; required for ``world_size``.
    fill : {"initial", "latest"}, default "initial"
        What stands in for workers whose values have not arrived (or were dropped):
        ``x0`` (the paper's normal runs) or the worker's own latest average (the
        reference-state variant of Table 5; use it on lossy networks, since with ``x0``
        every dropped message pulls the model back towards its start).
    device : torch.device or str, optional
    shard : relayfl.shard.Shard, optional
        This rank's workers when the simulation is split over ranks
        (:mod:`relayfl.distributed`): :meth:`step` then takes and returns ``[n_k, d]``
        and exchanges the messages on tree edges between ranks through
        ``shard.exchange``, bitwise equal to the single-process relay.

    Examples
    --------
    >>> from relayfl import relay, topology
    >>> tree = topology.binary_tree(16)
    >>> x0 = torch.zeros(8)
    >>> rs = relay.RelaySum(tree, normalization="world_size", initial=x0)
    >>> avg = rs.step(torch.randn(16, 8))  # [n, d] -> [n, d]

    Notes
    -----
    Synchronous mode (docs/algorithm.md sections 1.1-1.3): a worker at tree distance ``d``
    contributes its value from ``max(d - 1, 0)`` steps earlier. Sums are kept in at
    least float32 (:func:`message_dtype`).
    """

    def __init__(
        self,
        trees: nx.Graph | Sequence[nx.Graph],
        *,
        normalization: Normalization = "world_size",
        initial: Tensor | None = None,
        fill: Fill = "initial",
        device: torch.device | str | None = None,
        shard: Shard | None = None,
    ) -> None:
        self.trees = _as_trees(trees)
        _check_mode(normalization, fill, initial)
        self.normalization = normalization
        self.fill_mode = fill
        self.num_nodes = self.trees[0].number_of_nodes()
        self.shard = shard
        edges = [EdgeIndex.from_graph(t, device) for t in self.trees]
        self._relays: list[_TreeRelay] | list[_ShardTreeRelay] = (
            [_TreeRelay(e) for e in edges]
            if shard is None
            else [
                _ShardTreeRelay(e, shard.nodes, shard.owner, shard.rank, shard.exchange)
                for e in edges
            ]
        )
        self._edges = edges
        self._rows = self.num_nodes if shard is None else len(shard.nodes)
        self._slices = tree_slices(len(self.trees))
        self._fill: Tensor | None = None if initial is None else initial.detach().clone()
        self.last_counts: Tensor | None = None  # [num_trees, n]: C_i of the latest step

    @property
    def edge_indices(self) -> list[EdgeIndex]:
        return list(self._edges)

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`step` carries to the next step (for checkpoints): per tree
        the messages and counts of the latest step, the fill and the latest counts.
        Sharded, only this rank's share (the messages its workers received)."""
        return {
            "trees": [r.state_dict() for r in self._relays],
            "fill": self._fill,
            "last_counts": self.last_counts,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the next :meth:`step` continues bit for bit.

        Raises
        ------
        ConfigError
            A state of a different number of trees.
        """
        if len(state["trees"]) != len(self._relays):
            raise ConfigError(
                f"relay state holds {len(state['trees'])} trees, this relay has "
                f"{len(self._relays)}; resume with the same topology"
            )
        for relay, saved in zip(self._relays, state["trees"], strict=True):
            relay.load_state_dict(saved)
        self._fill, self.last_counts = state["fill"], state["last_counts"]

    def step(
        self, values: Tensor, *, keep: Sequence[Tensor | None] | Tensor | None = None
    ) -> Tensor:
        """Advance one synchronous step and return every worker's average.

        Parameters
        ----------
        values : Tensor[n, d]
            What each worker shares at this step (its half-step model, or its update).
        keep : Tensor[e] of bool, or one per tree, optional
            Which messages of this step arrive (``False`` = dropped, section 1.4).

        Returns
        -------
        Tensor[n, d]
            Each worker's average, in :func:`message_dtype` of ``values``.
        """
        n = self.num_nodes
        if values.dim() != 2 or values.shape[0] != self._rows:
            raise ConfigError(
                f"RelaySum.step expects values of shape [n={self._rows}, d], got "
                f"{tuple(values.shape)}"
            )
        v = values.to(message_dtype(values.dtype))  # [n, d]; never downcast
        keeps = list(keep) if isinstance(keep, (list, tuple)) else [keep] * len(self._relays)
        if len(self._relays) > 1 and isinstance(keep, Tensor):
            raise ConfigError("with several trees pass keep as a list, one mask per tree")
        if len(self._relays) == 1:  # one tree: no interleaving, no extra copy
            S, C = self._relays[0].step(v, keeps[0])  # [n, d], [n]; S is ours to overwrite
            fill = self._fill_for(self._slices[0], v)
            out = average(S, C, n, self.normalization, fill, inplace=True)
            self.last_counts = C.unsqueeze(0)  # [1, n]
        else:
            out = torch.empty_like(v)  # [n, d]
            counts = []
            for relay, sl, k in zip(self._relays, self._slices, keeps, strict=True):
                S, C = relay.step(v[:, sl], k)  # [n, d_k], [n]
                out[:, sl] = average(S, C, n, self.normalization, self._fill_for(sl, v))
                counts.append(C)
            self.last_counts = torch.stack(counts)  # [trees, n]
        if self.normalization == "world_size" and self.fill_mode == "latest":
            self._fill = out.clone()  # x_hat <- x^(t+1): reference-state variant (1.2(1))
        return out

    def _fill_for(self, sl: slice, v: Tensor) -> Tensor | None:
        if self._fill is None:
            return None
        fill = self._fill.to(device=v.device, dtype=v.dtype)
        return fill[..., sl]

    def bytes_per_step(self, d: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """Tensor[n]: bytes each worker sends (= receives) per step for a d-vector.

        Each tree sends its slice of the vector plus one count (8 bytes) per edge.
        """
        itemsize = torch.empty((), dtype=message_dtype(dtype)).element_size()
        total = torch.zeros(self.num_nodes, dtype=torch.int64)
        for edges, sl in zip(self._edges, self._slices, strict=True):
            d_k = len(range(d)[sl])
            total += edges.degrees().cpu() * (d_k * itemsize + 8)
        return total


# --------------------------------------------------------------------------------------
# One-worker view: what a deployed node holds
# --------------------------------------------------------------------------------------
class RelayNode:
    """One worker's side of RelaySum on one tree (what a deployed node needs).

    The node keeps the messages it received at the previous step. Per step it calls
    :meth:`send` to get what to put on each edge, then :meth:`receive` with what its
    neighbours sent in the same step, which returns its average. The math is the same
    :func:`outgoing` / :func:`combine` / :func:`average` as :class:`RelaySum` (a test
    checks the two views agree to 1e-12), written for large models: no ``[k, d]``
    stacks, no zero-filled buffers, received messages kept by reference, and every new
    vector taken from ``alloc`` (a deployed node passes a buffer pool).

    Parameters
    ----------
    tree : networkx.Graph
        The spanning tree (every node holds the same one).
    node : int
        This worker's id.
    normalization, fill : see :class:`RelaySum`
    initial : Tensor[d], optional
        The shared ``x0`` (required for ``world_size``).
    alloc : callable, optional
        ``alloc(like)`` returns an uninitialised tensor shaped like ``like`` that nobody
        else holds (default :func:`torch.empty_like`).

    Notes
    -----
    Messages returned by :meth:`send` and those passed to :meth:`receive` are read,
    never written: one tensor may go to several neighbours, and received ones are kept
    until the next step. The value given to :meth:`send` must stay unchanged until
    :meth:`receive` returns; the average :meth:`receive` returns belongs to the caller.
    """

    def __init__(
        self,
        tree: nx.Graph,
        node: int,
        *,
        normalization: Normalization = "world_size",
        initial: Tensor | None = None,
        fill: Fill = "initial",
        alloc: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        tree = _topology.require_tree(tree)
        _check_mode(normalization, fill, initial)
        if node not in tree:
            raise ConfigError(f"node {node} is not in the tree (nodes 0..{len(tree) - 1})")
        self.node = node
        self.num_nodes = tree.number_of_nodes()
        self.neighbors: list[int] = sorted(int(j) for j in tree.neighbors(node))
        self.normalization = normalization
        self.fill_mode = fill
        self._alloc = alloc or torch.empty_like
        self._fill = None if initial is None else initial.detach().clone()
        k = len(self.neighbors)
        self._m: list[Tensor | None] = [None] * k  # m_{j->i} received at t-1 (None: zero)
        self._c: list[float] = [0.0] * k  # c_{j->i} received at t-1
        self._inbox: Tensor | None = None  # sum of self._m (None: zero)
        self._v: Tensor | None = None  # the value shared at this step
        self.last_count = 1.0  # C_i of the latest step

    def send(self, value: Tensor) -> dict[int, tuple[Tensor, float]]:
        """Messages for each neighbour at this step: ``{j: (m_{i->j}, c_{i->j})}``.

        Parameters
        ----------
        value : Tensor[d]
            What this worker shares at this step.
        """
        return {j: (m, c) for j, m, c in self.send_each(value)}

    def send_each(self, value: Tensor) -> Iterator[tuple[int, Tensor, float]]:
        """:meth:`send` one neighbour at a time, ``(j, m_{i->j}, c_{i->j})``, so each
        message can go out while the next is computed (run it to the end)."""
        v = value.detach().to(message_dtype(value.dtype))  # [d]
        self._v = v
        total, c_total = self._combine(v)  # v + what arrived at t-1
        for a, j in enumerate(self.neighbors):
            back, c_back = self._m[a], self._c[a]
            if back is None:  # total - 0 = total, no copy
                yield j, total, c_total - c_back
            else:
                m, c = outgoing(total, back, c_total, c_back, out=self._alloc(v))  # [d]
                yield j, m, c

    def receive(self, messages: Mapping[int, tuple[Tensor, float] | None]) -> Tensor:
        """Take this step's messages from the neighbours and return the average.

        Parameters
        ----------
        messages : mapping of neighbour id to ``(m_{j->i}, c_{j->i})``
            A missing neighbour, or ``None``, is a dropped message (section 1.4): it
            counts as zero and is not relayed on.

        Returns
        -------
        Tensor[d]
        """
        v = self._v
        if v is None:
            raise ConfigError("RelayNode.receive before send; call send(value) first")
        for a, j in enumerate(self.neighbors):
            got = messages.get(j)
            self._m[a] = None if got is None else got[0].to(v.dtype)
            self._c[a] = 0.0 if got is None else float(got[1])
        self._sum_inbox()
        S, C = self._combine(v)  # v + what arrived now
        fill = None if self._fill is None else self._fill.to(v.dtype)
        out = average(S.view(1, -1), C, self.num_nodes, self.normalization, fill, inplace=True)
        if self.normalization == "world_size" and self.fill_mode == "latest":
            self._fill = self._alloc(v).copy_(out[0])  # the caller owns what we return
        self.last_count = C
        return S

    def _combine(self, v: Tensor) -> tuple[Tensor, float]:
        """:func:`combine` of ``v`` with the inbox, in a fresh buffer (a copy of ``v``
        when nothing arrived: ``v + 0``)."""
        c_inbox = sum(self._c)
        if self._inbox is None:
            return self._alloc(v).copy_(v), 1 + c_inbox
        return combine(v, self._inbox, c_inbox, out=self._alloc(v))  # [d], float

    def _sum_inbox(self) -> None:
        present = [m for m in self._m if m is not None]
        if not present:
            self._inbox = None
        elif len(present) == 1:
            self._inbox = present[0]  # 0 + m: the message itself, no copy
        else:
            inbox = torch.add(present[0], present[1], out=self._alloc(present[0]))
            for m in present[2:]:
                inbox.add_(m)
            self._inbox = inbox

    def state_dict(self) -> dict[str, Tensor | None]:
        """The relay buffers (for checkpoints): ``m`` [k, d] and ``c`` [k] received at the
        latest step (``None`` before any), and the fill."""
        present = [m for m in self._m if m is not None]
        if not present:
            return {"m": None, "c": None, "fill": self._fill}
        m = torch.stack([torch.zeros_like(present[0]) if r is None else r for r in self._m])
        return {"m": m, "c": torch.tensor(self._c, dtype=m.dtype), "fill": self._fill}

    def load_state_dict(self, state: Mapping[str, Tensor | None]) -> None:
        m, c = state["m"], state["c"]
        self._fill = state["fill"]
        if m is None or c is None:
            self._m = [None] * len(self.neighbors)
            self._c = [0.0] * len(self.neighbors)
        else:
            # an all-zero row is a message that did not arrive (zero either way)
            self._m = [row.clone() if bool(row.any()) else None for row in m]
            self._c = [float(x) for x in c]
        self._sum_inbox()


# --------------------------------------------------------------------------------------
# Packing named tensors into the flat relayed vector
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Where each named tensor sits in the flat relayed vector.

    Attributes
    ----------
    names, shapes, dtypes : tuples, one entry per relayed tensor
    offsets : tuple of int
        Start of each relayed tensor in the flat vector.
    local : tuple of str
        Names kept local (integer buffers such as BatchNorm's ``num_batches_tracked``).
    numel : int
        Length d of the flat vector.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]
    offsets: tuple[int, ...]
    local: tuple[str, ...]
    numel: int


_warned_local: set[tuple[str, ...]] = set()


def pack(tensors: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]]) -> tuple[Tensor, Layout]:
    """Flatten named floating-point tensors into one relayed vector.

    Integer and boolean tensors are never relayed: they stay local, listed in
    ``Layout.local``, with one warning per set of names.

    Returns
    -------
    flat : Tensor[d]
        In the promoted dtype of the relayed tensors (at least float32).
    layout : Layout
    """
    items = list(tensors.items()) if isinstance(tensors, Mapping) else list(tensors)
    relayed = [(k, t) for k, t in items if t.dtype.is_floating_point]
    local = tuple(k for k, t in items if not t.dtype.is_floating_point)
    if local and local not in _warned_local:
        _warned_local.add(local)
        warnings.warn(
            f"relayfl: {len(local)} non-floating tensors are kept local and never "
            f"relayed: {', '.join(local[:4])}{' ...' if len(local) > 4 else ''}",
            stacklevel=2,
        )
    dtype = torch.float32
    for _, t in relayed:
        dtype = torch.promote_types(dtype, t.dtype)
    offsets, off = [], 0
    for _, t in relayed:
        offsets.append(off)
        off += t.numel()
    flat = (
        torch.cat([t.detach().reshape(-1).to(dtype) for _, t in relayed])
        if relayed
        else torch.zeros(0, dtype=dtype)
    )
    layout = Layout(
        tuple(k for k, _ in relayed),
        tuple(tuple(t.shape) for _, t in relayed),
        tuple(t.dtype for _, t in relayed),
        tuple(offsets),
        local,
        off,
    )
    return flat, layout


def unpack(flat: Tensor, layout: Layout) -> dict[str, Tensor]:
    """Inverse of :func:`pack` for the relayed tensors (each back in its own dtype)."""
    if flat.shape[-1] != layout.numel:
        raise ConfigError(
            f"flat vector has {flat.shape[-1]} entries, layout expects "
            f"{layout.numel}; pack and unpack the same model"
        )
    return {
        name: flat[..., off : off + int(np.prod(shape, dtype=np.int64))]
        .reshape(*flat.shape[:-1], *shape)
        .to(dt)
        for name, shape, dt, off in zip(
            layout.names, layout.shapes, layout.dtypes, layout.offsets, strict=True
        )
    }
