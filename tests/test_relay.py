"""RelaySum mechanism: the invariants of docs/algorithm.md section 7 (I4-I11) on numbers alone."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

from relayfl import relay, topology
from relayfl.algorithms import Gossip, make_mixer
from relayfl.errors import ConfigError, NotATreeError

TREES = {
    "chain-16": lambda: topology.chain(16),
    "binary-tree-16": lambda: topology.binary_tree(16),
    "star-16": lambda: topology.star(16),
    "binary-tree-7": lambda: topology.binary_tree(7),
}


def _values(steps: int, n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(
        steps, n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


@pytest.mark.parametrize("make", TREES.values(), ids=TREES.keys())
def test_ball_counts_and_sums_match_closed_form(make) -> None:
    """I4: C_i = |{k: d_ik <= t+1}| and S_i = sum_{d_ik <= t+1} v_k^(t - delta_ik)."""
    tree = make()
    n, d, T = tree.number_of_nodes(), 3, 20
    dist = torch.as_tensor(topology.distances(tree))
    delta = (dist - 1).clamp(min=0)
    vs = _values(T, n, d)
    rs = relay.RelaySum(tree, normalization="sum")
    for t in range(T):
        S = rs.step(vs[t]) * n
        ball = dist <= t + 1  # [n, n]
        assert torch.equal(rs.last_counts[0], ball.sum(1).to(torch.float64))
        expected = torch.zeros(n, d, dtype=torch.float64)
        for i in range(n):
            for k in range(n):
                if ball[i, k]:
                    expected[i] += vs[t - int(delta[i, k]), k]
        torch.testing.assert_close(S, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("make", "rounds"),
    [(TREES["chain-16"], 15), (TREES["binary-tree-16"], 6), (TREES["star-16"], 2)],
    ids=["chain-16", "binary-tree-16", "star-16"],
)
def test_exact_average_from_round_diameter_on(make, rounds: int) -> None:
    """I5: constant inputs are averaged exactly from round D on (step D-1), not before."""
    tree = make()
    n = tree.number_of_nodes()
    assert topology.diameter(tree) == rounds
    v = torch.randn(n, 4, dtype=torch.float64)
    rs = relay.RelaySum(tree, normalization="counts")
    for t in range(rounds + 3):
        avg = rs.step(v)
        exact = torch.allclose(avg, v.mean(0).expand(n, -1), rtol=0, atol=1e-12)
        assert exact == (t >= rounds - 1), f"step {t}"


@pytest.mark.parametrize("make", TREES.values(), ids=TREES.keys())
@pytest.mark.parametrize("fill", ["initial", "latest"])
def test_world_size_fill_matches_delayed_closed_form(make, fill: str) -> None:
    """I6: x_i^(t+1) = (1/n) sum_k x_k^(t+1/2 - delta_ik), x0 before time (fill=initial);
    I7: from step D-1 on every fill gives the same map."""
    tree = make()
    n, d, T = tree.number_of_nodes(), 2, 25
    delta = np.maximum(topology.distances(tree) - 1, 0)
    x0 = torch.randn(d, dtype=torch.float64)
    vs = _values(T, n, d, seed=1)
    rs = relay.RelaySum(tree, normalization="world_size", initial=x0, fill=fill)
    D = topology.diameter(tree)
    for t in range(T):
        out = rs.step(vs[t])
        expected = torch.stack(
            [
                sum((vs[t - delta[i, k], k] if t - delta[i, k] >= 0 else x0) for k in range(n)) / n
                for i in range(n)
            ]
        )
        if fill == "initial" or t >= D - 1:
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("make", "value"),
    [
        (TREES["chain-16"], 0.18605),
        (TREES["binary-tree-16"], 0.30118),
        (TREES["star-16"], 1 / 1.8203),
        (lambda: topology.chain(2), 1.0),
    ],
    ids=["chain-16", "binary-tree-16", "star-16", "n2"],
)
def test_unit_update_converges_to_one_over_one_plus_mean_delay(make, value: float) -> None:
    """I8: one +1 update on every worker ends at consensus 1/(1 + mean delay)."""
    tree = make()
    n = tree.number_of_nodes()
    assert 1 / topology.delay_correction(tree) == pytest.approx(value, abs=1e-4)
    rs = relay.RelaySum(
        tree, normalization="world_size", initial=torch.zeros(1, dtype=torch.float64)
    )
    x = torch.zeros(n, 1, dtype=torch.float64)
    x = rs.step(x + 1)  # the one update, then pure communication
    for _ in range(3000):
        x = rs.step(x)
    torch.testing.assert_close(
        x, torch.full_like(x, 1 / topology.delay_correction(tree)), rtol=0, atol=1e-9
    )
    assert float(x[0]) == pytest.approx(value, abs=5e-5)


def test_two_workers_equal_allreduce_model_averaging() -> None:
    """I10: with n = 2, RelaySGD is exactly all-reduce model averaging."""
    x0 = torch.randn(5, dtype=torch.float64)
    relay_mix = make_mixer("relaysgd", (topology.chain(2),), x0)
    allreduce = make_mixer("allreduce", (topology.fully_connected(2),), x0)
    xs = _values(10, 2, 5, seed=3)
    for t in range(10):
        a = relay_mix.mix(xs[t], xs[t])
        b = allreduce.mix(xs[t], xs[t])
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)  # summation order only


def _quadratics(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, d, generator=g, dtype=torch.float64) / d**0.5 + torch.eye(d)
    b = torch.randn(n, d, generator=g, dtype=torch.float64) * 3  # heterogeneous optima
    H = torch.einsum("nji,njk->ik", A, A)
    x_star = torch.linalg.solve(H, torch.einsum("nji,nj->i", A, b))
    return A, b, x_star


def _run_quadratics(algorithm: str, graph: nx.Graph, steps: int, lr: float) -> float:
    A, b, x_star = _quadratics(graph.number_of_nodes(), 4)
    x = torch.zeros(graph.number_of_nodes(), 4, dtype=torch.float64)
    mixer = make_mixer(algorithm, (graph,), x[0])
    for _ in range(steps):
        grad = torch.einsum("nji,nj->ni", A, torch.einsum("nij,nj->ni", A, x) - b)
        x_half = x - lr * grad
        x = mixer.mix(x, x_half)
    return float((x - x_star).abs().max())


def test_relaysgd_has_no_heterogeneity_bias_but_dpsgd_does() -> None:
    """I11: on heterogeneous quadratics RelaySGD reaches x* exactly, D-PSGD stalls."""
    relay_err = _run_quadratics("relaysgd", topology.chain(8), 3000, 0.1)
    gossip_err = _run_quadratics("dpsgd", topology.ring(8), 3000, 0.1)
    assert relay_err < 1e-9
    assert gossip_err > 1e-2  # measured ~0.17: the biased fixed point x = W(x - lr grad)


@pytest.mark.parametrize("make", TREES.values(), ids=TREES.keys())
@pytest.mark.parametrize("fill", ["initial", "latest"])
@pytest.mark.parametrize("normalization", ["world_size", "counts", "sum"])
def test_one_node_view_equals_stacked_relay(make, fill: str, normalization: str) -> None:
    """The per-node RelayNode and the stacked RelaySum give identical results, with drops."""
    tree = make()
    n, d, T = tree.number_of_nodes(), 3, 12
    x0 = torch.randn(d, dtype=torch.float64)
    init = x0 if normalization == "world_size" else None
    rs = relay.RelaySum(tree, normalization=normalization, initial=init, fill=fill)
    nodes = [
        relay.RelayNode(tree, i, normalization=normalization, initial=init, fill=fill)
        for i in range(n)
    ]
    edges = rs.edge_indices[0]
    gen = torch.Generator().manual_seed(5)
    vs = _values(T, n, d, seed=2)
    for t in range(T):
        keep = torch.rand(len(edges.src), generator=gen) > 0.2  # [e]
        stacked = rs.step(vs[t], keep=keep)
        outbox = [node.send(vs[t, i]) for i, node in enumerate(nodes)]
        for i, node in enumerate(nodes):
            inbox = {}
            for e in range(len(edges.src)):
                if int(edges.dst[e]) == i and bool(keep[e]):
                    inbox[int(edges.src[e])] = outbox[int(edges.src[e])][i]
            torch.testing.assert_close(node.receive(inbox), stacked[i], rtol=0, atol=1e-12)


def test_drop_is_transient_for_model_and_permanent_for_grad() -> None:
    """Section 1.4: a dropped RelaySum/Model message is restored; a Grad one is lost."""
    tree = topology.chain(6)
    n = 6
    v = torch.arange(n, dtype=torch.float64).unsqueeze(-1) + 1  # [n, 1]
    model = relay.RelaySum(tree, normalization="counts")
    grad = relay.RelaySum(tree, normalization="sum")
    e = len(model.edge_indices[0].src)
    grad_total = torch.zeros(n, 1, dtype=torch.float64)
    for t in range(20):
        keep = torch.ones(e, dtype=torch.bool)
        if t == 7:
            keep[0] = False  # the message 0 -> 1 is lost once
        out = model.step(v, keep=keep)
        grad_total += grad.step(v if t == 7 else torch.zeros_like(v), keep=keep)
    torch.testing.assert_close(out, v.mean().expand(n, 1), rtol=0, atol=1e-12)
    # worker 0's update never reached the others: they hold mean minus v_0 / n
    assert float(grad_total[0]) == pytest.approx(float(v.sum()) / n)
    assert float(grad_total[5]) == pytest.approx(float(v.sum() - v[0]) / n)


def test_double_trees_interleave_even_and_odd_indices() -> None:
    """Section 2.2: tree 0 relays the even flat indices, tree 1 the odd ones."""
    a, b = topology.double_binary_trees(8)
    v = torch.randn(8, 6, dtype=torch.float64)
    both = relay.RelaySum((a, b), normalization="counts").step(v)
    even = relay.RelaySum(a, normalization="counts").step(v[:, 0::2])
    odd = relay.RelaySum(b, normalization="counts").step(v[:, 1::2])
    assert torch.equal(both[:, 0::2], even)
    assert torch.equal(both[:, 1::2], odd)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ],
)
def test_sums_are_never_downcast(dtype: torch.dtype, expected: torch.dtype) -> None:
    """Relay sums are at least float32; float64 stays float64."""
    rs = relay.RelaySum(topology.chain(3), normalization="counts")
    assert rs.step(torch.ones(3, 2, dtype=dtype)).dtype == expected


def test_pack_keeps_integer_buffers_local_with_one_warning() -> None:
    """Integer tensors (e.g. num_batches_tracked) are never relayed and warn once."""
    state = {"w": torch.randn(2, 3), "num_batches_tracked": torch.tensor(7), "b": torch.ones(3)}
    with pytest.warns(UserWarning, match="kept local"):
        flat, layout = relay.pack(state)
    assert layout.local == ("num_batches_tracked",)
    assert flat.shape == (9,)
    back = relay.unpack(flat, layout)
    assert torch.equal(back["w"], state["w"]) and torch.equal(back["b"], state["b"])


def test_relay_on_graph_with_cycle_names_the_fix() -> None:
    """A relay on a ring is refused with the spanning-tree fix."""
    with pytest.raises(NotATreeError, match="spanning_tree"):
        relay.RelaySum(topology.ring(5), normalization="counts")
    with pytest.raises(NotATreeError, match="dpsgd"):
        make_mixer("relaysgd", (topology.ring(5),), torch.zeros(2))


def test_world_size_without_initial_is_refused() -> None:
    """world_size normalization needs x0 and says so."""
    with pytest.raises(ConfigError, match="initial=x0"):
        relay.RelaySum(topology.chain(3), normalization="world_size")


def test_gossip_rows_are_convex_and_renormalised_after_drops() -> None:
    """D-PSGD keeps constants fixed, also when neighbour terms are dropped (section 1.4)."""
    mixer = Gossip((topology.ring(6),))
    x = torch.full((6, 3), 2.5, dtype=torch.float64)
    keep = [torch.tensor([True, False] * 6)]
    torch.testing.assert_close(mixer.mix(x, x), x)
    torch.testing.assert_close(mixer.mix(x, x, keep), x)


@pytest.mark.parametrize("trees", [topology.binary_tree(8), topology.double_binary_trees(8)])
@pytest.mark.parametrize("normalization", ["world_size", "counts", "sum"])
def test_reused_buffers_never_leak_into_returned_averages(trees, normalization: str) -> None:
    """RelaySum and RelayNode reuse buffers across steps: an average the caller holds
    keeps its value, and scribbling on it in place does not change the next results."""
    x0 = torch.randn(4, dtype=torch.float64)
    init = x0 if normalization == "world_size" else None
    fill = "latest" if init is not None else "initial"
    kw = {"normalization": normalization, "initial": init, "fill": fill}
    scribbled, clean = relay.RelaySum(trees, **kw), relay.RelaySum(trees, **kw)
    vs = _values(6, 8, 4, seed=3)
    held = []
    for t in range(6):
        out, expected = scribbled.step(vs[t]), clean.step(vs[t])
        assert torch.equal(out, expected), t
        out.mul_(-7.0)  # the caller owns its average
        held.append((out, out.clone()))
    for got, copy in held:
        assert torch.equal(got, copy)  # later steps never wrote into an earlier result
    if isinstance(trees, tuple):
        return
    stacked = relay.RelaySum(trees, **kw)
    nodes = [relay.RelayNode(trees, i, **kw) for i in range(8)]
    for t in range(6):
        box = [node.send(vs[t, i]) for i, node in enumerate(nodes)]
        outs = [
            node.receive({j: box[j][i] for j in node.neighbors}) for i, node in enumerate(nodes)
        ]
        torch.testing.assert_close(torch.stack(outs), stacked.step(vs[t]), rtol=0, atol=1e-12)
        for o in outs:
            o.fill_(float("nan"))  # must not reach the next step's fill or messages
