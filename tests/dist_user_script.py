"""A user's torchrun script: their own model and data, relayfl.simulate on each rank.

Not collected by pytest (no ``test_`` prefix): tests/test_distributed.py imports
:func:`make_task` and :data:`CASES` for the single-process reference, and launches
``python -m torch.distributed.run --standalone --nproc-per-node 2 THIS OUT`` for the
sharded runs. Rank 0 saves each case's final models and results to OUT.
"""

from __future__ import annotations

import datetime
import json
import sys
import threading
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from relayfl import RunConfig, Task, simulate
from relayfl.errors import RunInterrupted


class UserNet(nn.Module):
    """A user's own small model (with dropout, so keyed masks are exercised)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Dropout(0.2), nn.Linear(12, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def make_task() -> Task:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 3, generator=gen)
    x = torch.randn(700, 6, generator=gen)
    y = (x @ w).argmax(1)
    return Task("user-linear", UserNet, x[:600], y[:600], x[600:], y[600:])


_BASE = {
    "num_clients": 10,
    "steps": 12,
    "batch_size": 8,
    "alpha": 1.0,
    "lr": 0.1,
    "momentum": 0.9,
    "eval_every": 6,
    "engine": "loop",
    "seed": 5,
}

#: name -> config; every sharded case must equal the single-process run.
CASES: dict[str, RunConfig] = {
    "relay-tree-drops": RunConfig(**_BASE, drop_probability=0.2),
    "relay-double-drops": RunConfig(
        **_BASE, topology="double-binary-trees", drop_probability=0.2, fill="latest"
    ),
    "dpsgd-drops": RunConfig(**_BASE, algorithm="dpsgd", drop_probability=0.2),
    "gradient-tracking-drops": RunConfig(
        **_BASE, algorithm="gradient-tracking", drop_probability=0.1
    ),
    "allreduce": RunConfig(**_BASE, algorithm="allreduce"),
}

#: Resumed after a stop mid-round (local_steps 2, stopped after step 9 > tree diameter).
RESUME = RunConfig(
    **{**_BASE, "steps": 16, "eval_every": 4},
    topology="double-binary-trees",
    drop_probability=0.2,
    local_steps=2,
)
STOP_AFTER = 9


def run_stopped_and_resumed(task: Task, out: Path) -> object:
    """Stop RESUME after STOP_AFTER steps (checkpoint every round), then resume it."""
    stop = threading.Event()

    def progress(step: int, total: int, latest: object) -> None:
        if step == STOP_AFTER:
            stop.set()

    try:
        simulate(task, RESUME, progress=progress, checkpoint_dir=out, checkpoint_every=1,
                 stop=stop.is_set)  # fmt: skip
    except RunInterrupted as err:
        assert err.result.status == "interrupted", err.result.status
        assert err.result.evaluations[-1].step == 8, err.result.evaluations[-1].step
    else:
        raise AssertionError("the run did not stop")
    return simulate(task, RESUME, checkpoint_dir=out, resume=True)


def _save(result: object, path: Path) -> None:
    torch.save(result.models, path.with_suffix(".pt"))  # type: ignore[attr-defined]
    path.with_suffix(".json").write_text(json.dumps(result.to_dict(), default=str))  # type: ignore[attr-defined]


def main(out: Path) -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    task = make_task()
    for name, config in CASES.items():
        result = simulate(task, config)
        if rank == 0:
            _save(result, out / name)
    full = simulate(task, RESUME)
    resumed = run_stopped_and_resumed(task, out / "ckpt")
    if rank == 0:
        _save(full, out / "resume-full")
        _save(resumed, out / "resume-resumed")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
