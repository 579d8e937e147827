"""The simulator: engines agree, runs are reproducible, schedules and results are right."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from relayfl import RunConfig, RunResult, Task, simulate
from relayfl.errors import ConfigError, PartitionError
from relayfl.optim import (
    SGD,
    learning_rate,
    milestone_steps,
    schedule_notes,
    warmup_length,
)
from relayfl.simulation import ClientData
from relayfl.task import builtin


@pytest.fixture(scope="module")
def digits() -> Task:
    """Digits with a dropout CNN, so keyed dropout masks are exercised."""
    return builtin("digits", dropout=0.25)


def _tiny(**kw: object) -> RunConfig:
    base = {
        "num_clients": 6,
        "steps": 20,
        "batch_size": 16,
        "eval_every": 10,
        "eval_limit": 100,
        "seed": 3,
    }
    return RunConfig(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", ["relaysgd", "dpsgd", "allreduce", "relaysgd-grad"])
def test_batched_and_loop_engines_give_the_same_models(digits: Task, algorithm: str) -> None:
    """Grouped layout and vmap == one worker after another, dropout included (20 steps)."""
    loop = simulate(digits, _tiny(algorithm=algorithm, engine="loop", momentum=0.9))
    assert loop.engine == "loop"
    for engine in ("batched", "vmap"):
        other = simulate(digits, _tiny(algorithm=algorithm, engine=engine, momentum=0.9))
        assert other.engine == engine
        # float32, 20 steps of SGD: only summation order differs (measured max |diff| ~1e-6)
        torch.testing.assert_close(other.models, loop.models, rtol=0, atol=5e-5)
        assert other.final.accuracies == pytest.approx(loop.final.accuracies, abs=0.02)


def test_same_seed_reproduces_and_other_seed_differs(digits: Task) -> None:
    """Every random choice is keyed by the seed: same seed, same models, bit for bit."""
    a = simulate(digits, _tiny(steps=8))
    b = simulate(digits, _tiny(steps=8))
    c = simulate(digits, _tiny(steps=8, seed=4))
    assert torch.equal(a.models, b.models)
    assert not torch.equal(a.models, c.models)


def test_batches_are_keyed_per_client_not_drawn_from_one_stream() -> None:
    """A client's batch depends on (seed, client, step) only, not on the order of draws."""
    x = torch.arange(100).float().unsqueeze(1)
    parts = [torch.arange(0, 50), torch.arange(50, 100)]
    one = ClientData(x, torch.zeros(100, dtype=torch.long), parts, 8, seed=1)
    two = ClientData(x, torch.zeros(100, dtype=torch.long), parts, 8, seed=1)
    forward = [one.indices(1, s) for s in range(12)]
    two.indices(0, 5)  # other client and other steps first
    backward = [two.indices(1, s) for s in reversed(range(12))][::-1]
    for f, b in zip(forward, backward, strict=True):
        assert torch.equal(f, b)
    epoch = torch.cat(forward[:6])  # 50 // 8 = 6 steps per epoch: no repeats inside one
    assert len(set(epoch.tolist())) == 48 and set(epoch.tolist()) <= set(range(50, 100))


def test_learning_rate_schedule_follows_the_paper() -> None:
    """Section 1.8 / I15: a 200-epoch run warms up over 5 epochs, x0.1 at 75% and 90%."""
    kw = {"base": 1.0, "steps_per_epoch": 10, "total_steps": 2000}
    assert learning_rate(0, **kw) == 0
    assert learning_rate(25, **kw) == pytest.approx(0.5)
    assert learning_rate(50, **kw) == pytest.approx(1.0)
    assert learning_rate(1499, **kw) == pytest.approx(1.0)
    assert learning_rate(1500, **kw) == pytest.approx(0.1)
    assert learning_rate(1800, **kw) == pytest.approx(0.01)
    assert learning_rate(0, **kw, world_size=1) == 1.0  # no warm-up for one worker
    assert learning_rate(1800, **kw, enabled=False) == 1.0


