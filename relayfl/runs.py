"""Long ``relayfl simulate`` runs: torchrun ranks, checkpoints, Ctrl-C and TensorBoard.

:class:`LongRun` wraps one CLI run: under ``torchrun`` it joins the process group
(:mod:`relayfl.distributed`) and makes rank 0 the only one that prints and writes;
SIGINT / SIGTERM ask the simulation to stop after the current step, save a checkpoint
and the results so far (``status="interrupted"``); ``--tensorboard`` logs every
evaluation (:mod:`relayfl.tensorboard`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from relayfl.config import RunConfig
from relayfl.errors import ConfigError, RelayflError, RunInterrupted
from relayfl.results import EvalRecord

__all__ = ["LongRun", "add_long_run_options", "error_line", "recorded", "report_interrupted"]

_GRACE_S = 2.0  # a second signal within this many seconds is torchrun passing Ctrl-C on


def add_long_run_options(p: argparse.ArgumentParser) -> None:
    """``--checkpoint-every``, ``--resume``, ``--tensorboard``, ``--dist-timeout``."""
    from relayfl.distributed import DEFAULT_TIMEOUT_S

    g = p.add_argument_group("long runs (checkpoints, torchrun, TensorBoard)")
    g.add_argument(
        "--checkpoint-every",
        dest="checkpoint_every",
        type=int,
        default=0,
        help="save the full state to --out every k communication rounds (0: only on "
        "Ctrl-C/SIGTERM)",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in --out (same options, same number of ranks)",
    )
    g.add_argument(
        "--tensorboard", default=None, help="write every evaluation as TensorBoard scalars here"
    )
    g.add_argument(
        "--dist-timeout",
        dest="dist_timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="under torchrun: seconds any exchange between ranks may take before the run "
        "ends with an error",
    )


class LongRun:
    """One CLI run's process group, signal handlers and TensorBoard writer.

    Use as a context manager around :func:`relayfl.simulation.simulate`.
    """

    def __init__(
        self,
        config: RunConfig,
        out: Path,
        *,
        checkpoint_every: int = 0,
        resume: bool = False,
        tensorboard: str | None = None,
        dist_timeout: float = 120.0,
    ) -> None:
        if checkpoint_every < 0:
            raise ConfigError(f"--checkpoint-every must be >= 0 rounds, got {checkpoint_every}")
        self.config, self.out = config, out
        self.checkpoint_every, self.resume = checkpoint_every, resume
        self.tensorboard, self.dist_timeout = tensorboard, dist_timeout
        self.stop = threading.Event()
        self._first_signal = 0.0
        self._old: dict[int, Any] = {}
        self._writer: Any = None
        self.rank = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace, config: RunConfig) -> LongRun:
        return cls(
            config,
            Path(args.out),
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            tensorboard=args.tensorboard,
            dist_timeout=args.dist_timeout,
        )

    @property
    def leader(self) -> bool:
        """Rank 0 (or the only process): prints, writes results and TensorBoard."""
        return self.rank == 0

    def __enter__(self) -> LongRun:
        from relayfl import distributed

        if distributed.launched():
            if self.config.algorithm == "sgp":  # refused before any work
                raise ConfigError(
                    "sgp does not run split over ranks yet; run it in one process "
                    "(without torchrun), or use --algorithm dpsgd or relaysgd"
                )
            distributed.init_from_env(self.config.device, timeout_s=self.dist_timeout)
            self.rank = int(os.environ.get("RANK", "0"))
        if self.resume:  # no checkpoint, or one of another rank count: before any work
            from relayfl.checkpoint import Checkpointer

            world = int(os.environ.get("WORLD_SIZE", "1"))
            Checkpointer(self.out, 0, {}, rank=self.rank, world_size=world).check()
        if self.tensorboard and self.leader:
            from relayfl.tensorboard import TensorBoardWriter

            self._writer = TensorBoardWriter(self.tensorboard)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self._writer is not None:
            self._writer.close()
        from relayfl import distributed

        if not exc[0]:  # on errors the process exits; a barrier here could hang
            distributed.shutdown()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.stop.is_set() and now - self._first_signal > _GRACE_S:
            raise KeyboardInterrupt  # asked twice: stop now, without a checkpoint
        if not self.stop.is_set():
            self._first_signal = now
            if self.leader:
                print(
                    f"\nrelayfl: {signal.Signals(signum).name}: stopping after this step and "
                    "saving a checkpoint (again to stop at once)",
                    file=sys.stderr,
                )
        self.stop.set()

    def progress(self, inner: Callable[[int, int, EvalRecord | None], None]) -> Callable:
        """``inner`` on rank 0 only, plus TensorBoard on every evaluation."""

        def call(step: int, total: int, latest: EvalRecord | None) -> None:
            if not self.leader:
                return
            if latest is not None and self._writer is not None:
                self._writer.add_evaluation(latest)
            inner(step, total, latest)

        return call

    def simulate_kwargs(self) -> dict[str, Any]:
        return {
            "checkpoint_dir": self.out,
            "checkpoint_every": self.checkpoint_every,
            "resume": self.resume,
            "stop": self.stop.is_set,
        }


def _rank_prefix() -> str:
    from relayfl.distributed import launched

    return f"rank {os.environ.get('RANK', '0')}: " if launched() else ""


def error_line(err: RelayflError, text: str | None = None) -> str:
    """The one line the CLI prints (``text``, default ``str(err)``); under torchrun it
    names the rank, and it goes into torchrun's error file so its ``ChildFailedError``
    summary names the cause."""
    from relayfl.distributed import DistributedError, launched

    prefix = "" if isinstance(err, DistributedError) else _rank_prefix()
    line = f"relayfl: error: {prefix}{err if text is None else text}"
    if launched() and os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(RuntimeError(line))
    return line


def report_interrupted(err: RunInterrupted, args: argparse.Namespace) -> int:
    """Save the results so far (rank 0), say where the checkpoint is and how to resume."""
    if _rank_prefix() and os.environ.get("RANK", "0") != "0":
        return 130
    out = Path(args.out)
    if err.result is not None:
        err.result.status = "interrupted"
        err.result.save(out)
    argv = [a for a in sys.argv[1:] if a != "--resume"]
    launcher = "torchrun ... -m relayfl.cli" if _rank_prefix() else "relayfl"
    print(
        f"relayfl: interrupted: {err}; results so far in {out / 'results.json'}; continue with:\n"
        f"  {launcher} {shlex.join(argv)} --resume",
        file=sys.stderr,
    )
    return 130


def recorded(main: Callable[[], int]) -> Callable[[], int]:
    """``main`` wrapped in torchrun's ``@record`` when launched by it (an unexpected
    exception then appears, with its traceback, in torchrun's failure summary)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return main
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(main)
