"""A Flower user's own clients, unchanged, on every path (issue 12).

``user_clients.py`` holds a quickstart-style NumPyClient (``client_fn``) and a Message-API
``ClientApp`` written from scratch (own training loop, ``context.node_config``,
``context.run_config["local-epochs"]``, ``config["round-lr"]``). Both do full-batch
gradient steps, so the relay computes the same models whichever kind carries the client
and whichever path runs it: in process, on Flower's simulation engine, and serverless
(``relayfl launch``).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import user_clients

from relayfl import RunConfig
from relayfl.errors import ConfigError
from relayfl.flower import RelayClientApp, run_fedavg, run_relay_simulation, simulate_clients
from relayfl.flower.inputs import load_initial, parse_run_config
from relayfl.flower.protocol import round_lr
from relayfl.node.trainer import FlowerTrainer, load_trainer
from relayfl.simulation import lr_schedule

HERE = Path(__file__).parent
#: 4 workers on a chain, 6 relay rounds, constant lr (no warm-up) so training moves.
CFG = RunConfig(num_clients=4, topology="chain", steps=6, eval_every=3, schedule=False, lr=0.1)
RUN_CONFIG = {"local-epochs": 2}
TOL = 1e-5  # float32 sums in another order (relay in process, on Ray, on nodes)


def _models(client, **kwargs) -> torch.Tensor:
    result = simulate_clients(client, CFG, run_config=RUN_CONFIG, **kwargs)
    return result.models


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    """The NumPyClient's final models, in process (initial model from node 0)."""
    return _models(user_clients.client_fn)


def test_every_client_kind_gives_the_same_models_in_process(reference: torch.Tensor) -> None:
    """client_fn, ClientApp(client_fn=...), a Message-API ClientApp and both wrapped in
    RelayClientApp compute the same relay (the same training math, same initial model)."""
    x0 = user_clients.initial_arrays()
    kinds = {
        "legacy ClientApp": (user_clients.legacy_app, {}),
        "Message-API ClientApp": (user_clients.app, {"initial_arrays": x0}),
        "RelayClientApp(app=)": (RelayClientApp(app=user_clients.app, initial_arrays=x0), {}),
        "RelayClientApp(client_fn=)": (RelayClientApp(client_fn=user_clients.client_fn), {}),
    }
    for name, (client, kwargs) in kinds.items():
        got = _models(client, **kwargs)
        assert torch.allclose(got, reference, atol=TOL), name
    assert not torch.allclose(reference[0], reference[1], atol=1e-3)  # they did train apart


def test_message_app_without_initial_model_is_refused_before_any_work(monkeypatch) -> None:
    """A plain ClientApp cannot give its model: one line naming both fixes, before Ray."""
    import relayfl.flower.fedavg as fedavg_mod
    import relayfl.flower.server as server_mod

    def started(*args, **kwargs):
        raise AssertionError("Flower's simulation started")

    monkeypatch.setattr(server_mod, "run_simulation", started)
    monkeypatch.setattr(fedavg_mod, "run_simulation", started)
    for run in (simulate_clients, run_relay_simulation):
        with pytest.raises(ConfigError, match=r"initial_arrays=.*--initial FILE"):
            run(user_clients.app, CFG)
    with pytest.raises(ConfigError, match="--initial FILE"):
        run_fedavg(user_clients.app, CFG, evaluate_fn=lambda r, a: None)
    with pytest.raises(ConfigError, match="--initial FILE"):
        load_trainer(user_clients.app, CFG, 0)


STOCHASTIC = {**RUN_CONFIG, "batch-size": 16}  # torch.randint minibatches in the user's loop


