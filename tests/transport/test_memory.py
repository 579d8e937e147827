"""The node protocol on the in-memory transport: nodes as threads of one process.

Fast checks of what the network deployment relies on: the node code reproduces the
simulator, buffers one step ahead, rejects every bad message without touching the
model, drops on timeouts, and detects dead neighbours without false deaths.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import pytest
import torch

from relayfl import RunConfig, simulate, topology
from relayfl.node import GossipNode, Node, NodeConfig, run_id, split_parts
from relayfl.task import builtin
from relayfl.transport.base import Message
from relayfl.transport.memory import MemoryHub, MemoryTransport
from relayfl.worker import LocalWorker

_TASK = None


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread in this process too (2 shared cores; restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _task():
    global _TASK
    if _TASK is None:
        _TASK = builtin("digits", limit_test=120)
    return _TASK


def _config(**kw) -> RunConfig:
    base = dict(num_clients=5, steps=8, batch_size=16, eval_every=4, seed=3, engine="loop")
    return RunConfig(**{**base, **kw})


def _run(
    config: RunConfig,
    *,
    hub: MemoryHub | None = None,
    options: dict | None = None,
    during: Callable[[list[Node], MemoryHub], None] | None = None,
    timeout: float = 60,
) -> list[Node]:
    """Run every node of ``config`` as a thread; ``during`` runs beside them."""
    hub = hub or MemoryHub()
    opts = dict(step_timeout=10.0, dead_after=2.0, heartbeat=0.2)
    opts.update(options or {})
    task = _task()
    nodes = [
        Node(config, NodeConfig(i, **opts), LocalWorker(task, config, i), MemoryTransport(hub))
        for i in range(config.num_clients)
    ]
    errors: list[BaseException] = []

    def go(node: Node) -> None:
        try:
            node.run()
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=go, args=(n,), daemon=True) for n in nodes]
    for t in threads:
        t.start()
    if during is not None:
        during(nodes, hub)
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a node did not finish in time"
    stopped = [e for e in errors if type(e).__name__ == "NodeStopped"]
    assert len(errors) == len(stopped), errors
    return nodes


@pytest.mark.parametrize(
    "algorithm,topo,drop",
    [
        ("relaysgd", "binary-tree", 0.0),
        ("relaysgd-grad", "binary-tree", 0.0),
        ("dpsgd", "ring", 0.0),
        ("relaysgd", "double-binary-trees", 0.0),
        ("relaysgd", "binary-tree", 0.2),
        ("dpsgd", "ring", 0.2),
    ],
    ids=["relaysgd", "relaysgd-grad", "dpsgd", "double-trees", "relaysgd-drops", "dpsgd-drops"],
)
def test_nodes_in_memory_equal_the_simulation(algorithm: str, topo: str, drop: float) -> None:
    """Nodes (LocalWorker + one-node mixing) give the simulator's models bit for bit."""
    config = _config(
        algorithm=algorithm, topology=topo, drop_probability=drop, fill="latest", momentum=0.9
    )
    expected = simulate(_task(), config)
    nodes = _run(config)
    got = torch.stack([n._x for n in nodes])
    # same loop engine, same keyed batches and drops: only the relay's summation order
    # differs (one node's sum over neighbours vs a scatter-add), measured 0 here
    torch.testing.assert_close(got, expected.models, rtol=0, atol=1e-6)
    assert [n.result().final.accuracies[0] for n in nodes] == pytest.approx(
        expected.final.accuracies, abs=1e-6
    )
    if drop:
        assert sum(n._drops["injected"] for n in nodes) > 0