def test_default_warmup_is_capped_at_2_5_percent_of_a_short_run() -> None:
    """300 steps of 117 per epoch: warm-up 2.5% of the run (7.5 steps), not 5 epochs."""
    kw = {"base": 1.0, "steps_per_epoch": 117.1875, "total_steps": 300}  # 60k/16/32
    assert warmup_length(None, 300 / 117.1875) == pytest.approx(0.025 * 300 / 117.1875)
    assert learning_rate(3, **kw) == pytest.approx(0.4)
    assert learning_rate(8, **kw) == 1.0  # the configured rate from step 8 on
    assert learning_rate(224, **kw) == 1.0
    assert learning_rate(225, **kw) == pytest.approx(0.1)
    assert learning_rate(270, **kw) == pytest.approx(0.01)
    info, warning = schedule_notes(None, steps_per_epoch=117.1875, total_steps=300)
    assert "capped at 0.064 epochs" in info and warning is None
    assert schedule_notes(None, steps_per_epoch=10, total_steps=2000) == (None, None)


def test_explicit_warmup_is_honoured_and_milestones_stay_after_it() -> None:
    """--warmup-epochs 5 on a 3-epoch run: honoured, warned about, no decay inside it."""
    kw = {"base": 1.0, "steps_per_epoch": 100, "total_steps": 300, "warmup_epochs": 5.0}
    assert learning_rate(250, **kw) == pytest.approx(0.5)  # still warming up at 75%
    assert milestone_steps(300, (0.75, 0.9), warmup_steps=500) == [500, 500]
    info, warning = schedule_notes(5.0, steps_per_epoch=100, total_steps=300)
    assert info is None and "--warmup-epochs 5 is at least the whole run" in warning
    with pytest.warns(UserWarning, match="never reaches"):
        simulate(_tiny(steps=2, warmup_epochs=50.0, eval_every=0))
    with pytest.raises(ConfigError, match="warmup-epochs must be"):
        RunConfig(warmup_epochs=-1.0)


