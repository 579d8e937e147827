"""Flower clients as relay workers, in process (no Flower runtime): the adapter's math."""

from __future__ import annotations

import math
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
from flower_helpers import LinearClient, linear_client_fn
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency

from relayfl import RunConfig, simulate, topology
from relayfl.errors import ConfigError, NotATreeError
from relayfl.flower import PeerMixer, RelayClientApp, simulate_clients
from relayfl.flower.protocol import route, to_key
from relayfl.simulation import make_partitions


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.reshape(-1) for a in arrays])


def _fit(client: LinearClient, x: np.ndarray, local_steps: int) -> np.ndarray:
    new, _, _ = client.fit([x[:3], x[3:]], {"local-steps": local_steps})
    return _flat(new)


def _relay_by_hand(graph: nx.Graph, rounds: int, local_steps: int) -> np.ndarray:
    """RelaySum/Model of docs/algorithm.md 1.1-1.2, written out with per-edge dictionaries."""
    n = graph.number_of_nodes()
    clients = [LinearClient(i) for i in range(n)]
    x0 = np.zeros(4)
    x = [x0.copy() for _ in range(n)]
    m = {(i, j): np.zeros(4) for i, j in graph.to_directed().edges}
    c = {e: 0.0 for e in m}
    for _ in range(rounds):
        half = [_fit(clients[i], x[i], local_steps) for i in range(n)]
        m_new, c_new = {}, {}
        for i, j in m:  # m_{i->j} = v_i + sum_{k in N_i, k != j} m_{k->i}
            m_new[(i, j)] = half[i] + sum(
                (m[(k, i)] for k in graph.neighbors(i) if k != j), np.zeros(4)
            )
            c_new[(i, j)] = 1 + sum(c[(k, i)] for k in graph.neighbors(i) if k != j)
        m, c = m_new, c_new
        for i in range(n):  # (S_i + (n - C_i) x0) / n
            S = half[i] + sum(m[(j, i)] for j in graph.neighbors(i))
            C = 1 + sum(c[(j, i)] for j in graph.neighbors(i))
            x[i] = (S + (n - C) * x0) / n
    return np.stack(x)


def test_numpy_client_on_a_chain_reaches_the_relay_math_by_hand() -> None:
    """A plain NumPyClient wrapped by the adapter on a chain of 4 == RelaySum by hand."""
    rounds, local_steps = 6, 2
    config = RunConfig(
        topology="chain",
        num_clients=4,
        steps=rounds * local_steps,
        local_steps=local_steps,
        eval_every=2 * local_steps,
    )
    result = simulate_clients(linear_client_fn, config)
    expected = _relay_by_hand(topology.chain(4), rounds, local_steps)
    assert result.models.dtype == torch.float64
    np.testing.assert_allclose(result.models.numpy(), expected, rtol=0, atol=1e-12)
    assert [e.round for e in result.evaluations] == [0, 2, 4, 6]
    assert result.engine == "client-adapter"
    assert all(0 < a <= 1 for a in result.final.accuracies)  # the client's own metric


def test_numpy_client_gossip_matches_metropolis_hastings_by_hand() -> None:
    """dpsgd through the adapter on a ring of 4 == x <- W x_half with W = 1/3 everywhere."""
    config = RunConfig(algorithm="dpsgd", num_clients=4, steps=3, eval_every=0)
    result = simulate_clients(linear_client_fn, config)
    clients = [LinearClient(i) for i in range(4)]
    W = topology.gossip_weights(topology.ring(4))
    np.testing.assert_allclose(W[W > 0], 1 / 3)
    x = np.zeros((4, 4))
    for _ in range(3):
        x = W @ np.stack([_fit(clients[i], x[i], 1) for i in range(4)])
    np.testing.assert_allclose(result.models.numpy(), x, rtol=0, atol=1e-12)


