"""A node's checkpoint file: written atomically, loaded only for the same run and node."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from relayfl.errors import ConfigError

__all__ = ["CHECKPOINT", "load_checkpoint", "save_checkpoint"]

#: The checkpoint's file name in a node's ``--out`` folder.
CHECKPOINT = "checkpoint.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` through a temporary file, fsync and an atomic rename,
    so a crash or a full disk mid-write leaves the previous checkpoint in place.

    Raises
    ------
    OSError
        The file could not be written (``errno.ENOSPC`` on a full disk, ...); the
        partial temporary file is removed first.
    """
    buffer = io.BytesIO()  # serialize first: a write error then carries its errno
    torch.save(state, buffer)
    tmp = path.with_suffix(".pt.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def load_checkpoint(path: Path | None, run_id: str, node: int) -> dict[str, Any]:
    """The checkpoint at ``path``, which must be of run ``run_id`` and node ``node``.

    Raises
    ------
    ConfigError
        No file at ``path``, it cannot be read (corrupt, truncated, not a checkpoint),
        or it belongs to another run or node.
    """
    if path is None or not path.is_file():
        raise ConfigError(
            f"--resume found no checkpoint at {path}; pass the node's original --out "
            "folder, or start without --resume"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises RuntimeError, pickle/EOF/zip errors alike
        raise ConfigError(
            f"the checkpoint {path} is unreadable ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:100] if str(err) else 'corrupt'}); remove it and "
            "start without --resume, or restore it from a copy"
        ) from None
    if not isinstance(state, dict) or not {"round", "x", "trainer"} <= set(state):
        raise ConfigError(
            f"the checkpoint {path} is not a relayfl node checkpoint; remove it and start "
            "without --resume"
        )
    if state.get("run_id") != run_id or state.get("node") != node:
        raise ConfigError(
            f"the checkpoint {path} is of run {state.get('run_id')} node "
            f"{state.get('node')}, not run {run_id} node {node}; start with the "
            "same options, topology and --id as before"
        )
    return state