@pytest.mark.parametrize("fill", ["initial", "latest"])
@pytest.mark.parametrize("normalization", ["world_size", "counts", "sum"])
def test_pooled_relay_node_is_bitwise_the_plain_one_with_drops_and_checkpoints(
    fill: str, normalization: str
) -> None:
    """RelayNode on the node's buffer pool (buffers reused across steps) gives the same
    bits as RelayNode with fresh tensors, through drops and a state_dict round trip
    into fresh objects; so reusing buffers never corrupts a message still held."""
    from relayfl.relay import RelayNode
    from relayfl.transport.buffers import BufferPool

    pool = BufferPool()

    tree = topology.binary_tree(7)
    n, d = 7, 5
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(d, generator=gen)
    init = x0 if normalization == "world_size" else None
    ref = [
        RelayNode(tree, i, normalization=normalization, initial=init, fill=fill) for i in range(n)
    ]
    new = [
        RelayNode(tree, i, normalization=normalization, initial=init, fill=fill, alloc=pool.like)
        for i in range(n)
    ]
    for t in range(10):
        v = torch.randn(n, d, generator=gen)
        keep = torch.rand(n, n, generator=gen) > 0.25
        outs = []
        for nodes in (ref, new):
            box = [node.send(v[i]) for i, node in enumerate(nodes)]
            outs.append(
                torch.stack(
                    [
                        node.receive({j: box[j][i] for j in node.neighbors if keep[j, i]})
                        for i, node in enumerate(nodes)
                    ]
                )
            )
        assert torch.equal(outs[0], outs[1]), t
        assert pool._free, "the pool was used"
        if t == 4:  # checkpoint and restore every node (fresh objects)
            states = [node.state_dict() for node in new]
            new = [
                RelayNode(
                    tree, i, normalization=normalization, initial=init, fill=fill, alloc=pool.like
                )
                for i in range(n)
            ]
            for node, state in zip(new, states, strict=True):
                node.load_state_dict(state)


def test_gossip_node_matches_the_metropolis_hastings_row() -> None:
    """One node's gossip equals its row of W (docs/algorithm.md 2.5) and renormalises drops."""
    g = topology.ring(5)
    W = torch.as_tensor(topology.gossip_weights(g))
    v = torch.randn(5, 3, dtype=torch.float64)
    gn = GossipNode(g, 2)
    mixed = gn.mix(v[2], {j: v[j] for j in gn.neighbors}, renormalize=False)
    torch.testing.assert_close(mixed, W[2] @ v)
    dropped = gn.mix(v[2], {1: v[1], 3: None}, renormalize=True)
    torch.testing.assert_close(dropped, (W[2, 2] * v[2] + W[2, 1] * v[1]) / (W[2, 2] + W[2, 1]))


def _idle_node(config: RunConfig, node: int = 1) -> Node:
    return Node(
        config, NodeConfig(node), LocalWorker(_task(), config, node), MemoryTransport(MemoryHub())
    )


def _bad_messages(node: Node) -> dict[str, Message]:
    d = node.numels[0]
    rid = node.run_id
    good = torch.zeros(d)
    nan = good.clone()
    nan[3] = math.nan
    inf = good.clone()
    inf[0] = math.inf
    return {
        "wrong-run": Message("other-run", 0, 0, 0, 1.0, good),
        "wrong-tree": Message(rid, 0, 0, 5, 1.0, good),
        "not-neighbour": Message(rid, 0, 4, 0, 1.0, good),
        "wrong-dtype": Message(rid, 0, 0, 0, 1.0, good.double()),
        "wrong-shape": Message(rid, 0, 0, 0, 1.0, torch.zeros(d - 1)),
        "bad-count": Message(rid, 0, 0, 0, 99.0, good),
        "non-finite": Message(rid, 0, 0, 0, 1.0, nan),
        "non-finite-inf": Message(rid, 0, 0, 0, 1.0, inf),
        "too-far-ahead": Message(rid, 2, 0, 0, 1.0, good),
    }


def test_every_bad_message_is_rejected_once_and_never_buffered(caplog) -> None:
    """Each bad message is counted and never reaches the inbox; stderr gets one line per
    kind and sender (repeats within 5 s are counted, not printed)."""
    node = _idle_node(_config())
    bad = _bad_messages(node)
    for message in bad.values():
        node.on_message(message)
    assert not node._inbox
    kinds = {k.removesuffix("-inf") for k in bad}
    assert set(node._rejected) == kinds
    assert node._rejected["non-finite"] == 2
    lines = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(lines) == len(kinds)