def _linear_message_app() -> RelayClientApp:
    app = RelayClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        client = LinearClient(int(context.node_config["partition-id"]))
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        new, n, metrics = client.fit(arrays, dict(msg.content["config"]))
        reply = RecordDict(
            {"arrays": ArrayRecord(new), "metrics": MetricRecord({**metrics, "num-examples": n})}
        )
        return Message(reply, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        client = LinearClient(int(context.node_config["partition-id"]))
        loss, n, metrics = client.evaluate(msg.content["arrays"].to_numpy_ndarrays(), {})
        reply = MetricRecord({"loss": loss, "num-examples": n, **metrics})
        return Message(RecordDict({"metrics": reply}), reply_to=msg)

    return app


def test_message_api_client_app_relays_like_the_numpy_client() -> None:
    """@app.train / @app.evaluate functions in a RelayClientApp give the NumPyClient's run."""
    config = RunConfig(algorithm="relaysgd-grad", num_clients=5, steps=4, eval_every=2)
    x0 = ArrayRecord([np.zeros(3), np.zeros(1)])
    ours = simulate_clients(_linear_message_app(), config, initial_arrays=x0)
    ref = simulate_clients(linear_client_fn, config)
    torch.testing.assert_close(ours.models, ref.models, rtol=0, atol=1e-12)
    assert ours.final.accuracies == pytest.approx(ref.final.accuracies, abs=1e-12)


def test_message_api_app_without_initial_model_names_the_fix() -> None:
    """A Message-API app has no get_parameters: the error says to pass initial_arrays."""
    with pytest.raises(ConfigError, match="initial_arrays=ArrayRecord"):
        simulate_clients(_linear_message_app(), RunConfig(num_clients=2, steps=1))


def test_ready_digits_client_reproduces_the_simulator() -> None:
    """clients.digits through the adapter == relayfl.simulate rows (same seed, 4 workers).

    Tolerance 2e-5: one worker at a time vs vmap changes float32 summation order only.
    """
    from clients import digits

    config = RunConfig(num_clients=4, steps=4, batch_size=16, eval_every=2, seed=5)
    ours = simulate_clients(digits.client_fn, config, initial_arrays="own")
    ref = simulate(digits.task(config), config)
    torch.testing.assert_close(ours.models, ref.models, rtol=0, atol=2e-5)
    assert [e.step for e in ours.evaluations] == [e.step for e in ref.evaluations]
    for a, b in zip(ours.evaluations, ref.evaluations, strict=True):
        assert a.accuracies == pytest.approx(b.accuracies, abs=1 / 360 + 1e-9)


def test_different_initial_models_are_refused_with_initial_own() -> None:
    """initial='own' checks that every worker starts from the same model."""

    class Unseeded(LinearClient):
        def __init__(self, partition_id: int) -> None:
            super().__init__(partition_id)
            self.start = float(partition_id)

        def get_parameters(self, config: dict) -> list[np.ndarray]:
            return [np.full(3, self.start), np.zeros(1)]

    client_fn = lambda ctx: Unseeded(int(ctx.node_config["partition-id"]))  # noqa: E731
    with pytest.raises(ConfigError, match="different initial models"):
        simulate_clients(client_fn, RunConfig(num_clients=2, steps=1), initial_arrays="own")


def test_client_app_answers_flower_fedavg_train_messages() -> None:
    """RelayClientApp(client_fn) replies to Flower's train message as FedAvg requires."""
    from clients import digits

    config = RunConfig(num_clients=2, steps=2, batch_size=8)
    context = Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 1, "num-partitions": 2},
        state=RecordDict(),
        run_config={},
    )
    x0 = ArrayRecord(digits.client_fn(context).numpy_client.get_parameters({}))
    metadata = Metadata(
        run_id=1,
        message_id="m1",
        src_node_id=1,
        dst_node_id=7,
        reply_to_message_id="",
        group_id="1",
        created_at=0.0,
        ttl=3600.0,
        message_type="train",
    )
    cfg = ConfigRecord({**config.to_flower(), "server-round": 1, "local-steps": 2})
    msg = Message(RecordDict({"arrays": x0, "config": cfg}), metadata=metadata)
    reply = digits.app(msg, context)
    validate_message_reply_consistency([reply.content], "num-examples", check_arrayrecord=True)
    assert reply.content["metrics"]["num-examples"] > 0
    assert math.isfinite(reply.content["metrics"]["train-loss"])


