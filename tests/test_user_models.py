"""User models and data: the simulator gives PyTorch's answer, or a one-line error.

Each model here is what a user writes: an ``nn.Module`` with its own ``forward``
(``F.dropout(training=self.training)``, ``nn.MultiheadAttention``, ``torch.randn``
noise, frozen layers), checked against plain PyTorch (``model.eval()``,
``requires_grad``) on small blobs data.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from relayfl import RunConfig, Task, relay, simulate, topology
from relayfl.cli import main
from relayfl.engine import FunctionalModel, make_engine
from relayfl.errors import ConfigError, DivergenceError, PartitionError
from relayfl.relay import unpack
from relayfl.simulation import make_partitions
from relayfl.worker import LocalWorker


def _blobs(train: int = 240, test: int = 80) -> tuple[torch.Tensor, ...]:
    """Four Gaussian blobs in 8 dimensions (separable), fixed seed."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 8, generator=g) * 3
    y = torch.randint(0, 4, (train + test,), generator=g)
    x = centers[y] + torch.randn(train + test, 8, generator=g)
    return x[:train], y[:train], x[train:], y[train:]


def _task(model_fn: object, name: str = "blobs") -> Task:
    return Task(name, model_fn, *_blobs())  # type: ignore[arg-type]


def _config(**kw: object) -> RunConfig:
    base = {
        "num_clients": 3,
        "topology": "chain",
        "steps": 6,
        "batch_size": 16,
        "lr": 0.05,
        "schedule": False,
        "eval_every": 0,
        "alpha": 1.0,
    }
    return RunConfig(**{**base, **kw})  # type: ignore[arg-type]


class FunctionalDropout(nn.Module):
    """Dropout written functionally, plus Gaussian noise in training (torch.randn)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.a, self.b, self.p = nn.Linear(8, 32), nn.Linear(32, 4), p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(F.relu(self.a(x)), p=self.p, training=self.training)
        if self.training:
            h = h + 0.1 * torch.randn(h.shape)
        return self.b(h)


class Attention(nn.Module):
    """nn.MultiheadAttention with attention dropout over 4 tokens of 2 features."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(2, 8)
        self.attention = nn.MultiheadAttention(8, 2, dropout=0.3, batch_first=True)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.view(len(x), 4, 2))
        a, _ = self.attention(h, h, h)
        return self.head(a.mean(1))


class FeatureDropout(nn.Module):
    """nn.Dropout2d on 2 channels of 2x2 (drops whole channels, F.dropout2d inside)."""

    def __init__(self) -> None:
        super().__init__()
        self.drop, self.head = nn.Dropout2d(0.5), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(x.view(len(x), 2, 2, 2)).flatten(1))


def _eval_accuracies(task: Task, models: torch.Tensor, layout: object) -> list[float]:
    """Each worker's accuracy computed by hand in PyTorch, under model.eval()."""
    out = []
    for row in models:
        model = task.init_model(0)
        model.load_state_dict(unpack(row, layout))  # type: ignore[arg-type]
        model.eval()
        with torch.no_grad():
            out.append(float((model(task.x_test).argmax(-1) == task.y_test).float().mean()))
    return out


def test_evaluation_equals_pytorch_under_model_eval() -> None:
    """F.dropout(p=0.9, training=self.training): reported accuracy == model.eval()'s."""
    task = _task(lambda: FunctionalDropout(p=0.9))
    result = simulate(task, _config(steps=20))
    expected = _eval_accuracies(task, result.models, result.layout)
    assert result.final.accuracies == pytest.approx(expected, abs=1e-6)
    assert min(expected) > 0.9  # dropout off at test time: the blobs are separable


@pytest.mark.parametrize("algorithm", ["relaysgd", "dpsgd"])
def test_frozen_parameters_keep_their_initial_value_bit_for_bit(algorithm: str) -> None:
    """requires_grad=False: not stepped, not weight-decayed, not averaged away."""

    def model_fn() -> nn.Module:
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        model[0].requires_grad_(False)
        return model

    task = _task(model_fn)
    result = simulate(task, _config(algorithm=algorithm, weight_decay=0.1, momentum=0.9))
    init = task.init_model(0)
    for row in result.models:
        params = unpack(row, result.layout)
        assert torch.equal(params["0.weight"], init[0].weight)
        assert torch.equal(params["0.bias"], init[0].bias)
        assert not torch.equal(params["2.weight"], init[2].weight)


