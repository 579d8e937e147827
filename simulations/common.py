"""Shared helpers of the reproductions: per-cell result cache, machine description, tables.

Every reproduction stores one small JSON file per finished cell under
``simulations/results/<experiment>/cells/``; a re-run loads the cells that exist and
computes only the missing ones, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """One line naming the CPU, the cores torch may use, and the library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


class CellCache:
    """One JSON file per finished cell of an experiment.

    Parameters
    ----------
    experiment : str
        Folder name under ``simulations/results/``.
    """

    def __init__(self, experiment: str) -> None:
        self.folder = RESULTS / experiment / "cells"
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / (re.sub(r"[^A-Za-z0-9_.=-]+", "_", key) + ".json")

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        return json.loads(path.read_text()) if path.exists() else None

    def put(self, key: str, value: dict[str, Any]) -> dict[str, Any]:
        path = self.path(key)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
        tmp.replace(path)  # atomic: a killed run never leaves half a cell
        return value

    def compute(self, key: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The cached cell, or ``fn()`` timed and stored (``wall_s`` added)."""
        cached = self.get(key)
        if cached is not None:
            return cached
        started = time.perf_counter()
        value = fn()
        value["wall_s"] = time.perf_counter() - started
        return self.put(key, value)

    def wall_s(self) -> float:
        """Total compute time of every stored cell."""
        return sum(json.loads(p.read_text()).get("wall_s", 0.0) for p in self.folder.glob("*.json"))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def provenance(command: str, seeds: Sequence[int] | str, budget: str, wall_s: float) -> str:
    """The markdown block every results file starts with."""
    return "\n".join(
        [
            f"- command: `{command}`",
            f"- seeds: {seeds if isinstance(seeds, str) else ', '.join(map(str, seeds))}",
            f"- budget: {budget}",
            f"- compute time of all cells (summed, incl. resumed runs): {wall_s / 60:.1f} min",
            f"- machine: {machine()}",
            f"- written: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        ]
    )