def test_allreduce_cannot_run_as_neighbour_messages() -> None:
    """The forwarding ServerApp never averages, so allreduce is refused with the fix."""
    with pytest.raises(ConfigError, match="run_fedavg"):
        PeerMixer("allreduce", [topology.chain(3)], 0, torch.zeros(2))


def test_relay_on_a_ring_is_refused() -> None:
    """A relay needs a tree; the error names the spanning-tree option."""
    with pytest.raises(NotATreeError, match="spanning-tree"):
        PeerMixer("relaysgd", [topology.ring(4)], 0, torch.zeros(2))


def test_route_forwards_the_same_record_objects() -> None:
    """The router moves each record to its destination without copying or reading it."""
    a, b = ArrayRecord([np.ones(2)]), ArrayRecord([np.zeros(2)])
    incoming = route({0: {to_key(1, 0): a}, 1: {to_key(0, 0): b, "metrics": a}}, 2)
    assert incoming[1]["relayfl.from.0.0"] is a
    assert incoming[0]["relayfl.from.1.0"] is b
    assert set(incoming[0]) == {"relayfl.from.1.0"}


def test_run_config_round_trips_through_flower_config() -> None:
    """RunConfig.to_flower holds only Flower scalars and from_flower inverts it."""
    config = RunConfig(alpha=math.inf, milestones=(0.5, 0.8), topology="chain", eval_limit=50)
    values = config.to_flower()
    assert all(isinstance(v, bool | int | float | str) for v in values.values())
    ConfigRecord(values)  # accepted by Flower
    assert RunConfig.from_flower(values) == config
    assert RunConfig.from_flower({"topology": "", "num-clients": 3}).topology is None


def _context(partition: int, num: int, run_config: dict | None = None) -> Context:
    return Context(
        run_id=1,
        node_id=partition + 1,
        node_config={"partition-id": partition, "num-partitions": num},
        state=RecordDict(),
        run_config=run_config or {},
    )


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_client_trains_its_partition_of_the_real_data() -> None:
    """clients.fashion_mnist as a NumPyClient: partition from the node config, alpha and
    seed from the run config, one local step on real Fashion-MNIST."""
    from clients import fashion_mnist

    ctx = _context(2, 4, {"alpha": 0.5, "seed": 1, "eval-limit": 200})
    client = fashion_mnist.client_fn(ctx).numpy_client
    params = client.get_parameters({})
    new, num_examples, metrics = client.fit(params, {"server-round": 1, "local-steps": 1})
    config = RunConfig(dataset="fashion-mnist", num_clients=4, alpha=0.5, seed=1)
    task = fashion_mnist.task(config.replace(eval_limit=200))
    assert num_examples == len(make_partitions(task, config)[2])
    assert len(new) == len(params) and math.isfinite(metrics["train-loss"])
    loss, n, ev = client.evaluate(new, {})
    assert n == 200 and 0 <= ev["accuracy"] <= 1 and math.isfinite(loss)


def test_cifar10_client_without_its_folder_names_the_fix() -> None:
    """relayfl never downloads: the CIFAR-10 client asks for data-root."""
    from clients import cifar10

    client = cifar10.client_fn(_context(0, 2)).numpy_client
    with pytest.raises(ConfigError, match="data-root"):
        client.get_parameters({})


def test_ready_client_modules_are_one_factory_per_dataset() -> None:
    """Each module in clients/ is ready_client(DATASET): its task is that dataset's Task,
    its client_fn builds that dataset's TaskClient, and clients.load finds it."""
    import clients
    from relayfl.flower import RelayClientApp, TaskClient, ready_client

    for name, module_name in clients.MODULES.items():
        module = clients.load(name)
        assert module.__name__ == module_name and name == module.DATASET
        assert isinstance(module.app, RelayClientApp)
        assert module.client_fn.__name__ == f"{name.replace('-', '_')}_client_fn"
    digits = clients.load("digits")
    assert digits.task().name == "digits"
    client = digits.client_fn(_context(1, 3)).numpy_client
    assert isinstance(client, TaskClient) and client.dataset == "digits"
    with pytest.raises(ConfigError, match="unknown dataset 'svhn'; use one of digits"):
        ready_client("svhn")
    with pytest.raises(ConfigError, match="no ready Flower client for dataset 'svhn'"):
        clients.load("svhn")