@pytest.mark.parametrize(
    "model_fn",
    [FunctionalDropout, Attention, FeatureDropout],
    ids=["functional-dropout", "attention", "dropout2d"],
)
def test_randomness_in_forward_is_keyed_and_engines_agree(model_fn: type) -> None:
    """Same seed: bitwise-identical models per engine; loop == vmap to 5e-5.

    The runs share one process, so a draw from torch's global generator would differ
    between the two runs of an engine.
    """
    task = _task(model_fn)
    runs = {
        engine: [simulate(task, _config(engine=engine, steps=3, eval_limit=8)) for _ in range(2)]
        for engine in ("loop", "vmap")
    }
    for engine, (first, second) in runs.items():
        assert first.engine == engine
        assert torch.equal(first.models, second.models)
    torch.testing.assert_close(runs["vmap"][0].models, runs["loop"][0].models, rtol=0, atol=5e-5)


def test_random_operation_that_cannot_be_keyed_is_refused_naming_the_module() -> None:
    """torch.randperm in forward: one line naming the module and the alternatives."""

    class Shuffle(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, torch.randperm(x.shape[1])]

    task = _task(lambda: nn.Sequential(Shuffle(), nn.Linear(8, 4)))
    with pytest.raises(ConfigError, match=r"module '0' calls torch\.randperm.*torch\.rand"):
        simulate(task, _config(steps=1))


class _Counter(nn.Module):
    """Counts its calls in a buffer, in place (state the relay does not carry)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 4)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.linear(x)


class _Branch(nn.Module):
    """Data-dependent Python control flow: vmap cannot run it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) if x.sum() > 0 else self.b(x)


def test_buffer_changed_in_forward_is_a_one_line_error() -> None:
    """A buffer updated in place in forward: ConfigError naming module, buffer and fix."""
    task = _task(lambda: nn.Sequential(_Counter()))
    with pytest.raises(ConfigError, match=r"module '0' changes its buffer '0\.calls'.*GroupNorm"):
        simulate(task, _config(steps=1))


def test_vmap_forced_on_control_flow_errors_and_auto_falls_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """--engine vmap: one line naming the module and --engine loop; auto: loop + a log."""
    task = _task(lambda: nn.Sequential(_Branch()))
    with pytest.raises(ConfigError, match=r"vmap cannot run module '0'.*--engine loop"):
        simulate(task, _config(steps=1, engine="vmap"))
    with caplog.at_level(logging.INFO, logger="relayfl.engine"):
        result = simulate(task, _config(steps=1, engine="auto"))
    assert result.engine == "loop"
    assert [r.message for r in caplog.records if r.name == "relayfl.engine"] == [
        "engine auto: vmap cannot run module '0' (data-dependent Python control flow or "
        ".item() on a tensor in forward); using the loop engine"
    ]


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))


@pytest.mark.parametrize("algorithm", ["relaysgd", "dpsgd"])
def test_divergence_stops_the_run_with_status_diverged(algorithm: str) -> None:
    """lr 100: DivergenceError naming step and client; the evaluations so far are kept."""
    task = _task(_mlp)
    config = _config(algorithm=algorithm, lr=100.0, steps=60, eval_every=5, num_clients=4)
    with pytest.raises(DivergenceError, match=r"step 5 on client \d: max \|parameter\| .*--lr"):
        simulate(task, config)
    try:
        simulate(task, config)
    except DivergenceError as err:
        assert err.result.status == "diverged"
        assert err.result.evaluations and err.result.evaluations[0].step == 0


def test_high_learning_rate_that_still_learns_is_not_divergence() -> None:
    """lr 20 without weight decay or schedule learns the blobs: no false alarm."""
    task = _task(lambda: nn.Linear(8, 4))
    config = _config(lr=20.0, steps=30, weight_decay=0.0)
    result = simulate(task, config)
    assert result.status == "completed"
    assert result.final.worst_accuracy > 0.9
    assert result.models.abs().max() > 20 * task.init_model(0).weight.abs().max()


