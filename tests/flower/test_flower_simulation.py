"""RelaySGD on Flower's simulation engine through the forwarding ServerApp.

One ``run_simulation`` (4 SuperNodes running ``clients.digits.app``, 4 rounds, CPU) is
shared by the tests of this module: it must give the simulator's models on the same
seed, and every array the server sends must be one a node sent, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.serverapp import Grid, ServerApp

from relayfl import RunConfig, simulate
from relayfl.flower import run_relay, run_simulation
from relayfl.flower.protocol import parse_key
from relayfl.results import RunResult

CONFIG = RunConfig(num_clients=4, steps=4, batch_size=16, eval_every=2, seed=11)


def _digests(content: Any) -> dict[str, str]:
    """SHA-256 of every array record's bytes, by record name."""
    return {
        name: hashlib.sha256(b"".join(a.data for a in rec.values())).hexdigest()
        for name, rec in content.items()
        if isinstance(rec, ArrayRecord)
    }


class RecordingGrid(Grid):
    """Delegates to Flower's grid and logs every message pushed and every reply pulled."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.pushed: list[tuple[int, dict[str, str]]] = []  # (dst node, digests)
        self.pulled: list[tuple[int, dict[str, str]]] = []  # (src node, digests)

    def set_run(self, run: Any) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        return self.grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for m in messages:
            self.pushed.append((m.metadata.dst_node_id, _digests(m.content)))
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.grid.pull_messages(message_ids))
        for m in replies:
            self.pulled.append((m.metadata.src_node_id, _digests(m.content)))
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        raise AssertionError("relayfl's server polls through push/pull")


@pytest.fixture(scope="module")
def relay_run() -> tuple[RunResult, RecordingGrid]:
    """The digits ClientApp relayed by the forwarding ServerApp on 4 simulated SuperNodes."""
    from clients import digits

    out: dict[str, Any] = {}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        recording = out["grid"] = RecordingGrid(grid)
        out["result"] = run_relay(recording, CONFIG, runtime="flower-simulation")

    run_simulation(app, digits.app, CONFIG.num_clients, quiet=True)
    return out["result"], out["grid"]


def test_forwarding_server_gives_the_simulator_models(
    relay_run: tuple[RunResult, RecordingGrid],
) -> None:
    """Flower's runtime + forwarding ServerApp == relayfl.simulate on the same seed.

    Tolerance 1e-4 (float32): Ray actors run torch with one thread, which alone moves
    weights by ~3e-4 after 20 rounds; after 4 rounds the difference measured here is 0.
    """
    from clients import digits

    result, _ = relay_run
    ref = simulate(digits.task(CONFIG), CONFIG)
    torch.testing.assert_close(result.models, ref.models, rtol=0, atol=1e-4)
    assert [e.step for e in result.evaluations] == [0, 2, 4]
    for ours, theirs in zip(result.evaluations, ref.evaluations, strict=True):
        assert ours.accuracies == pytest.approx(theirs.accuracies, abs=1 / 360 + 1e-9)
    assert result.engine == "flower-simulation"


def test_forwarding_server_never_averages(relay_run: tuple[RunResult, RecordingGrid]) -> None:
    """Every array the server sends is, byte for byte, one a neighbour replied with."""
    result, grid = relay_run
    pid_of = {node: p for p, node in enumerate(result.extra["node_ids"])}
    replied: list[tuple[int, str, str]] = [  # (sender partition, record name, digest)
        (pid_of[src], name, digest)
        for src, digests in grid.pulled
        for name, digest in digests.items()
    ]
    forwarded = 0
    for dst, digests in grid.pushed:
        for name, digest in digests.items():
            key = parse_key(name)
            if key is None:  # the shared initial model, from node 0's hello reply
                assert name == "relayfl.x0"
                assert (0, "relayfl.x0", digest) in replied
                continue
            _, sender, graph = key
            assert (sender, f"relayfl.to.{pid_of[dst]}.{graph}", digest) in replied, name
            forwarded += 1
    # a binary tree of 4 has 3 edges: 6 messages per round, forwarded in rounds 2..5
    assert forwarded == 6 * CONFIG.steps == result.extra["forwarded_messages"]
    assert all(e.bytes_received[0] > 0 for e in result.evaluations[1:])


def test_relay_result_is_in_the_core_schema(
    relay_run: tuple[RunResult, RecordingGrid], tmp_path: Any
) -> None:
    """The Flower run saves and loads as a RunResult like relayfl simulate's."""
    result, _ = relay_run
    loaded = RunResult.load(result.save(tmp_path))
    as_json = lambda r: json.dumps(r.to_dict()["evaluations"])  # noqa: E731 (NaN == NaN)
    assert as_json(loaded) == as_json(result)
    assert math.isnan(result.evaluations[0].train_loss)  # nothing trained before round 1
    assert loaded.config == {**CONFIG.to_dict(), "topology": "binary-tree"}  # the one run
    assert loaded.versions["flwr"].startswith("1.42")
