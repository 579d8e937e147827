"""RelaySGD on a real SuperLink and 2 SuperNodes on 127.0.0.1, started and ended by relayfl."""

from __future__ import annotations

from pathlib import Path

import pytest
from flower_helpers import flower_processes

from relayfl import RunConfig, simulate
from relayfl.flower import app_dir
from relayfl.flower.deployment import LocalDeployment
from relayfl.flower.runtime import process_alive
from relayfl.results import RunResult


@pytest.mark.slow
def test_relay_on_a_real_superlink_with_two_supernodes(tmp_path: Path) -> None:
    """flwr run of relayfl's app == the simulator's evaluations; every process ends.

    One relay round (2 messages per node: each starts a flwr-clientapp process, ~10 s
    on loopback), the nodes starting from their own seeded model (no handshake).
    """
    from clients import digits

    config = RunConfig(num_clients=2, steps=1, eval_every=1, seed=3, batch_size=16)
    before = set(flower_processes())
    with LocalDeployment(2, flwr_home=tmp_path / "home") as dep:
        assert dep.port is not None and len(dep.processes) == 3  # SuperLink + 2 SuperNodes
        run_config = {k: v for k, v in config.to_flower().items() if k in _KEYS}
        settings = {**run_config, "out": str(tmp_path / "out"), "initial": "own"}
        dep.run_app(app_dir(), settings, timeout=240)
    assert dep.started_pids and not any(process_alive(p) for p in dep.started_pids)
    assert not set(flower_processes()) - before

    result = RunResult.load(tmp_path / "out")
    ref = simulate(digits.task(config), config)
    assert [e.step for e in result.evaluations] == [0, 1]
    for ours, theirs in zip(result.evaluations, ref.evaluations, strict=True):
        assert ours.accuracies == pytest.approx(theirs.accuracies, abs=1 / 360 + 1e-9)
        assert ours.losses == pytest.approx(theirs.losses, abs=1e-4)
    assert result.extra["server"] == "forwarding ServerApp (no averaging)"
    assert result.final.bytes_received[0] > 0


_KEYS = ("num-clients", "steps", "eval-every", "seed", "batch-size", "dataset", "alpha")