def test_bad_data_gives_one_line_errors_before_training() -> None:
    """numpy inputs, string and float labels, empty test set, eval-limit, outputs."""
    x, y, xt, yt = _blobs()
    with pytest.raises(ConfigError, match=r"x_train is a ndarray.*torch\.as_tensor\(x_train\)"):
        Task("t", _mlp, x.numpy(), y, xt, yt)
    words = np.array(["cat", "dog", "eel", "fox"])[y.numpy()]
    with pytest.raises(ConfigError, match=r"y_train is a ndarray.*np\.unique"):
        Task("t", _mlp, x, words, xt, yt)
    with pytest.raises(ConfigError, match=r"dtype torch\.float32.*y_train\.long\(\)"):
        Task("t", _mlp, x, y.float(), xt, yt)
    with pytest.raises(ConfigError, match="no test samples"):
        Task("t", _mlp, x, y, xt[:0], yt[:0])
    for limit in (0, -5):
        with pytest.raises(ConfigError, match=f"eval-limit must be >= 1.*got {limit}"):
            _config(eval_limit=limit)
    with pytest.raises(ConfigError, match="model gives 3 outputs.*give the last layer 4"):
        simulate(_task(lambda: nn.Linear(8, 3)), _config(steps=1))


def test_client_without_samples_is_a_partition_error() -> None:
    """alpha 0.01 without the even split leaves clients empty: named, with the fix."""
    task = _task(_mlp)
    config = RunConfig(num_clients=200, alpha=0.01, even_split=False, topology="chain")
    with pytest.raises(PartitionError, match=r"clients get no training samples.*--no-even-split"):
        make_partitions(task, config)


def test_cli_saves_a_diverged_run_and_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """relayfl simulate --lr 100: one error line, exit 2, results.json status diverged."""
    out = tmp_path / "run"
    argv = ["simulate", "--clients", "4", "--steps", "20", "--lr", "100", "--eval-every", "5"]
    code = main([*argv, "--eval-limit", "50", "--quiet", "--out", str(out)])
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "training diverged at step" in errors[0], errors
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "diverged"
    assert saved["evaluations"][0]["step"] == 0


def test_node_worker_draws_the_same_randomness_and_keeps_frozen_weights() -> None:
    """LocalWorker (what a node runs) + RelayNode == simulate() for a user's model."""

    def model_fn() -> nn.Module:
        model = FunctionalDropout()
        model.a.bias.requires_grad_(False)
        return model

    task = _task(model_fn)
    config = _config(steps=3, momentum=0.9)
    expected = simulate(task, config).models  # [n, d]
    chain = topology.chain(3)
    workers = [LocalWorker(task, config, i) for i in range(3)]
    nodes = [relay.RelayNode(chain, i, initial=w.x0) for i, w in enumerate(workers)]
    x = [w.x0.clone() for w in workers]
    for step in range(config.steps):
        half = [w.train(x[i], step)[0] for i, w in enumerate(workers)]
        outbox = [node.send(half[i]) for i, node in enumerate(nodes)]
        x = [  # as relayfl node: mix, then keep the frozen entries
            workers[i].freeze(node.receive({j: outbox[j][i] for j in node.neighbors}))
            for i, node in enumerate(nodes)
        ]
    torch.testing.assert_close(torch.stack(x), expected, rtol=0, atol=5e-5)
    bias = unpack(torch.stack(x)[1], workers[1].layout)["a.bias"]
    assert torch.equal(bias, task.init_model(0).a.bias)


def test_batched_engine_follows_self_training_like_the_loop() -> None:
    """A branch on self.training: the grouped layout evaluates the eval branch."""

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.a(x))
            return self.b(h * 3.0 if self.training else h)

    fm = FunctionalModel(Scaled(), F.cross_entropy)
    x, _, xt, yt = _blobs()
    batched = make_engine(fm, "batched", x[:16])
    assert batched.name == "batched"
    models = fm.x0.unsqueeze(0).repeat(2, 1)  # [2, d]
    _, loss = batched.evaluate(models, xt, yt)
    model = Scaled()
    model.load_state_dict(unpack(fm.x0, fm.layout))
    with torch.no_grad():
        expected = F.cross_entropy(model.eval()(xt), yt)
    torch.testing.assert_close(loss, expected.repeat(2), rtol=0, atol=1e-5)


def test_randomness_at_evaluation_is_reproducible() -> None:
    """Noise in forward also at test time: same seed, same reported accuracies."""

    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x + 3.0 * torch.randn(x.shape))

    task = _task(Noisy)
    first, second = (simulate(task, _config(steps=4)) for _ in range(2))
    assert torch.equal(first.models, second.models)
    assert first.final.accuracies == second.final.accuracies
