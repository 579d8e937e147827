"""The step protocol: send a round's messages, collect the neighbours', and mix.

At step ``t`` a node sends its messages, then waits for one message per neighbour and
tree. A message that misses ``step_timeout`` counts as dropped (docs/algorithm.md section
1.4); the wait restarts while the message's bytes arrive, while its sender catches up,
or reports being blocked on another peer (see :meth:`StepProtocol._collect`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import torch
from torch import Tensor

from relayfl import rng
from relayfl.node.options import NodeStopped
from relayfl.transport.base import Message

__all__ = ["StepProtocol"]


class StepProtocol:
    """The communication half of :class:`~relayfl.node.Node` (a mixin over the node's
    state: mixing objects, inbox, outboxes, peers, under ``self._lock``)."""

    _lock: threading.RLock
    _cv: threading.Condition

    def _communicate(self, r: int, mix_step: int, x_start: Tensor, x_half: Tensor) -> Tensor:
        """Send this round's messages, collect the neighbours', and mix (one round)."""
        if self.grad:
            value = torch.sub(x_half, x_start, out=self._pool.get(x_half.numel(), x_half.dtype))
        else:
            value = x_half  # [d]
        outbox: dict[int, list[Message]] = {j: [] for j in self.neighbors}
        expected = [(k, j) for k in range(len(self.slices)) for j in sorted(self.tree_neighbors[k])]
        with self._lock:
            self._outboxes[r] = outbox  # filled below; a resend takes what is there
            self._sent_at[r] = time.monotonic()
            for old in [k for k in self._outboxes if k < r - 1]:
                del self._outboxes[old]
                self._sent_at.pop(old, None)
            skip = {j for j, p in self._peers.items() if p.dead or p.done}
        for k, sl in enumerate(self.slices):
            part = value[sl].contiguous()  # [d_k]
            if self.relay:
                messages = self.relays[k].send_each(part)
            else:
                messages = ((j, part, 1.0) for j in self.gossips[k].neighbors)
            for j, m, c in messages:  # each goes on the wire while the next is computed
                message = Message(self.run_id, r, self.id, k, c, m.contiguous())
                outbox[j].append(message)
                if j not in skip:
                    self.transport.send(j, message)
        with self._lock:
            self._phase = "wait"
        received = self._collect(r, expected)
        if self._abort.is_set():
            raise NodeStopped(f"node {self.id} stopped at step {r}; resume with --resume")
        keep = self._drop_draws(mix_step, expected)
        for key, kept in keep.items():
            if not kept and received.get(key) is not None:
                received[key] = None
                self._drops["injected"] += 1
        mixed = []
        for k, sl in enumerate(self.slices):
            part = value[sl].contiguous()
            got = {j: received.get((k, j)) for j in self.tree_neighbors[k]}
            if self.relay:
                mixed.append(self.relays[k].receive(got))
            else:
                payloads = {j: None if v is None else v[0] for j, v in got.items()}
                renorm = self.config.drop_probability > 0 or any(
                    v is None for v in payloads.values()
                )
                mixed.append(self.gossips[k].mix(part, payloads, renormalize=renorm))
        del received, got
        if len(mixed) == 1:
            out = mixed[0]  # [d]
        else:
            out = self._pool.get(value.numel(), mixed[0].dtype)  # [d]
            for sl, part in zip(self.slices, mixed, strict=True):
                out[sl] = part
        with self._cv:
            self._cur = r + 1
            self._phase = "train"
            for key in [key for key in self._inbox if key[0] <= r]:
                del self._inbox[key]
        if self.grad:
            return torch.add(
                x_start, out.to(x_start.dtype), out=self._pool.get(out.numel(), x_start.dtype)
            )
        return out.to(x_half.dtype)

    def _drop_draws(
        self, step: int, expected: list[tuple[int, int]]
    ) -> dict[tuple[int, int], bool]:
        """Injected drops, drawn exactly as the simulator does (section 1.4): this node,
        as receiver, draws one number per incoming edge from generator
        ``(seed, node, step, "drop")``, graph by graph, by sender."""
        p = self.config.drop_probability
        if p <= 0 or not expected:
            return {}
        draws = torch.rand(
            len(expected), generator=rng.generator(self.config.seed, self.id, step, "drop")
        )
        return {key: u >= p for key, u in zip(expected, draws.tolist(), strict=True)}

    def _collect(self, r: int, expected: list[tuple[int, int]]) -> dict[tuple[int, int], Any]:
        """Wait for every expected ``(tree, sender)`` message of step ``r``.

        A message is given up on (None) at once when its sender is dead or finished, is
        two or more steps ahead (it sent step ``r`` long ago, and it was refused as too
        far ahead), or (re)started after step ``r``; otherwise when it misses
        ``step_timeout``. That clock restarts while bytes of the message are arriving,
        when the sender comes back from the dead, while the sender is behind and catching
        up step by step (this node holds for it), while it reports being blocked on
        another peer (on a tree such chains end at a timeout or a death, so no cap; on
        graphs with cycles capped at ``step_timeout + 2 dead_after``), and while it waits
        for an earlier message of ours that we resend (capped).
        """
        opts = self.options
        start = time.monotonic()
        cap = opts.step_timeout + 2 * opts.dead_after
        got: dict[tuple[int, int], Any] = {}
        reasons: dict[int, str] = {}
        tick = start
        with self._cv:
            while True:
                now = time.monotonic()
                if now - tick > 2.0:  # this node was frozen: its own pause is no timeout
                    start += now - tick - 0.25
                tick = now
                pending: set[int] = set()
                for key in expected:
                    if key in got:
                        continue
                    k, j = key
                    item = self._inbox.pop((r, k, j), None)
                    if item is not None:
                        got[key] = item
                        continue
                    p = self._peers[j]
                    reason = None
                    if p.dead:
                        reason = "dead"
                    elif p.done:
                        reason = "finished"
                    elif p.status.get("phase") in ("train", "wait") and p.status["step"] >= r + 2:
                        reason = "ahead"  # it sent step r long ago (refused as too far ahead)
                    elif r < p.status.get("since", 0):
                        reason = "skipped"  # it (re)started after step r: it never sends r
                    else:
                        ref = max(start, p.revived_at, p.progress_at)
                        if (
                            p.status.get("step", r) < r
                            and p.status.get("phase") in ("train", "wait")
                            and now - p.advanced_at < opts.step_timeout
                        ):
                            ref = now  # behind us and catching up step by step: we hold
                        elif p.blocked_at > ref and (self._acyclic or now - start < cap):
                            ref = p.blocked_at  # blocked on another peer (bounded by its wait)
                        elif p.stuck_at > ref and now - start < cap:
                            ref = p.stuck_at  # waits for our resend
                        if now - ref > opts.step_timeout:
                            reason = "timeout"
                    if reason is not None:
                        got[key] = None
                        reasons[j] = reason
                        self._drops[reason] += 1
                    else:
                        pending.add(j)
                self._waiting_on = sorted(pending)
                if not pending or self._abort.is_set():
                    break
                self._cv.wait(0.25)
            self._waiting_on = []
        for j, reason in sorted(reasons.items()):
            if reason == "timeout":
                self._event(
                    "drop",
                    step=r,
                    neighbor=j,
                    reason=reason,
                    level=logging.WARNING,
                    text=(
                        f"step {r}: no message from node {j} within {opts.step_timeout:g} s; "
                        f"counted as dropped (fill={self.config.fill})"
                    ),
                )
            else:
                self._event("drop", step=r, neighbor=j, reason=reason)
        return got