def test_nesterov_sgd_matches_torch_optim() -> None:
    """The functional SGD equals torch.optim.SGD(nesterov=True, weight_decay) step by step."""
    w = torch.randn(1, 7, dtype=torch.float64)
    ref = w[0].clone().requires_grad_(True)
    opt_ref = torch.optim.SGD([ref], lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)
    ours = SGD(momentum=0.9, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        g = torch.randn(7, generator=gen, dtype=torch.float64)
        ref.grad = g.clone()
        opt_ref.step()
        w = w + ours.update(w, g.unsqueeze(0), 0.1)
    torch.testing.assert_close(w[0], ref.detach(), rtol=0, atol=1e-14)


def test_result_schema_round_trips_through_json_and_csv(digits: Task, tmp_path) -> None:
    """results.json holds config, versions and per-evaluation records, and loads back."""
    result = simulate(digits, _tiny(steps=10, eval_every=5))
    path = result.save(tmp_path)
    data = json.loads(path.read_text())
    assert data["config"]["algorithm"] == "relaysgd" and data["config"]["seed"] == 3
    assert {"torch", "numpy", "networkx", "python"} <= set(data["versions"])
    record = data["evaluations"][-1]
    for key in (
        "step",
        "round",
        "mean_accuracy",
        "worst_accuracy",
        "mean_loss",
        "worst_loss",
        "bytes_sent",
        "bytes_received",
        "accuracies",
    ):
        assert key in record
    assert [e["step"] for e in data["evaluations"]] == [0, 5, 10]
    assert len(record["bytes_sent"]) == 6
    loaded = RunResult.load(tmp_path)
    assert loaded.final.worst_accuracy == result.final.worst_accuracy
    # the topology actually run (relaysgd's default), not None for "the default"
    assert RunConfig.from_dict(loaded.config) == _tiny(
        steps=10, eval_every=5, topology="binary-tree"
    )
    assert (tmp_path / "evaluations.csv").read_text().startswith("step,round,")


def test_bytes_count_tree_degree_times_model_size(digits: Task) -> None:
    """Per round a relay worker sends deg(i) models (fp32) plus deg(i) 8-byte counts."""
    result = simulate(digits, _tiny(steps=4, eval_every=0, topology="chain"))
    d = result.task["parameters"]
    sent = result.final.bytes_sent
    assert sent[0] == 4 * (d * 4 + 8)  # a chain end has one neighbour
    assert sent[2] == 4 * 2 * (d * 4 + 8)


def test_user_task_with_own_model_and_data_runs() -> None:
    """simulate(task, config) runs any nn.Module factory, loss and tensors."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, 3, generator=gen)
    x = torch.randn(600, 5, generator=gen)
    y = (x @ w).argmax(1)
    task = Task("linear", lambda: nn.Linear(5, 3), x[:500], y[:500], x[500:], y[500:])
    result = simulate(
        task, RunConfig(num_clients=4, alpha=1.0, steps=150, lr=0.5, eval_every=0, topology="chain")
    )
    assert result.final.worst_accuracy > 0.8  # separable data; chance is ~0.33


def test_drops_with_latest_fill_keep_training(digits: Task) -> None:
    """10% seeded drops with fill=latest run and stay reproducible."""
    cfg = _tiny(steps=15, drop_probability=0.1, fill="latest", eval_every=0)
    a, b = simulate(digits, cfg), simulate(digits, cfg)
    assert torch.equal(a.models, b.models)
    assert not torch.equal(a.models, simulate(digits, cfg.replace(drop_probability=0)).models)


def test_batchnorm_with_running_stats_is_refused_with_the_fix() -> None:
    """BatchNorm running statistics are refused with GroupNorm suggested."""
    x, y = torch.randn(64, 3, 4, 4), torch.randint(0, 2, (64,))

    def model():
        return nn.Sequential(
            nn.Conv2d(3, 4, 3),
            nn.BatchNorm2d(4),
            nn.Flatten(),
            nn.Linear(16, 2),
        )

    task = Task("bn", model, x, y, x, y)
    with pytest.raises(ConfigError, match="GroupNorm"):
        simulate(task, RunConfig(num_clients=2, steps=1, alpha=1.0))


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"algorithm": "fedprox"}, ConfigError, "use one of"),
        ({"alpha": 0.0}, ConfigError, "alpha must be > 0"),
        ({"alpha": -1.0}, ConfigError, "alpha must be > 0"),
        ({"alpha": math.nan}, ConfigError, "alpha must be > 0"),
        ({"steps": 0}, ConfigError, "steps must be >= 1"),
        ({"drop_probability": 1.0}, ConfigError, r"\[0, 1\)"),
    ],
    ids=["algorithm", "alpha-zero", "alpha-negative", "alpha-nan", "steps", "drop"],
)
def test_bad_config_names_the_fix(changes: dict, error: type, match: str) -> None:
    """RunConfig validates once, with one-line messages that name the fix."""
    with pytest.raises(error, match=match):
        RunConfig(**changes)


def test_more_clients_than_samples_is_refused(digits: Task) -> None:
    """A split with more clients than samples says how many clients are possible."""
    with pytest.raises(PartitionError, match="use at most 1437 clients"):
        simulate(digits, RunConfig(num_clients=2000, steps=1))


# Measured on the 2-core machine (digits, 16 clients, alpha 0.1, 100 steps, lr 0.1, the
# capped warm-up; relaysgd with lr x (1 + mean delay) = 0.5375 on the chain), worst client:
#   seed 0: relaysgd/chain 0.8944, dpsgd/ring 0.8278, allreduce 0.9278
#   seed 1: relaysgd/chain 0.8778, dpsgd/ring 0.8000, allreduce 0.9444
#   seed 2: relaysgd/chain 0.8972, dpsgd/ring 0.8167, allreduce 0.9333
# relay - dpsgd >= 0.067 and allreduce - relay <= 0.067 on every seed; the test runs seed 0
# only (3 runs, 50-90 s each at a load of 8-18 on 2 cores, hence its own timeout).
RELAY_BEATS_GOSSIP_BY = 0.04
RELAY_WITHIN_ALLREDUCE = 0.08


@pytest.mark.timeout(900)
def test_relaysgd_chain_beats_dpsgd_ring_worst_client_on_skewed_digits() -> None:
    """Both send two models per step; RelaySGD's worst client wins at alpha = 0.1."""
    worst: dict[str, list[float]] = {"relaysgd": [], "dpsgd": [], "allreduce": []}
    topo = {"relaysgd": "chain", "dpsgd": "ring", "allreduce": None}
    for seed in (0,):
        for algorithm in worst:
            cfg = RunConfig(
                algorithm=algorithm,
                topology=topo[algorithm],
                num_clients=16,
                alpha=0.1,
                steps=100,
                seed=seed,
                eval_every=0,
            )
            worst[algorithm].append(simulate(config=cfg).final.worst_accuracy)
    relay, gossip, allreduce = (float(np.mean(worst[a])) for a in worst)
    assert relay - gossip >= RELAY_BEATS_GOSSIP_BY, worst
    assert allreduce - relay <= RELAY_WITHIN_ALLREDUCE, worst