def test_one_step_ahead_is_buffered_and_replays_are_rejected() -> None:
    """Step t and t+1 are kept; a duplicate, an older step and t+2 are refused."""
    node = _idle_node(_config())
    rid, d = node.run_id, node.numels[0]
    for step in (0, 1):
        node.on_message(Message(rid, step, 0, 0, 1.0, torch.full((d,), float(step))))
    assert set(node._inbox) == {(0, 0, 0), (1, 0, 0)}
    node.on_message(Message(rid, 1, 0, 0, 1.0, torch.ones(d)))  # duplicate of step 1
    node.on_message(Message(rid, 2, 0, 0, 1.0, torch.ones(d)))  # two ahead
    assert node._rejected == {"replay": 1, "too-far-ahead": 1}
    node._cur = 3  # step 0..2 used
    node.on_message(Message(rid, 0, 0, 0, 1.0, torch.ones(d)))
    assert node._rejected["replay"] == 2


def test_a_lost_message_is_resent_or_dropped_once_without_cascading() -> None:
    """A lost message is resent when its receiver reports waiting for it (or, at worst,
    costs that receiver one timeout); the other nodes extend their wait, nobody dies."""
    config = _config(num_clients=3, topology="chain", steps=6, eval_every=0, fill="latest")
    hub = MemoryHub()
    lost = []

    def lose_once(m: Message, dst: int) -> bool:
        if m.sender == 2 and dst == 1 and m.step == 2 and not lost:
            lost.append(m)
            return False
        return True

    hub.filter = lose_once
    nodes = _run(config, hub=hub, options=dict(step_timeout=3.0, dead_after=5.0))
    assert lost
    assert sum(nodes[1]._drops.values()) <= 1
    assert dict(nodes[0]._drops) == {} and dict(nodes[2]._drops) == {}
    assert all(torch.isfinite(n._x).all() for n in nodes)
    assert not any(n._dead_log for n in nodes)


def test_dead_neighbour_is_declared_once_and_the_split_reported() -> None:
    """Killing inner node 1 of a 7-node tree: 0, 2, 3 declare it dead; nobody else dies."""
    config = _config(num_clients=7, steps=30, eval_every=0, fill="latest")
    tree = topology.binary_tree(7)  # paper numbering: 0-1, 1-2, 1-3, 2-4, 2-5, 3-6
    assert sorted(tree.neighbors(1)) == [0, 2, 3]

    def kill(nodes: list[Node], hub: MemoryHub) -> None:
        deadline = time.monotonic() + 30
        while nodes[1]._cur < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        hub.kill(1)
        nodes[1].stop()

    nodes = _run(config, options=dict(step_timeout=20.0, dead_after=1.5), during=kill)
    declared = {n.id: [d["neighbor"] for d in n._dead_log] for n in nodes if n.id != 1}
    assert declared == {0: [1], 2: [1], 3: [1], 4: [], 5: [], 6: []}
    assert nodes[2]._dead_log[0]["parts"] == [[2, 4, 5], [3, 6], [0]]
    assert split_parts([tree], {1}) == [[2, 4, 5], [3, 6], [0]]
    assert all(n._drops["timeout"] == 0 for n in nodes)
    assert all(n.result().final.step == config.steps for n in nodes if n.id != 1)
    assert all(torch.isfinite(n._x).all() for n in nodes if n.id != 1)


def test_run_id_ignores_machine_local_fields_but_not_the_run() -> None:
    """Device and engine may differ per node; any training option changes the id."""
    g = topology.build("binary-tree", 5)
    a = run_id(_config(), g)
    assert a == run_id(_config(engine="batched"), g)
    assert a != run_id(_config(lr=0.2), g)
    assert a != run_id(_config(), topology.build("chain", 5))
    assert a != run_id(_config(), g, "other-name")
    # nodes that would relay from different initial models refuse each other
    assert run_id(_config(), g, "", "0a1b2c3d") != run_id(_config(), g, "", "0a1b2c3e")
