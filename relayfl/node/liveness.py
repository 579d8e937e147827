"""Liveness apart from data: heartbeats, what a node knows of each neighbour, deaths.

A heartbeat thread exchanges status calls (step, phase, whom the node waits on) with
every neighbour every ``heartbeat`` seconds. A neighbour silent for ``dead_after``
seconds is declared dead once (its edge counts as dropped from then on, and the node
reports how the tree splits, :func:`split_parts`); one that answers again is revived
and gets what it missed resent.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from relayfl.errors import TransportError
from relayfl.transport.base import Message, Rejected

__all__ = ["Liveness", "PeerState", "clean_status", "split_parts"]


def split_parts(graphs: Sequence[nx.Graph], dead: set[int]) -> list[list[int]]:
    """The parts a topology splits into when the ``dead`` nodes are removed.

    Returns the connected components of the first graph without the dead nodes (with
    several trees, the union of their edges), largest first.
    """
    union = nx.Graph()
    for g in graphs:
        union.add_nodes_from(g.nodes)
        union.add_edges_from(g.edges)
    union.remove_nodes_from(dead)
    parts = [sorted(int(v) for v in c) for c in nx.connected_components(union)]
    return sorted(parts, key=lambda p: (-len(p), p))


@dataclass
class PeerState:
    """What a node knows about one neighbour (guarded by the node's lock)."""

    id: int
    last_seen: float | None = None
    status: dict[str, Any] = field(default_factory=dict)
    dead: bool = False
    done: bool = False
    blocked_at: float = -math.inf  # last seen waiting on someone else
    progress_at: float = -math.inf  # last bytes of a message arriving
    revived_at: float = -math.inf
    advanced_at: float = -math.inf  # last time its step went up
    stuck_at: float = -math.inf  # last seen waiting for an earlier message of ours
    need_resend: bool = False
    resent: set[int] = field(default_factory=set)  # steps already sent again
    in_flight: bool = False


def clean_status(status: Any) -> dict[str, Any] | None:
    if not isinstance(status, dict):
        return None
    step, phase = status.get("step"), status.get("phase")
    lists = [status.get("waiting_on", []), status.get("receiving", [])]
    if (
        not isinstance(step, int)
        or isinstance(step, bool)
        or phase not in ("start", "train", "wait", "done")
        or not all(isinstance(v, list) and all(isinstance(w, int) for w in v) for v in lists)
    ):
        return None
    since = status.get("since", 0)
    if not isinstance(since, int) or isinstance(since, bool):
        return None
    return {
        "step": step,
        "phase": phase,
        "waiting_on": lists[0],
        "receiving": lists[1],
        "since": since,
    }


class Liveness:
    """The heartbeat half of :class:`~relayfl.node.Node` (a mixin: it reads and writes
    the node's state under ``self._lock``: ``_peers``, ``_cur``, ``_phase``,
    ``_waiting_on``, ``_since``, ``_outboxes``, ``_sent_at``, and logs through
    ``_event`` and ``on_reject``)."""

    id: int
    neighbors: list[int]
    graphs: tuple[nx.Graph, ...]
    _lock: threading.RLock
    _cv: threading.Condition
    _peers: dict[int, PeerState]
    _cur: int
    _phase: str
    _waiting_on: list[int]
    _since: int
    _outboxes: dict[int, dict[int, list[Message]]]
    _sent_at: dict[int, float]
    _resend_after: float
    _stop: threading.Event
    _fatal: BaseException | None
    _dead_log: list[dict[str, Any]]
    _revived_log: list[dict[str, Any]]

    def on_status(self, sender: int, status: dict[str, Any]) -> dict[str, Any]:
        """A neighbour's heartbeat (called by the transport); answer with ours."""
        clean = clean_status(status)
        if clean is None:
            self.on_reject("malformed", f"node {sender}", f"status {status!r} is not valid")
        else:
            self._saw(sender, clean)
        return self._status()

    def on_progress(self, sender: int) -> None:
        with self._lock:
            if sender in self._peers:
                self._peers[sender].progress_at = time.monotonic()

    def on_send_failed(self, peer: int, step: int) -> None:
        with self._lock:
            if peer in self._peers:
                self._peers[peer].need_resend = True

    # ------------------------------------------------------------------ liveness
    def _status(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            receiving = [j for j, p in self._peers.items() if now - p.progress_at < 2.0]
            return {
                "step": self._cur,
                "phase": self._phase,
                "waiting_on": list(self._waiting_on),
                "receiving": receiving,
                "since": self._since,
            }

    def _saw(self, j: int, status: dict[str, Any]) -> None:
        resend: list[Message] = []
        revived = False
        with self._cv:
            p = self._peers.get(j)
            if p is None:
                return
            now = time.monotonic()
            p.last_seen = now
            if status["step"] > p.status.get("step", -1):
                p.advanced_at = now
            p.status = status
            p.done = status["phase"] == "done"
            waiting = set(status["waiting_on"])
            if status["phase"] in ("start", "wait"):
                if waiting - {self.id}:
                    p.blocked_at = now  # blocked on another peer, not computing for us
                elif status["step"] < self._cur:
                    p.stuck_at = now  # waits for an earlier message of ours (resent below)
            if p.dead:
                p.dead, revived = False, True
                p.revived_at = now
                p.need_resend = True
            step_j = status["step"]
            if (
                status["phase"] == "wait"
                and self.id in waiting
                and step_j in self._outboxes
                and step_j not in p.resent
                and self.id not in status["receiving"]
                # delivery failed, or it still waits for a step we sent a while ago and left
                and (
                    p.need_resend
                    or (
                        step_j < self._cur
                        and now - self._sent_at.get(step_j, now) > self._resend_after
                    )
                )
            ):
                p.need_resend = False
                p.resent = {k for k in p.resent if k >= step_j - 2} | {step_j}
                resend = list(self._outboxes[step_j].get(j, []))
            self._cv.notify_all()
            step = self._cur
        if revived:
            self._revived_log.append({"neighbor": j, "step": step, "peer_step": status["step"]})
            self._event(
                "revived",
                neighbor=j,
                step=step,
                peer_step=status["step"],
                level=logging.WARNING,
                text=f"neighbour {j} is back (at its step {status['step']}); its edge is restored",
            )
        for message in resend:
            self.transport.send(j, message)
        if resend:
            self._event("resent", neighbor=j, step=resend[0].step)

    def _heartbeat_loop(self) -> None:
        opts = self.options
        timeout = max(2 * opts.heartbeat, 1.0)
        with ThreadPoolExecutor(
            max_workers=max(1, len(self.neighbors)), thread_name_prefix="relayfl-beat"
        ) as pool:
            while not self._stop.is_set():
                status = self._status()
                for j in self.neighbors:
                    with self._lock:
                        p = self._peers[j]
                        if p.in_flight:
                            continue
                        p.in_flight = True
                    future = pool.submit(self.transport.status, j, status, timeout)
                    future.add_done_callback(lambda f, j=j: self._on_reply(j, f))
                self._check_deaths()
                self._stop.wait(opts.heartbeat)

    def _on_reply(self, j: int, future: Future) -> None:
        with self._lock:
            self._peers[j].in_flight = False
        try:
            reply = future.result()
        except Rejected as err:
            self.on_reject(err.kind, f"node {j} (refused our call)", err.detail)
            if self._phase == "start" and err.kind in (
                "wrong-run",
                "wrong-token",
                "not-neighbour",
                "bad-certificate",
            ):
                self._fatal = TransportError(f"node {j} refused this node: {err}")
            return
        except Exception as err:  # a transport bug must not stop the heartbeats
            self.log.warning("node %d: status call to node %d failed: %s", self.id, j, err)
            return
        if reply is None:
            return
        clean = clean_status(reply)
        if clean is None:
            self.on_reject("malformed", f"node {j}", f"status reply {reply!r} is not valid")
            return
        self._saw(j, clean)

    def _check_deaths(self) -> None:
        newly: list[tuple[int, float, int]] = []
        with self._cv:
            now = time.monotonic()
            for p in self._peers.values():
                if p.dead or p.done or p.last_seen is None:
                    continue
                silent = now - p.last_seen
                if silent > self.options.dead_after:
                    p.dead = True
                    newly.append((p.id, silent, int(p.status.get("step", -1))))
            if newly:
                self._cv.notify_all()
            dead = {p.id for p in self._peers.values() if p.dead}
            step = self._cur
        for j, silent, last_step in newly:
            parts = split_parts(self.graphs, dead)
            record = {
                "neighbor": j,
                "step": step,
                "last_seen_step": last_step,
                "silent_s": round(silent, 2),
                "parts": parts,
                "time": time.time(),
            }
            self._dead_log.append(record)
            split = (
                f"; the tree splits into {len(parts)} parts {parts} that train separately"
                if len(parts) > 1
                else ""
            )
            self._event(
                "dead",
                **record,
                level=logging.WARNING,
                text=(
                    f"neighbour {j} declared dead at step {step}: no heartbeat for "
                    f"{silent:.1f} s (last seen at its step {last_step}); its edge counts as "
                    f"dropped from now on{split}"
                ),
            )
