"""One-worker code paths (what nodes and Flower clients run) reproduce the simulator."""

from __future__ import annotations

import pytest
import torch

from relayfl import RunConfig, relay, simulate, topology
from relayfl.task import builtin
from relayfl.worker import LocalWorker


@pytest.mark.parametrize("fill", ["initial", "latest"])
def test_local_workers_with_relay_nodes_equal_the_simulation(fill: str) -> None:
    """LocalWorker.train + RelayNode per worker == simulate() on the same seed."""
    task = builtin("digits", dropout=0.2)
    config = RunConfig(
        num_clients=5,
        steps=12,
        batch_size=16,
        eval_every=0,
        seed=7,
        momentum=0.9,
        fill=fill,
        engine="batched",
    )
    expected = simulate(task, config).models  # [n, d]
    tree = topology.binary_tree(5)
    workers = [LocalWorker(task, config, i) for i in range(5)]
    nodes = [relay.RelayNode(tree, i, initial=workers[i].x0, fill=fill) for i in range(5)]
    x = [w.x0.clone() for w in workers]
    for step in range(config.steps):
        half = [w.train(x[i], step)[0] for i, w in enumerate(workers)]
        outbox = [node.send(half[i]) for i, node in enumerate(nodes)]
        x = [
            node.receive({j: outbox[j][i] for j in node.neighbors}) for i, node in enumerate(nodes)
        ]
    # vmap (simulation) vs one worker at a time: summation order only, measured ~1e-7
    torch.testing.assert_close(torch.stack(x), expected, rtol=0, atol=2e-5)


def test_worker_id_outside_the_run_is_refused() -> None:
    """A worker id must be below the client count."""
    with pytest.raises(ValueError, match="below --clients 4"):
        LocalWorker(builtin("digits"), RunConfig(num_clients=4), 4)
