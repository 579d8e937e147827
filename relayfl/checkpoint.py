"""Checkpoints of a simulation: everything needed to continue it bit for bit.

A :class:`SimulationState` holds the parameters ``x`` and the round's start ``x_start``
(``Tensor[n_k, d]``, this rank's workers), the optimizer's and the mixer's own state
(momentum, D² and gradient-tracking corrections, the relay's messages and counts, SGP's
round), the byte counters, the step and round, and the evaluations so far. Batches,
dropout masks and drops are drawn from keyed generators (:mod:`relayfl.rng`), so
nothing else is needed. :class:`Checkpointer` writes it atomically (``torch.save`` to a
temporary file, then ``os.replace``): one ``checkpoint.pt`` per run, or one
``checkpoint-rank{r}-of-{K}.pt`` per rank when the run is split over ``K`` ranks.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from relayfl.errors import ConfigError
from relayfl.results import EvalRecord

__all__ = ["Checkpointer", "SimulationState"]

VERSION = 1


@dataclass
class SimulationState:
    """One rank's simulation between two steps.

    Attributes
    ----------
    step, rounds : int
        Steps and communication rounds done.
    x, x_start : Tensor[n_k, d]
        Parameters now and at the start of the current round (equal between rounds).
    sent : Tensor[n] of int64
        Bytes each worker sent so far.
    optimizer, mixer : dict
        ``state_dict()`` of the local optimizer and of the mixer.
    lr, train_loss : float
        Of the latest step (they go into the next evaluation record).
    evaluations : list of EvalRecord
    elapsed_s : float
        Wall seconds the run had taken when saved (wall times continue from it).
    """

    step: int
    rounds: int
    x: Tensor
    x_start: Tensor
    sent: Tensor
    optimizer: dict[str, Any]
    mixer: dict[str, Any]
    lr: float = 0.0
    train_loss: float = math.nan
    evaluations: list[EvalRecord] = field(default_factory=list)
    elapsed_s: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        """The state as plain dicts and tensors (by reference, not copied)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["evaluations"] = [asdict(e) for e in self.evaluations]
        out["x_start"] = None if self.x_start is self.x else self.x_start  # saved once
        return out

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> SimulationState:
        state = dict(state)
        state["evaluations"] = [EvalRecord(**e) for e in state["evaluations"]]
        if state["x_start"] is None:
            state["x_start"] = state["x"]
        return cls(**state)


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to(v, device) for v in obj]
    return obj


class Checkpointer:
    """Where and how often a simulation saves its state, and the run it belongs to.

    Parameters
    ----------
    directory : str or Path
        The run's ``--out`` folder.
    every : int
        Save after every ``every`` communication rounds (0: only when stopped).
    config : dict
        ``RunConfig.to_dict()``: a checkpoint of another config is refused on resume.
    rank, world_size : int
        This process's rank and how many there are (1: ``checkpoint.pt``).
    """

    def __init__(
        self,
        directory: str | Path,
        every: int,
        config: dict[str, Any],
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if every < 0:
            raise ConfigError(f"--checkpoint-every must be >= 0 rounds, got {every}")
        self.directory = Path(directory)
        self.every = every
        self.config = config
        self.rank, self.world_size = rank, world_size

    @property
    def path(self) -> Path:
        if self.world_size == 1:
            return self.directory / "checkpoint.pt"
        return self.directory / f"checkpoint-rank{self.rank}-of-{self.world_size}.pt"

    def due(self, rounds_before: int, rounds_after: int) -> bool:
        """Whether a round boundary that is a multiple of ``every`` was just crossed."""
        return bool(self.every) and rounds_after > rounds_before and rounds_after % self.every == 0

    def save(self, state: SimulationState) -> Path:
        """Write ``state`` atomically (never a half-written checkpoint)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = {
            "version": VERSION,
            "config": self.config,
            "rank": self.rank,
            "world_size": self.world_size,
            "state": _to(state.state_dict(), torch.device("cpu")),
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, self.path)
        return self.path

    def check(self) -> None:
        """Refuse at once when there is no checkpoint of this rank count to resume.

        Raises
        ------
        ConfigError
        """
        if not self.path.is_file():
            others = sorted(p.name for p in self.directory.glob("checkpoint*.pt"))
            if others:
                raise ConfigError(
                    f"--resume found {', '.join(others[:2])} in {self.directory} but this run "
                    f"has {self.world_size} rank(s); resume with the number of ranks that "
                    "wrote it (torchrun --nproc-per-node)"
                )
            raise ConfigError(
                f"--resume found no checkpoint at {self.path}; pass the run's original "
                "--out folder, or start without --resume"
            )

    def load(self, device: torch.device) -> SimulationState:
        """The saved state of this rank, on ``device``.

        Raises
        ------
        ConfigError
            No checkpoint in the folder, one of another number of ranks, or one of
            another run configuration.
        """
        self.check()
        payload = torch.load(self.path, map_location="cpu", weights_only=False)
        if payload.get("version") != VERSION:
            raise ConfigError(
                f"checkpoint {self.path} has version {payload.get('version')}, this relayfl "
                f"reads version {VERSION}; start without --resume"
            )
        if payload["config"] != self.config:
            diff = sorted(
                k
                for k in set(payload["config"]) | set(self.config)
                if payload["config"].get(k) != self.config.get(k)
            )
            raise ConfigError(
                f"checkpoint {self.path} is of another run (differs in {', '.join(diff)}); "
                "resume with the same options, or start without --resume"
            )
        return SimulationState.from_state_dict(_to(payload["state"], device))
