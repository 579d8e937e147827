"""A node's event log: ``log.jsonl``, events on stdout, and refusals logged once."""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

__all__ = ["EventLog"]


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
        self._last_warn: dict[tuple[str, str], tuple[float, int]] = {}
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
        with self._lock:
            if self._jsonl is not None:
                self._jsonl.write(line + "\n")
                self._jsonl.flush()
            if self.stdout:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
        if level is not None and text is not None:
            self.log.log(level, "node %d: %s", self.node, text)

    def reject(self, kind: str, source: str, detail: str) -> None:
        """One record per refused message or peer (the first 1,000 of each kind), and a
        warning line rate-limited per kind and source (one per 5 s, with a count of
        the suppressed ones)."""
        with self._lock:
            self.rejected[kind] += 1
            count = self.rejected[kind]
            key = (kind, source)
            last, suppressed = self._last_warn.get(key, (-math.inf, 0))
            now = time.monotonic()
            show = now - last >= 5.0
            self._last_warn[key] = (now, 0) if show else (last, suppressed + 1)
        if count <= 1000:
            self.event("reject", kind=kind, source=source, detail=detail)
        if show:
            more = f" (+{suppressed} similar suppressed)" if suppressed else ""
            self.log.warning(
                "node %d: rejected %s from %s: %s%s", self.node, kind, source, detail, more
            )
