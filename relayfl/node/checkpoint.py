"""A node's checkpoint file: written atomically, loaded only for the same run and node."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from relayfl.errors import ConfigError

__all__ = ["CHECKPOINT", "load_checkpoint", "save_checkpoint"]

#: The checkpoint's file name in a node's ``--out`` folder.
CHECKPOINT = "checkpoint.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` through a temporary file and an atomic rename, so a
    crash mid-write leaves the previous checkpoint in place."""
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path | None, run_id: str, node: int) -> dict[str, Any]:
    """The checkpoint at ``path``, which must be of run ``run_id`` and node ``node``.

    Raises
    ------
    ConfigError
        No file at ``path``, or it belongs to another run or node.
    """
    if path is None or not path.is_file():
        raise ConfigError(
            f"--resume found no checkpoint at {path}; pass the node's original --out "
            "folder, or start without --resume"
        )
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("run_id") != run_id or state.get("node") != node:
        raise ConfigError(
            f"the checkpoint {path} is of run {state.get('run_id')} node "
            f"{state.get('node')}, not run {run_id} node {node}; start with the "
            "same options, topology and --id as before"
        )
    return state