def test_a_client_drawing_random_batches_repeats_and_draws_new_ones_every_round() -> None:
    """The user's client_fn calls torch.manual_seed(0) (new_net) for every message, as
    Flower calls client_fn per message; relayfl seeds the process's generators per
    (seed, partition, round) around fit, so rounds draw new batches, a run repeats
    bit for bit, another seed differs, and the caller's generator state is untouched."""
    from relayfl.flower.protocol import partition_context
    from relayfl.flower.trainers import NumPyClientTrainer

    trainer = NumPyClientTrainer(user_clients.client_fn)
    context = partition_context(1, 4, STOCHASTIC)
    x0 = user_clients.initial_arrays()

    def fit(rnd: int, seed: int = 0) -> torch.Tensor:
        config = {**CFG.replace(seed=seed).to_flower(), "server-round": rnd, "round-lr": 0.5}
        arrays, _ = trainer.fit(x0, config, context)
        return torch.cat([torch.from_numpy(a.numpy()).flatten() for a in arrays.values()])

    before = torch.random.get_rng_state()
    first, again, second, other = fit(1), fit(1), fit(2), fit(1, seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(first, again)
    assert not torch.allclose(first, second) and not torch.allclose(first, other)
    runs = [simulate_clients(user_clients.client_fn, CFG, run_config=STOCHASTIC) for _ in "ab"]
    assert torch.equal(runs[0].models, runs[1].models)
    full_batch = _models(user_clients.client_fn)
    assert not torch.allclose(runs[0].models, full_batch)

    class Unseeded(user_clients.FlowerClient):  # Net() from whatever the generator holds
        def __init__(self, context) -> None:
            self.net, self.run_config = user_clients.Net(), dict(context.run_config)

    def unseeded(context):
        return Unseeded(context).to_client()

    def initial(seed: int) -> torch.Tensor:
        torch.rand(7)  # the caller's generator state must not matter
        node0 = partition_context(0, 4, STOCHASTIC)
        arrays = NumPyClientTrainer(unseeded).initial_arrays(
            CFG.replace(seed=seed).to_flower(), node0
        )
        return torch.cat([torch.from_numpy(a.numpy()).flatten() for a in arrays.values()])

    assert torch.equal(initial(0), load_trainer(unseeded, CFG, 0).x0)
    assert torch.equal(initial(0), load_trainer(unseeded, CFG, 3).x0)  # every node alike
    assert torch.equal(initial(0), initial(0)) and not torch.equal(initial(0), initial(1))


def test_round_lr_is_the_schedule_relayfl_workers_use() -> None:
    """Each fit config's round-lr is lr_schedule at the round's first step (warm-up in
    the clients' reported num-examples, decay, relay correction 1 + mean delay)."""
    seen: list[dict] = []

    class Spy(user_clients.FlowerClient):
        def fit(self, parameters, config):
            seen.append(dict(config))
            return super().fit(parameters, config)

    cfg = RunConfig(num_clients=4, topology="binary-tree", steps=12, local_steps=2, eval_every=0)
    simulate_clients(lambda c: Spy(c).to_client(), cfg)
    parts = [np.arange(100)] * 4  # 400 samples over 4 clients, as they report
    lr_at, factor, _ = lr_schedule(cfg, parts, cfg.build_graphs())
    assert factor > 1  # the relay correction applies
    assert len(seen) == 4 * 6
    for c in seen:
        assert c["round-lr"] == pytest.approx(lr_at((c["server-round"] - 1) * 2), abs=1e-12)
        assert c["local-steps"] == 2
    assert max(c["round-lr"] for c in seen) > 0
    assert round_lr(cfg, [100] * 4, 10) == pytest.approx(lr_at(10), abs=1e-12)


def test_run_config_reaches_the_client_and_local_epochs_the_fit_config() -> None:
    seen: list[tuple[dict, dict]] = []

    class Spy(user_clients.FlowerClient):
        def fit(self, parameters, config):
            seen.append((dict(config), self.run_config))
            return super().fit(parameters, config)

    r = simulate_clients(
        lambda c: Spy(c).to_client(), CFG, run_config={"local-epochs": 3, "x": "y"}
    )
    assert r.final.epoch == 6 * 3  # epochs from the user's local-epochs, not relayfl's steps
    config, run_config = seen[0]
    assert config["local-epochs"] == 3
    assert run_config["local-epochs"] == 3 and run_config["x"] == "y"
    assert run_config["relayfl.num-clients"] == 4  # relayfl's own under its prefix
    assert "num-clients" not in run_config
    assert parse_run_config('local-epochs=2 name="a b" on=true') == {
        "local-epochs": 2,
        "name": "a b",
        "on": True,
    }
    for typo, word in (("local-epochs:2", "local-epochs:2"), ("local-epochs = 2", "local-epochs")):
        with pytest.raises(ConfigError, match=f"'{word}' is not key=value"):
            parse_run_config(typo)  # Flower's own parser would drop it silently


def test_metrics_flower_allows_are_kept_and_missing_ones_are_nan() -> None:
    cfg = CFG.replace(eval_every=6)
    r = simulate_clients(user_clients.no_fit_metrics_client_fn, cfg)
    assert math.isnan(r.final.train_loss) and r.final.mean_accuracy > 0.5
    r = simulate_clients(user_clients.loss_only_client_fn, cfg)
    assert math.isnan(r.final.mean_accuracy) and all(math.isfinite(v) for v in r.final.losses)
    r = simulate_clients(user_clients.extra_client_fn, cfg)
    rows = r.extra["client_metrics"]
    fit = next(row["fit"] for row in rows if "fit" in row)
    assert fit["grad_norm"] == 1.25 and fit["note"] == "ok" and fit["per_step"] == [1.0, 2.0]
    assert fit["blob"] == "AAE="  # bytes as base64
    assert next(row["evaluate"] for row in rows if "evaluate" in row)["f1"] == 0.5
    assert len({(row["round"], row["partition-id"]) for row in rows}) == len(rows)
    json.dumps(r.to_dict())  # results.json stays JSON
    assert r.task["name"].startswith("user_clients:") and r.task["partition_sizes"] == [100] * 4


def test_a_run_config_key_nobody_passed_names_the_keys_and_the_fix(tmp_path: Path) -> None:
    """A quickstart client reading context.run_config["lr"] that its pyproject would
    declare: a KeyError (what user code catches) naming the keys there and how to pass
    it; relayfl launch's one line carries that line from the node's stderr.log."""
    from relayfl.launch import last_error

    class NeedsLr(user_clients.FlowerClient):
        def __init__(self, context) -> None:
            super().__init__(context)
            self.lr = context.run_config["lr"]

    with pytest.raises(KeyError) as info:
        simulate_clients(lambda context: NeedsLr(context).to_client(), CFG)
    assert str(info.value) == (
        "'lr' is not in context.run_config (it holds local-epochs, num-server-rounds); pass "
        'it in `run_config` (Python) or with --run-config "lr=..." (command line)'
    )
    ok = simulate_clients(lambda c: NeedsLr(c).to_client(), CFG, run_config={"lr": 0.1})
    assert ok.final.mean_accuracy > 0.5
    log = tmp_path / "stderr.log"
    log.write_text(
        "relayfl WARNING node 0: WARNING: --insecure: no TLS\nTraceback (most recent call "
        'last):\n  File "x.py", line 3, in f\n    self.lr = context.run_config["lr"]\n'
        "          ^^^^^^^^\nrelayfl.flower.protocol.MissingRunConfigKey: 'lr' is not there\n"
    )
    assert last_error(log) == ": relayfl.flower.protocol.MissingRunConfigKey: 'lr' is not there"
    assert last_error(tmp_path / "missing.log") == ""


def test_accuracy_under_a_name_of_its_own_is_read_with_accuracy_key(caplog) -> None:
    """A client reporting accuracy as "top1": null with a warning naming what it
    reported, the right value with accuracy_key="top1" (also --accuracy-key on node,
    launch and compare), a one-line error for a key it never reports."""
    from relayfl.cli import build_parser
    from relayfl.compare import spec_from_args

    reference = simulate_clients(user_clients.client_fn, CFG, run_config=RUN_CONFIG).final
    with caplog.at_level("WARNING", logger="relayfl.flower"):
        unnamed = simulate_clients(user_clients.top1_client_fn, CFG, run_config=RUN_CONFIG)
    assert all(math.isnan(a) for a in unnamed.final.accuracies)
    assert "reported no accuracy (it reported: loss, top1)" in caplog.text
    named = simulate_clients(
        user_clients.top1_client_fn, CFG.replace(accuracy_key="top1"), run_config=RUN_CONFIG
    ).final
    assert named.accuracies == reference.accuracies and named.mean_accuracy > 0.5
    with pytest.raises(ConfigError, match=r"reported no 'f1' \(it reported: loss, top1\)"):
        simulate_clients(user_clients.top1_client_fn, CFG.replace(accuracy_key="f1"))
    for argv in (
        ["launch", "--nodes", "2", "--client", "m:f", "--accuracy-key", "top1"],
        ["node", "--id", "0", "--client", "m:f", "--accuracy-key", "top1"],
    ):
        assert RunConfig.from_args(build_parser().parse_args(argv)).accuracy_key == "top1"
    args = build_parser().parse_args(["compare", "--client", "m:f", "--accuracy-key", "top1"])
    assert spec_from_args(args).run["accuracy_key"] == "top1"
    with pytest.raises(ConfigError, match="accuracy-key must name"):
        CFG.replace(accuracy_key=" ")


def test_steps_and_epochs_count_what_the_client_reports() -> None:
    """local-epochs=2 a round: epochs are rounds x 2 on every path; steps are the
    round count unless fit reports num-steps (2 full-batch steps a round here)."""
    plain = simulate_clients(user_clients.client_fn, CFG, run_config=RUN_CONFIG).final
    assert (plain.step, plain.epoch) == (6, 12)
    reported = simulate_clients(user_clients.steps_client_fn, CFG, run_config=RUN_CONFIG)
    assert (reported.final.step, reported.final.epoch) == (12, 12)
    assert [e.step for e in reported.evaluations] == [0, 6, 12]
    node = load_trainer(user_clients.steps_client_fn, CFG, 0, run_config=RUN_CONFIG)
    x = node.x0
    for step in range(3):
        x, _ = node.train(x, step, 1)
    assert node.progress(3) == (6, 6.0)
    node = load_trainer(user_clients.client_fn, CFG, 0, run_config={})
    x, _ = node.train(node.x0, 0, 1)
    assert node.progress(1) == (1, pytest.approx(CFG.batch_size / 100))  # 100 samples


class Uneven(user_clients.FlowerClient):
    """Partitions of 40 and 160 samples; records the round-lr each fit is sent."""

    seen: ClassVar[list[tuple[int, int, float]]] = []

    def __init__(self, context) -> None:
        super().__init__(context)
        self.pid = context.node_config["partition-id"]
        cut = 40 if self.pid == 0 else 160
        self.data = (user_clients._X[:cut], user_clients._Y[:cut])

    def fit(self, parameters, config):
        Uneven.seen.append((self.pid, int(config["server-round"]), float(config["round-lr"])))
        return super().fit(parameters, config)


def test_round_lr_counts_each_clients_own_examples_on_every_path() -> None:
    """With a warm-up in epochs and partitions of 40 and 160 samples, each client is
    sent the lr of its own epoch length, in process as on a serverless node (which
    knows only its own num-examples), so the paths give the same models."""
    cfg = CFG.replace(num_clients=2, schedule=True, warmup_epochs=1.0, batch_size=20)
    Uneven.seen.clear()
    simulate_clients(lambda c: Uneven(c).to_client(), cfg, run_config=RUN_CONFIG)
    in_process = sorted(Uneven.seen)
    Uneven.seen.clear()
    for pid in (0, 1):
        node = load_trainer(lambda c: Uneven(c).to_client(), cfg, pid, run_config=RUN_CONFIG)
        x = node.x0
        for step in range(cfg.steps):
            x, _ = node.train(x, step, 1)
    assert sorted(Uneven.seen) == in_process
    lr1 = dict(((p, r), lr) for p, r, lr in in_process)
    assert lr1[(0, 2)] != lr1[(1, 2)]  # 40 vs 160 samples: warm-up of 2 vs 8 steps


def test_accuracy_as_a_percentage_is_refused() -> None:
    class Percent(user_clients.FlowerClient):
        def evaluate(self, parameters, config):
            loss, n, m = super().evaluate(parameters, config)
            return loss, n, {"accuracy": 100 * m["accuracy"]}

    with pytest.raises(ConfigError, match=r"accuracy=\d+.*fraction in \[0, 1\]"):
        simulate_clients(lambda c: Percent(c).to_client(), CFG, run_config=RUN_CONFIG)


def test_arrays_in_another_order_are_refused_naming_the_position() -> None:
    with pytest.raises(ConfigError, match=r"array 0 with shape \(16,\) float32.*\(16, 8\)"):
        simulate_clients(user_clients.reordered_client_fn, CFG)


def test_node_trainer_reads_the_client_as_flower_does(tmp_path: Path) -> None:
    """relayfl node's trainer: empty fit metrics are no divergence, eval_acc is the
    accuracy, --initial FILE (.pt or .npz) gives a Message-API app its model."""
    t = load_trainer(user_clients.no_fit_metrics_client_fn, CFG, 0, run_config=RUN_CONFIG)
    _, loss = t.train(t.x0, 0, 1)
    assert math.isnan(loss) and t.reports_loss is False
    assert t.client_metrics == [{"round": 1, "partition-id": 0, "fit": {"num-examples": 100}}]
    assert t.task_info["name"] == "user_clients:no_fit_metrics_client_fn"
    torch.save(user_clients.new_net().state_dict(), tmp_path / "init.pt")
    named = {k: v.numpy() for k, v in user_clients.new_net().state_dict().items()}
    np.savez(tmp_path / "init.npz", **named)
    np.savez(tmp_path / "ordered.npz", *named.values())
    assert list(load_initial(tmp_path / "ordered.npz")) == ["0", "1", "2", "3"]
    for path in ("init.pt", "init.npz"):
        t = FlowerTrainer(user_clients.app, CFG, 0, initial=load_initial(tmp_path / path))
        acc, loss = t.evaluate(t.x0)
        assert 0 <= acc <= 1 and math.isfinite(loss)
        assert torch.equal(t.x0, load_trainer(user_clients.client_fn, CFG, 0).x0)
    with pytest.raises(ConfigError, match="neither"):
        load_initial(tmp_path / "missing.txt") if False else load_initial(
            _touch(tmp_path / "m.txt")
        )


def _touch(path: Path) -> Path:
    path.write_text("x")
    return path


@pytest.mark.slow
def test_message_app_on_flowers_engine_equals_in_process() -> None:
    """The plain Message-API ClientApp, unchanged, on Flower's simulation engine, drawing
    random minibatches in Ray's actors: the same models as in process."""
    x0 = user_clients.initial_arrays()
    r = run_relay_simulation(
        user_clients.app, CFG, initial_arrays=x0, run_config=STOCHASTIC, quiet=True
    )
    in_process = simulate_clients(user_clients.app, CFG, initial_arrays=x0, run_config=STOCHASTIC)
    assert torch.allclose(r.models, in_process.models, atol=TOL)
    assert r.final.mean_accuracy > 0.5 and math.isfinite(r.final.train_loss)


@pytest.mark.slow
def test_quickstart_client_under_fedavg() -> None:
    """A NumPyClient client_fn under Flower's FedAvg: initial model from a client, its
    run config, its train_loss, evaluated by every client."""
    from relayfl.flower.fedavg import client_evaluator

    r = run_fedavg(
        user_clients.extra_client_fn,  # fit metrics of every type a NumPyClient may return
        CFG,
        evaluate_fn=client_evaluator(user_clients.client_fn, CFG, run_config=RUN_CONFIG),
        run_config=RUN_CONFIG,
        quiet=True,
    )
    assert math.isfinite(r.final.train_loss) and r.final.mean_accuracy > 0.5
    assert r.final.lr == pytest.approx(0.1)
    assert (r.final.step, r.final.epoch) == (6, 6 * 2)  # local-epochs, as on the relay paths
    rows = r.extra["client_metrics"]
    fits = [row for row in rows if "fit" in row]
    assert {(row["round"], row["partition-id"]) for row in fits} == {
        (rnd, p) for rnd in range(1, 7) for p in range(4)
    }  # keyed as on the relay paths, not by Flower's random node ids
    fit = fits[-1]["fit"]
    assert (fit["note"], fit["blob"], fit["per_step"]) == ("ok", "AAE=", [1.0, 2.0])
    evaluated = [row for row in rows if "evaluate" in row]
    assert {row["round"] for row in evaluated} == {1, 4, 7}  # models after 0, 3 and 6 rounds
    assert all("accuracy" in row["evaluate"] for row in evaluated)
    assert r.task["name"] == "user_clients:extra_client_fn"
    assert r.task["partition_sizes"] == [100] * 4


@pytest.mark.slow
def test_message_app_serverless_with_initial_file(tmp_path: Path) -> None:
    """relayfl launch --client user_clients:app --initial init.pt --run-config: random
    minibatches drawn on each node give the same accuracies as in process, the client's
    metrics kept."""
    torch.save(user_clients.new_net().state_dict(), tmp_path / "init.pt")
    out = tmp_path / "out"
    stale = out / "nodes" / "node-0"  # an earlier launch into the same --out
    stale.mkdir(parents=True)
    (stale / "log.jsonl").write_text('{"event": "eval", "step": 99}\n')
    cmd = [
        sys.executable, "-m", "relayfl.cli", "launch", "--nodes", "2", "--topology", "chain",
        "--steps", "4", "--eval-every", "4", "--lr", "0.1", "--no-schedule", "--insecure",
        "--quiet", "--out", str(out), "--client", "user_clients:app",
        "--initial", str(tmp_path / "init.pt"), "--run-config", "local-epochs=2 batch-size=16",
    ]  # fmt: skip
    p = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    launched = json.loads((out / "results.json").read_text())
    cfg = CFG.replace(num_clients=2, steps=4, eval_every=4)
    in_process = simulate_clients(
        user_clients.app, cfg, initial_arrays=user_clients.initial_arrays(), run_config=STOCHASTIC
    ).final
    assert launched["evaluations"][-1]["accuracies"] == pytest.approx(
        in_process.accuracies, abs=1e-6
    )
    fits = [r for r in launched["extra"]["client_metrics"] if "fit" in r]
    assert len(fits) == 2 * 4 and all("train_loss" in r["fit"] for r in fits)
    assert launched["status"] == "completed"
    assert [e["step"] for e in launched["evaluations"]] == [0, 4]  # not the earlier run's
    assert launched["task"]["name"] == "user_clients:app"
    assert launched["task"]["partition_sizes"] == [200, 200]
    assert launched["extra"]["run_config"] == STOCHASTIC
    model = torch.load(out / "nodes" / "node-1" / "model.pt")["state_dict"]
    user_clients.Net().load_state_dict(model)  # the README's way to load it
    line = next(x for x in p.stdout.splitlines() if x.startswith("results written to"))
    named = line.split("(", 1)[1].split(";")[0].split(", ")
    assert "partition.png" not in named  # relayfl cannot see a Flower client's labels
    assert named and all((out / name).is_file() for name in named)


def test_errors_from_flowers_engine_keep_their_type_and_message() -> None:
    """A node's error reply, in Flower's `<class 'T'>:<'message'>` form, comes back as
    the relayfl error it was (ConfigError stays ConfigError), or names the type."""
    from flwr.app import Error, Message, Metadata

    from relayfl.flower.runtime import FlowerRunError, reply_error

    def reply(reason: str) -> Message:
        meta = Metadata(
            run_id=1,
            message_id="m",
            src_node_id=5,
            dst_node_id=1,
            reply_to_message_id="i",
            group_id="1",
            created_at=0.0,
            ttl=60.0,
            message_type="query.relayfl_round",
        )
        return Message(Error(code=0, reason=reason), metadata=meta)

    err = reply_error(reply("<class 'relayfl.errors.ConfigError'>:<'array 0 is wrong'>"), "round 2")
    assert type(err) is ConfigError and str(err) == "round 2, node 5: array 0 is wrong"
    err = reply_error(reply("<class 'KeyError'>:<'local-epochs'>"), "round 1")
    assert (
        type(err) is FlowerRunError and str(err) == "round 1: node 5 raised KeyError: local-epochs"
    )


def test_compare_runs_the_users_client_and_leaves_allreduce_out(capsys) -> None:
    """relayfl compare --client: the relay rows on the user's client (FedAvg's row is
    Flower's engine, covered above); allreduce is left out, saying so."""
    from relayfl.compare import CompareSpec, run_compare

    spec = CompareSpec(
        client="user_clients:client_fn",
        algorithms=("relaysgd", "dpsgd", "allreduce"),
        clients=4,
        rounds=3,
        seeds=(0,),
        alphas=(1.0, 0.1),
        run={"schedule": False},
        run_config={"local-epochs": 2},
        quiet=True,
    )
    assert spec.algorithms == ("relaysgd", "dpsgd") and spec.alphas == (1.0,)
    assert "allreduce is the simulator's reference" in capsys.readouterr().err
    result = run_compare(spec, log=None)
    assert [r.config["algorithm"] for r in result.runs] == ["relaysgd", "dpsgd"]
    assert all(r.task["name"] == "user_clients:client_fn" for r in result.runs)
    assert all(r.final.epoch == 3 * 2 for r in result.runs)
    assert {row["alpha"] for row in result.summary} == {"own"}  # not relayfl's unused alpha
    assert all(r.summary()["alpha"] == "own" for r in result.runs)
    with pytest.raises(ConfigError, match="--client runs"):
        CompareSpec(client="user_clients:client_fn", algorithms=("d2",))
