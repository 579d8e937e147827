"""The checks every received message passes before it may touch a model.

Pure functions of the run's shape: :class:`MessageCheck` (run id, tree, sender, dtype,
shape, count, NaN/Inf) and :func:`step_window` (a step too old, a replay, or too far
ahead). A failed check raises or returns the :class:`~relayfl.transport.base.Rejected`
kind the node logs in one line.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import torch

from relayfl.transport.base import Message, Rejected

__all__ = ["MessageCheck", "step_window"]


class MessageCheck:
    """Checks a data message against the run (docs/algorithm.md section 1.4: a bad message
    never touches the model).

    Parameters
    ----------
    run_id : str
    tree_neighbors : sequence of sets of int
        This node's neighbours in each tree (graph).
    dtype : torch.dtype
        The payload dtype this run sends.
    numels : sequence of int
        The payload length of each tree's slice.
    relay : bool
        Relay messages carry a count in ``1..n``; gossip messages carry 1.
    n : int
        The number of nodes.
    """

    def __init__(
        self,
        run_id: str,
        tree_neighbors: Sequence[Collection[int]],
        dtype: torch.dtype,
        numels: Sequence[int],
        *,
        relay: bool,
        n: int,
    ) -> None:
        self.run_id, self.tree_neighbors, self.dtype = run_id, tree_neighbors, dtype
        self.numels, self.relay, self.n = list(numels), relay, n

    def __call__(self, m: Message) -> None:
        """Raise :class:`Rejected` (kind and detail) unless ``m`` fits this run."""
        if m.run_id != self.run_id:
            raise Rejected("wrong-run", f"run id {m.run_id!r}, this run is {self.run_id!r}")
        trees = len(self.tree_neighbors)
        if not 0 <= m.tree < trees:
            raise Rejected("wrong-tree", f"tree {m.tree}; this run has {trees}")
        if m.sender not in self.tree_neighbors[m.tree]:
            raise Rejected("not-neighbour", f"node {m.sender} is not a neighbour in tree {m.tree}")
        if m.payload.dtype != self.dtype:
            raise Rejected(
                "wrong-dtype", f"payload is {m.payload.dtype}, this run sends {self.dtype}"
            )
        if tuple(m.payload.shape) != (self.numels[m.tree],):
            raise Rejected(
                "wrong-shape",
                f"payload shape {tuple(m.payload.shape)}, tree {m.tree} carries "
                f"({self.numels[m.tree]},)",
            )
        c = m.count
        if self.relay:
            if not (math.isfinite(c) and 1 <= c <= self.n and c == int(c)):
                raise Rejected("bad-count", f"count {c} is not a whole number in 1..{self.n}")
        elif c != 1:
            raise Rejected("bad-count", f"gossip messages have count 1, got {c}")
        if not bool(torch.isfinite(m.payload.sum())) and not bool(torch.isfinite(m.payload).all()):
            bad = int((~torch.isfinite(m.payload)).sum())
            raise Rejected("non-finite", f"payload holds {bad} NaN/Inf values")


def step_window(m: Message, cur: int, buffered: bool) -> Rejected | None:
    """Whether a checked message fits the step window at step ``cur``.

    A message for step ``cur`` or ``cur + 1`` is buffered; one for a step already used,
    or a second one for a buffered key, is a ``replay``; one further ahead is
    ``too-far-ahead``. Returns the refusal, or None when the message is to be buffered.
    """
    if m.step < cur or buffered:
        return Rejected(
            "replay",
            f"message for step {m.step} (tree {m.tree}) came after that step was used or "
            f"buffered; now at step {cur}",
        )
    if m.step > cur + 1:
        return Rejected(
            "too-far-ahead", f"message for step {m.step}, more than one step ahead of step {cur}"
        )
    return None
