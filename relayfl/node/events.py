"""A node's event log: ``log.jsonl``, events on stdout, and refusals logged once."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import sys
import threading
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import IO, Any

__all__ = ["EventLog", "peer_key"]

#: Sources whose warning rate the log remembers (the least recent are forgotten).
MAX_SOURCES = 1024
#: Records per refusal kind written to ``log.jsonl`` (the counts go on in results.json).
MAX_RECORDS_PER_KIND = 1000

_ADDRESS = re.compile(r"(?:ipv[46]:)?\[?([0-9A-Za-z.:%-]*?)\]?:\d+\)?$")


def peer_key(source: str) -> str:
    """The peer a refusal's ``source`` names, without its source port.

    ``"10.0.0.5:51234"``, ``"ipv4:10.0.0.5:51234"`` (gRPC) and
    ``"node 3 (10.0.0.5:51234)"`` all give ``"10.0.0.5"``; ``"node 3"`` stays as it is.
    A peer that opens a new connection (a new port) per attempt is still one peer.
    """
    m = _ADDRESS.search(source)
    return m.group(1) if m and m.group(1) else source


class EventLog:
    """Where a node's events go: one JSON line each in ``log.jsonl`` (and on stdout when
    ``relayfl launch`` reads them), plus a log line for the notable ones.

    Parameters
    ----------
    node : int
        The node id, in every record.
    logger : logging.Logger
    stdout : bool
        Also print every record as a JSON line on stdout.
    t0 : float, optional
        ``time.monotonic()`` of the node's start (records carry ``t`` since then).
    """

    def __init__(
        self, node: int, logger: logging.Logger, *, stdout: bool = False, t0: float | None = None
    ) -> None:
        self.node, self.log, self.stdout = node, logger, stdout
        self.t0 = time.monotonic() if t0 is None else t0
        #: Refusals by kind (``results.json`` ``extra.rejected``).
        self.rejected: Counter[str] = Counter()
        self._last_warn: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._jsonl: IO[str] | None = None

    def open(self, path: Path) -> None:
        """Append the records to ``path`` (``log.jsonl``) from now on."""
        with self._lock:
            self._jsonl = open(path, "a", buffering=1)  # noqa: SIM115 - closed in close()

    def close(self) -> None:
        with self._lock:
            if self._jsonl is not None:
                self._jsonl.close()
                self._jsonl = None

    def event(
        self, event: str, *, level: int | None = None, text: str | None = None, **fields: Any
    ) -> None:
        """Record ``event`` with ``fields``; with ``level`` and ``text`` also log ``text``."""
        record = {
            "event": event,
            "node": self.node,
            "t": round(time.monotonic() - self.t0, 4),
            "time": time.time(),
            **fields,
        }
        line = json.dumps(record, default=str)
        failed: OSError | None = None
        with self._lock:
            if self._jsonl is not None:
                try:
                    self._jsonl.write(line + "\n")
                    self._jsonl.flush()
                except OSError as err:  # a full disk must not stop training
                    failed, name = err, self._jsonl.name
                    with contextlib.suppress(OSError):
                        self._jsonl.close()
                    self._jsonl = None
            if self.stdout:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
        if failed is not None:
            self.log.error(
                "node %d: cannot write %s (%s); events are no longer recorded there, "
                "training goes on; free space or point --out elsewhere",
                self.node,
                name,
                failed.strerror or failed,
            )
        if level is not None and text is not None:
            self.log.log(level, "node %d: %s", self.node, text)

    def reject(self, kind: str, source: str, detail: str) -> None:
        """One record per refused message or peer (the first
        :data:`MAX_RECORDS_PER_KIND` of each kind, with the peer's address), and a
        warning line rate-limited per kind and peer address (:func:`peer_key`: one per
        5 s, with a count of the suppressed ones; the state is bounded to
        :data:`MAX_SOURCES` peers)."""
        with self._lock:
            self.rejected[kind] += 1
            count = self.rejected[kind]
            key = (kind, peer_key(source))
            last, suppressed = self._last_warn.pop(key, (-math.inf, 0))
            now = time.monotonic()
            show = now - last >= 5.0
            self._last_warn[key] = (now, 0) if show else (last, suppressed + 1)
            while len(self._last_warn) > MAX_SOURCES:
                self._last_warn.popitem(last=False)
        if count <= MAX_RECORDS_PER_KIND:
            self.event("reject", kind=kind, source=source, detail=detail)
        if show:
            more = f" (+{suppressed} similar suppressed)" if suppressed else ""
            self.log.warning(
                "node %d: rejected %s from %s: %s%s", self.node, kind, source, detail, more
            )
