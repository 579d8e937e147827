"""Helpers of the Flower tests: a numpy NumPyClient and the processes a test started."""

from __future__ import annotations

import os

import numpy as np
from flwr.app import Context
from flwr.client import NumPyClient

from relayfl.flower.runtime import descendant_processes, process_alive


class LinearClient(NumPyClient):
    """Least squares on 20 private samples: weights [3] and bias [1], float64.

    Each worker's data come from its own true weights (heterogeneous), so the relay's
    average differs from every local model.
    """

    def __init__(self, partition_id: int, lr: float = 0.1) -> None:
        rng = np.random.default_rng(100 + partition_id)
        self.X = rng.normal(size=(20, 3))
        self.y = self.X @ rng.normal(size=3) + 0.5 * partition_id
        self.lr = lr

    def get_parameters(self, config: dict) -> list[np.ndarray]:
        return [np.zeros(3), np.zeros(1)]

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list, int, dict]:
        w, b = (p.astype(np.float64).copy() for p in parameters)
        for _ in range(int(config["local-steps"])):
            r = self.X @ w + b[0] - self.y
            w -= self.lr * self.X.T @ r / len(r)
            b -= self.lr * r.mean()
        return [w, b], len(self.y), {"train-loss": float(np.mean(r**2))}

    def evaluate(self, parameters: list[np.ndarray], config: dict) -> tuple[float, int, dict]:
        w, b = parameters
        loss = float(np.mean((self.X @ w + b[0] - self.y) ** 2))
        return loss, len(self.y), {"accuracy": 1.0 / (1.0 + loss)}


def linear_client_fn(context: Context) -> NumPyClient:
    """Flower's client_fn for :class:`LinearClient`."""
    return LinearClient(int(context.node_config["partition-id"]))


def flower_processes() -> dict[int, str]:
    """Live Ray or Flower processes below this one or orphaned (re-parented to PID 1, as
    Ray's workers are when Ray stops), ``{pid: command line}``."""
    mine = descendant_processes(os.getpid())
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        markers = ("ray::", "raylet", "gcs_server", "flower-super", "flwr-")
        if any(m in cmd for m in markers) and (pid in mine or ppid == 1) and process_alive(pid):
            out[pid] = cmd[:120]
    return out


class FailingClient(LinearClient):
    """Partition 1 raises in ``fit``: a failed Flower run must be reported as one."""

    def __init__(self, partition_id: int) -> None:
        super().__init__(partition_id)
        self.partition_id = partition_id

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list, int, dict]:
        if self.partition_id == 1:
            raise RuntimeError("client 1 failed on purpose")
        return super().fit(parameters, config)


def failing_client_fn(context: Context) -> NumPyClient:
    """Flower's client_fn for :class:`FailingClient`."""
    return FailingClient(int(context.node_config["partition-id"]))
