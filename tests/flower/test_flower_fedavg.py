"""FedAvg through Flower's own strategy on Flower's simulation engine, in relayfl's schema."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from flower_helpers import failing_client_fn
from flwr.app import ArrayRecord, Error, Message, Metadata, MetricRecord, RecordDict

from relayfl import RunConfig
from relayfl.flower import FlowerRunError, RelayClientApp, run_fedavg, run_relay_simulation
from relayfl.flower.fedavg import _CheckedFedAvg, _legacy_strategy, task_initial_arrays
from relayfl.flower.runtime import check_replies
from relayfl.results import EvalRecord, RunResult

CONFIG = RunConfig(
    num_clients=6, alpha=0.1, steps=45, local_steps=3, eval_every=15, seed=0, schedule=False
)
ROUNDS = 15


@pytest.fixture(scope="module")
def fedavg_run() -> RunResult:
    """Flower's FedAvg with the ready digits ClientApp: 6 SuperNodes, 15 rounds x 3 steps
    at a constant learning rate of 0.1 (the warm-up would take most of so short a run)."""
    from clients import digits

    return run_fedavg(digits.app, CONFIG, task=digits.task(CONFIG), quiet=True)


def test_fedavg_on_digits_alpha_0_1_trains_well_above_chance(fedavg_run: RunResult) -> None:
    """Final accuracy >= 0.5, five times chance (0.1 for 10 classes); ~0.8 measured."""
    assert fedavg_run.final.mean_accuracy >= 0.5
    assert fedavg_run.evaluations[0].mean_accuracy < 0.3  # it started untrained
    assert fedavg_run.extra["strategy"] == "flwr.serverapp.strategy.FedAvg"


def test_fedavg_rows_are_in_the_core_schema(fedavg_run: RunResult, tmp_path: Any) -> None:
    """One global model: mean == worst == every client's accuracy; bytes both ways."""
    from clients import digits

    r = fedavg_run
    assert r.config["algorithm"] == "fedavg" and r.config["alpha"] == 0.1
    assert [e.round for e in r.evaluations] == [0, 5, 10, 15]
    assert all(isinstance(e, EvalRecord) for e in r.evaluations)
    f = r.final
    assert f.worst_accuracy == f.mean_accuracy == f.best_accuracy
    assert f.accuracies == [f.mean_accuracy] * CONFIG.num_clients
    model_bytes = task_initial_arrays(digits.task(CONFIG), CONFIG).count_bytes()
    assert f.bytes_received == [ROUNDS * model_bytes] * 6  # the global model, every round
    assert f.bytes_sent == [ROUNDS * model_bytes] * 6  # each client's update
    assert math.isfinite(f.train_loss) and f.lr == pytest.approx(0.1)
    assert len(r.extra["round_times"]) == ROUNDS + 1
    summary = r.summary()
    assert summary["algorithm"] == "fedavg" and summary["bytes_per_client"] == ROUNDS * model_bytes
    loaded = RunResult.load(r.save(tmp_path))
    assert json.dumps(loaded.to_dict()) == json.dumps(r.to_dict())


def _reply(src: int, error: bool) -> Message:
    """A reply from node ``src``, as Flower's runtime delivers it (content or an error)."""
    ins = Message(
        RecordDict(),
        metadata=Metadata(
            run_id=1,
            message_id=f"ins-{src}",
            src_node_id=1,
            dst_node_id=src,
            reply_to_message_id="",
            group_id="1",
            created_at=0.0,
            ttl=3600.0,
            message_type="train",
        ),
    )
    if error:
        return Message(Error(code=2, reason="Traceback ...\nRuntimeError: boom"), reply_to=ins)
    content = RecordDict(
        {"arrays": ArrayRecord([np.ones(2)]), "metrics": MetricRecord({"num-examples": 5})}
    )
    return Message(content, reply_to=ins)


def test_error_replies_and_missing_nodes_raise_with_the_reason() -> None:
    """relayfl's checks turn Flower's error replies and timeouts into FlowerRunError."""
    with pytest.raises(FlowerRunError, match="node 8 replied with error 2: RuntimeError: boom"):
        check_replies([_reply(7, False), _reply(8, True)], [7, 8], "round 1")
    with pytest.raises(FlowerRunError, match=r"1 of 2 nodes did not reply in time \(\[8\]\)"):
        check_replies([_reply(7, False)], [7, 8], "round 1")
    strategy = _CheckedFedAvg(2, min_available_nodes=2)
    with pytest.raises(FlowerRunError, match="FedAvg round 3: node 8 .*boom"):
        strategy.aggregate_train(3, [_reply(7, False), _reply(8, True)])
    with pytest.raises(FlowerRunError, match="1 of 2 nodes replied"):
        strategy.aggregate_train(3, [_reply(7, False)])
    arrays, _ = strategy.aggregate_train(3, [_reply(7, False), _reply(8, False)])
    assert arrays is not None  # Flower's own averaging when all is well


def test_legacy_fedavg_failures_raise_instead_of_skipping_the_round() -> None:
    """Flower's legacy FedAvg skips a failed round; relayfl's wrapper raises."""
    legacy = _legacy_strategy(2, accept_failures=False)
    with pytest.raises(FlowerRunError, match="FedAvg round 2: 0 of 2 clients trained.*boom"):
        legacy.aggregate_fit(2, [], [RuntimeError("boom")])


@pytest.mark.slow
def test_failed_relay_client_is_reported_not_an_empty_result() -> None:
    """A node raising during a relay round makes run_relay_simulation raise."""
    config = RunConfig(topology="chain", num_clients=2, steps=2, eval_every=0)
    with pytest.raises(FlowerRunError, match="failed on purpose"):
        run_relay_simulation(RelayClientApp(client_fn=failing_client_fn), config, quiet=True)
