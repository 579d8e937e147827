"""Errors relayfl raises on purpose.

Every error has one base, :class:`RelayflError`, and also subclasses the matching
builtin so that ``except ValueError`` keeps working. Messages are one line: what was
wrong, the value received, and the fix. Only :mod:`relayfl.cli` turns them into an
exit code.
"""

from __future__ import annotations

from typing import Any


class RelayflError(Exception):
    """Base of every error relayfl raises on purpose; the CLI prints it as one line."""


class ConfigError(RelayflError, ValueError):
    """An option, or a combination of options, that cannot run."""


class TopologyError(RelayflError, ValueError):
    """A graph that cannot serve as a topology (disconnected, self-loops, empty, ...)."""


class NotATreeError(TopologyError):
    """A relay was asked to run on a graph that is not a spanning tree."""


class PartitionError(RelayflError, ValueError):
    """A data split that cannot be made (bad alpha, too few samples, ...)."""


class DataError(RelayflError, FileNotFoundError):
    """A data set that cannot be found or read; the message names the folder and files."""


class TransportError(RelayflError, ConnectionError):
    """A message could not be delivered, or a received message was rejected."""


class DivergenceError(RelayflError, FloatingPointError):
    """Training diverged (non-finite loss or parameters, or parameters blown up).

    ``result`` holds the run so far (a ``RunResult`` with ``status="diverged"``) when the
    command that raised it could build one, so the evaluations made before are kept.
    """

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class RunInterrupted(RelayflError, KeyboardInterrupt):
    """The user stopped a run (Ctrl-C, SIGTERM); ``result`` holds the run so far
    (``status="interrupted"``) when one could be built."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result
