"""How many CPU threads torch uses for one relayfl process (``--threads``).

torch starts one intra-op thread per core. On a machine other work keeps busy, those
threads wait on each other for cores they do not get, and a run slows many times over
(see README, "CPU threads"). ``--threads auto`` (the default of ``relayfl simulate`` and
``relayfl compare``) therefore starts with the cores that are idle: the core count less
the 1-minute load average, at least 1. ``relayfl node`` and ``relayfl launch`` take the
same option (``launch`` gives each node 1 thread by default).
"""

from __future__ import annotations

import argparse
import os

from relayfl.errors import ConfigError

__all__ = ["AUTO", "idle_cores", "parse_threads", "set_threads"]

AUTO = "auto"


def idle_cores() -> int:
    """Cores this process may use, less the machine's 1-minute load average; at least 1.

    Returns
    -------
    int
        ``max(1, round(usable cores - load average))``; the usable cores where the load
        average cannot be read (not Unix).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return cores
    return max(1, min(cores, round(cores - load)))


def parse_threads(text: str) -> int | str:
    """``--threads`` value: a count >= 1 or ``auto`` (argparse ``type=``)."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"--threads takes a count >= 1 or 'auto', got {text!r}; e.g. --threads 1"
        )
    return value


def set_threads(threads: int | str | None) -> int:
    """Set torch's intra-op thread count for this process.

    Parameters
    ----------
    threads : int, "auto" or None
        A count >= 1; ``"auto"`` for :func:`idle_cores`; None leaves torch's default.

    Returns
    -------
    int
        The thread count torch now uses.

    Raises
    ------
    ConfigError
        ``threads`` is below 1.
    """
    import torch

    if threads is None:
        return torch.get_num_threads()
    count = idle_cores() if threads == AUTO else int(threads)
    if count < 1:
        raise ConfigError(f"threads must be >= 1 or 'auto', got {threads}; e.g. --threads 1")
    torch.set_num_threads(count)
    return count
