"""Divergence on the Flower path: a client whose fit returns non-finite arrays."""

from __future__ import annotations

import pytest
from flower_helpers import LinearClient
from flwr.app import Context
from flwr.client import NumPyClient

from relayfl import RunConfig
from relayfl.errors import DivergenceError
from relayfl.flower import simulate_clients


def test_client_returning_non_finite_arrays_stops_the_relay() -> None:
    """lr 1e100 overflows float64 in a few rounds: DivergenceError naming node and round."""

    def client_fn(context: Context) -> NumPyClient:
        return LinearClient(int(context.node_config["partition-id"]), lr=1e100)

    config = RunConfig(algorithm="relaysgd", topology="chain", num_clients=3, steps=20)
    with pytest.raises(DivergenceError, match=r"round \d+ on node \d: non-finite parameters"):
        simulate_clients(client_fn, config)


def test_client_without_a_loss_metric_is_not_divergence() -> None:
    """Only non-finite arrays count on Flower paths: a missing loss metric is fine."""

    class NoLoss(LinearClient):
        def fit(self, parameters: list, config: dict) -> tuple[list, int, dict]:
            arrays, n, _ = super().fit(parameters, config)
            return arrays, n, {}

    def client_fn(context: Context) -> NumPyClient:
        return NoLoss(int(context.node_config["partition-id"]))

    config = RunConfig(algorithm="relaysgd", topology="chain", num_clients=3, steps=4)
    assert simulate_clients(client_fn, config).status == "completed"
