"""The ``--out`` folder of a command, checked before any work is done.

A run that trains for an hour and then cannot write its results has thrown the hour
away. :func:`check_out` refuses a ``--out`` that cannot become a folder (it names a
file, or sits under one, or under a folder this user cannot write) before training
starts, and says in one line when a rerun will overwrite an earlier run's results.
:func:`written` names, when the run is done, only the files it really wrote.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from relayfl.errors import ConfigError

__all__ = ["check_out", "written"]

#: Files whose presence means the folder already holds a run.
_RESULT_FILES = ("results.json", "run_config.json")


def check_out(
    out: str | Path,
    *,
    option: str = "--out",
    resume: bool = False,
    stream: TextIO | None = None,
) -> Path:
    """Check that ``out`` can hold a run's results, before the run starts.

    Parameters
    ----------
    out : str or Path
        The output folder; it need not exist yet.
    option : str
        How the user named it, for the message (``--out``).
    resume : bool
        The run continues the one in ``out`` (``--resume``): no overwrite notice.
    stream : file, optional
        Where the one-line overwrite notice goes (default ``sys.stderr``).

    Returns
    -------
    Path
        ``out`` as a :class:`~pathlib.Path`.

    Raises
    ------
    ConfigError
        ``out`` is an existing file, lies under a file, or its nearest existing folder is
        not writable. One line naming the value and the fix.
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"{option} {path} is an existing file, not a folder; pass a folder "
            f"(e.g. {option} {path.with_suffix('')}-results) or remove the file"
        )
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ConfigError(
            f"{option} {path}: {existing} is a file, so no folder can be made under it; "
            "pass another folder"
        )
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{option} {path}: folder {existing} is not writable by this user; "
            "pass a folder you can write to"
        )
    if not resume and path.is_dir():
        held = [name for name in _RESULT_FILES if (path / name).is_file()]
        if held:
            print(
                f"relayfl: {option} {path} already holds a run ({held[0]}); overwriting it",
                file=stream or sys.stderr,
            )
    return path


def written(out: Path, names: Sequence[str], *, since: float, note: str = "") -> str:
    """The ``results written to OUT/ (...)`` line of a finished command, naming only the
    files of ``names`` this run wrote (modified at or after ``since``, a ``time.time()``
    taken when the command started).

    A file of ``names`` left by an earlier run into the same folder that this run did
    not rewrite (``partition.png`` of a built-in run, before a run of a Flower client
    whose partition relayfl cannot see) is removed: it would describe the other run.
    """
    fresh = []
    for name in names:
        path = out / name
        if not path.is_file():
            continue
        if path.stat().st_mtime >= since - 1.0:  # file times may round below time.time()
            fresh.append(name)
        else:
            path.unlink()
    return f"results written to {out}/ ({', '.join(fresh)}{'; ' + note if note else ''})"
