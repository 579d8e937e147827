"""How one node runs: :class:`NodeConfig`, the run id, and the algorithms a node runs."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

from relayfl.config import RunConfig
from relayfl.errors import ConfigError, RelayflError

__all__ = ["NODE_ALGORITHMS", "NodeConfig", "NodeStopped", "run_id"]

#: Algorithms a deployed node runs (the others need a server or all-to-all links).
NODE_ALGORITHMS: tuple[str, ...] = ("relaysgd", "relaysgd-grad", "dpsgd")


class NodeStopped(RelayflError):
    """The node was asked to stop (SIGTERM, or :meth:`Node.stop`) before the last step."""


def run_id(config: RunConfig, graphs: Sequence[nx.Graph], name: str = "", initial: str = "") -> str:
    """A short id shared by every node of one run, and only by them.

    A hash of the config (without machine-local fields: device, engine, data root and
    the topology's file path), of the topology's edges and of ``initial`` (a checksum
    of the node's initial model), so nodes started with different options, topologies
    or initial models (a Flower client without ``--initial`` that builds an unseeded
    model on each node) refuse each other instead of relaying from different starts.
    """
    data = config.to_dict()
    for key in ("device", "engine", "data_root", "topology", "precision", "channels_last"):
        data.pop(key, None)
    data["graphs"] = [sorted(sorted(map(int, e)) for e in g.edges) for g in graphs]
    data["graph_nodes"] = [g.number_of_nodes() for g in graphs]
    data["name"] = name
    if initial:
        data["initial"] = initial
    raw = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class NodeConfig:
    """How one node runs and talks (the run itself is a :class:`~relayfl.RunConfig`).

    Parameters
    ----------
    node_id : int
    out : str or Path, optional
        Folder for ``log.jsonl``, ``results.json``, ``model.pt`` and ``checkpoint.pt``.
    step_timeout : float, default 60
        Seconds to wait for a neighbour's message of a step before it counts as dropped.
    dead_after : float, default 20
        Seconds without a heartbeat before a neighbour is declared dead.
    heartbeat : float, default 1
        Seconds between status calls to each neighbour.
    startup_timeout : float, default 300
        Seconds to wait at start-up for every neighbour to answer.
    checkpoint_every : int, default 10
        Checkpoint every k communication rounds (0: never).
    resume : bool
        Continue from ``out/checkpoint.pt`` and rejoin at the neighbours' step.
    run_name : str
        Mixed into the run id (to keep two runs with equal configs apart).
    events : bool
        Also print events as JSON lines on stdout (``relayfl launch`` reads them).
    linger : float, optional
        Seconds to keep answering after the last step, until every neighbour is done
        (default ``step_timeout + dead_after``).
    """

    node_id: int
    out: str | Path | None = None
    step_timeout: float = 60.0
    dead_after: float = 20.0
    heartbeat: float = 1.0
    startup_timeout: float = 300.0
    checkpoint_every: int = 10
    resume: bool = False
    run_name: str = ""
    events: bool = False
    linger: float | None = None

    def __post_init__(self) -> None:
        for name in ("step_timeout", "dead_after", "heartbeat", "startup_timeout"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name.replace('_', '-')} must be > 0 seconds, got {value}")
        if self.dead_after < 2 * self.heartbeat:
            raise ConfigError(
                f"dead-after {self.dead_after} s is shorter than two heartbeats "
                f"({self.heartbeat} s each); live peers would be declared dead. Use "
                f"--dead-after >= {2 * self.heartbeat:g} (e.g. 10 x --heartbeat)"
            )
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint-every must be >= 0, got {self.checkpoint_every}")
