"""Tests for relayfl.topology: constructors, spanning trees, metrics and errors.

Invariants I1-I3 and I8 refer to docs/algorithm.md section 7; delay corrections to section 1.8.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from networkx.algorithms.tree.mst import SpanningTreeIterator

from relayfl import topology
from relayfl.errors import ConfigError, NotATreeError, TopologyError

GRAPHS: dict[str, Callable[[], nx.Graph]] = {
    "chain-16": lambda: topology.chain(16),
    "binary-tree-16": lambda: topology.binary_tree(16),
    "star-16": lambda: topology.star(16),
    "ring-16": lambda: topology.ring(16),
    "tree-16": lambda: topology.tree(16),
    "fully-connected-6": lambda: topology.fully_connected(6),
    "social-network": topology.social_network,
    "chain-2": lambda: topology.chain(2),
    "chain-1": lambda: topology.chain(1),
}


def _edges(graph: nx.Graph) -> set[tuple[int, int]]:
    """Undirected edges as sorted pairs."""
    return {(min(u, v), max(u, v)) for u, v in graph.edges()}


def _reference_spanning_tree(graph: nx.Graph, root: int) -> set[tuple[int, int]]:
    """Section 2.4 definition: union of the lexicographically smallest shortest paths."""
    edges: set[tuple[int, int]] = set()
    for v in graph.nodes:
        path = sorted(nx.all_shortest_paths(graph, root, v))[0]
        edges.update((min(a, b), max(a, b)) for a, b in itertools.pairwise(path))
    return edges


def _random_connected(seed: int, n: int, extra: int) -> nx.Graph:
    """A random connected graph on 0..n-1: a random tree plus ``extra`` random edges."""
    rng = random.Random(seed)
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    for v in range(1, n):
        graph.add_edge(v, rng.randrange(v))
    while graph.number_of_edges() < n - 1 + extra:
        u, v = rng.sample(range(n), 2)
        graph.add_edge(u, v)
    return graph


# ---------------------------------------------------------------------------- constructors


def test_binary_tree_matches_paper_n16() -> None:
    """I1: binary tree of 16 has 15 edges, diameter 6, max degree 3, leaves {0, 8..15}."""
    graph = topology.require_tree(topology.binary_tree(16))
    assert graph.number_of_edges() == 15
    assert nx.is_connected(graph)
    assert topology.diameter(graph) == 6
    assert topology.max_degree(graph) == 3
    assert {v for v in graph if graph.degree(v) == 1} == {0, *range(8, 16)}
    assert topology.neighbors(graph, 0) == [1]
    assert topology.neighbors(graph, 1) == [0, 2, 3]
    assert topology.neighbors(graph, 7) == [3, 14, 15]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 31], ids=lambda n: f"n{n}")
def test_binary_tree_reverse_is_mirror_image(n: int) -> None:
    """I1: the reversed binary tree is the image of the forward one under w -> n-1-w."""
    forward = topology.binary_tree(n)
    mirrored = {tuple(sorted((n - 1 - u, n - 1 - v))) for u, v in forward.edges()}
    reverse = topology.binary_tree(n, reverse=True)
    assert _edges(reverse) == mirrored
    assert sorted(reverse.nodes) == list(range(n))
    if n >= 2:
        assert topology.neighbors(reverse, n - 1) == [n - 2]


def test_double_binary_trees_degrees_n16() -> None:
    """I2: deg_A + deg_B is 4 for workers 1..14 and 2 for 0 and 15; none internal in both."""
    a, b = topology.double_binary_trees(16)
    total = [a.degree(i) + b.degree(i) for i in range(16)]
    assert total == [2] + [4] * 14 + [2]
    internal_a = {i for i in range(16) if a.degree(i) > 1}
    internal_b = {i for i in range(16) if b.degree(i) > 1}
    assert internal_a == set(range(1, 8))
    assert internal_b == set(range(8, 15))
    assert not internal_a & internal_b


def test_tree_layers_n16() -> None:
    """Section 2.1: the 3-tree of 16 has root degree 3, internal degree 3, diameter 6."""
    graph = topology.require_tree(topology.tree(16))
    assert topology.neighbors(graph, 0) == [1, 2, 3]
    assert topology.neighbors(graph, 1) == [0, 4, 5]
    assert topology.neighbors(graph, 4) == [1, 10, 11]
    assert topology.diameter(graph) == 6
    assert topology.max_degree(graph) == 3
    assert topology.require_tree(topology.tree(9, max_degree=2)).number_of_edges() == 8


@pytest.mark.parametrize(
    ("n", "edges"),
    [(1, set()), (2, {(0, 1)}), (3, {(0, 1), (1, 2), (0, 2)})],
    ids=["n1", "n2", "n3"],
)
def test_ring_small_sizes_have_no_multi_edges(n: int, edges: set[tuple[int, int]]) -> None:
    """Ring of 1 is one node, of 2 a single edge, of 3 a triangle."""
    graph = topology.ring(n)
    assert sorted(graph.nodes) == list(range(n))
    assert _edges(graph) == edges


@pytest.mark.parametrize(
    ("build", "edges", "diam"),
    [
        (topology.chain, 15, 15),
        (topology.ring, 16, 8),
        (topology.star, 15, 2),
        (topology.fully_connected, 120, 1),
    ],
    ids=["chain", "ring", "star", "fully-connected"],
)
def test_constructor_shape_n16(build: Callable[[int], nx.Graph], edges: int, diam: int) -> None:
    """Section 2.1: edge counts and diameters of the static topologies for n = 16."""
    graph = topology.validate(build(16))
    assert graph.number_of_edges() == edges
    assert topology.diameter(graph) == diam


def test_social_network_matches_paper() -> None:
    """Section 2.4: Davis graph has 32 nodes, 89 edges, diameter 4, max degree 14."""
    graph = topology.social_network()
    assert sorted(graph.nodes) == list(range(32))
    assert graph.number_of_edges() == 89
    assert topology.diameter(graph) == 4
    assert topology.max_degree(graph) == 14
    assert graph.nodes[0]["name"] == "Evelyn Jefferson"
    assert graph.nodes[18]["name"] == "E1"
    davis = nx.convert_node_labels_to_integers(nx.davis_southern_women_graph())
    assert _edges(graph) == _edges(davis)


# ---------------------------------------------------------------------------- spanning trees


def test_spanning_tree_matches_sorted_paths_on_social_network() -> None:
    """Section 2.4: BFS tree equals the sorted(all_shortest_paths) tree for all 32 roots."""
    graph = topology.social_network()
    for root in range(32):
        result = topology.spanning_tree(graph, root)
        assert _edges(result) == _reference_spanning_tree(graph, root), root


@pytest.mark.parametrize("seed", range(6), ids=lambda s: f"seed{s}")
def test_spanning_tree_matches_sorted_paths_on_random_graphs(seed: int) -> None:
    """Section 2.4: BFS tree equals the sorted(all_shortest_paths) tree for every root."""
    graph = _random_connected(seed, n=12, extra=10)
    for root in range(12):
        assert _edges(topology.spanning_tree(graph, root)) == _reference_spanning_tree(graph, root)


def test_spanning_trees_of_social_network_match_measurements() -> None:
    """Section 2.4: all 32 trees have diameter 5-7, max degree 6-14, 1+mean delay 2.88-3.83."""
    graph = topology.social_network()
    trees = [topology.require_tree(topology.spanning_tree(graph, r)) for r in range(32)]
    diameters = [topology.diameter(t) for t in trees]
    degrees = [topology.max_degree(t) for t in trees]
    corrections = [topology.delay_correction(t) for t in trees]
    assert min(diameters) == 5 and max(diameters) == 7
    assert min(degrees) == 6 and max(degrees) == 14
    assert min(corrections) == pytest.approx(2.88, abs=0.005)  # 2.875, printed as 2.88
    assert max(corrections) == pytest.approx(3.83, abs=0.005)
    assert all(2.875 <= c <= 3.83 for c in corrections)


def test_spanning_tree_keeps_node_attributes() -> None:
    """Node attributes such as "address" survive the reduction to a tree."""
    graph = topology.ring(4)
    nx.set_node_attributes(graph, {i: f"host:{9000 + i}" for i in range(4)}, "address")
    result = topology.spanning_tree(graph, 2)
    assert result.nodes[3]["address"] == "host:9003"
    assert _edges(result) == {(1, 2), (2, 3), (0, 1)}


def test_minimum_diameter_spanning_tree_uses_edge_midpoint_when_vertex_trees_fail() -> None:
    """A square 0-3-2-5 with leaves on corners 2 and 5: every vertex tree has diameter 4,
    the tree rooted at the midpoint of edge (2, 5) has diameter 3."""
    graph = nx.Graph([(0, 3), (3, 2), (2, 5), (5, 0), (2, 1), (5, 4)])
    vertex_diameters = [topology.diameter(topology.spanning_tree(graph, r)) for r in range(6)]
    assert min(vertex_diameters) == 4  # [5, 4, 4, 5, 4, 4]
    result = topology.require_tree(topology.minimum_diameter_spanning_tree(graph))
    assert topology.diameter(result) == 3
    assert _edges(result) == {(2, 5), (1, 2), (2, 3), (4, 5), (0, 5)}
    assert min(nx.diameter(t) for t in SpanningTreeIterator(graph)) == 3


@pytest.mark.parametrize(("n", "extra"), [(6, 3), (7, 4), (7, 6), (8, 3)], ids=str)
def test_minimum_diameter_spanning_tree_matches_brute_force(n: int, extra: int) -> None:
    """Diameter equals the minimum over all spanning trees of small random graphs."""
    for seed in range(4):
        graph = _random_connected(100 * n + 10 * extra + seed, n=n, extra=extra)
        best = min(nx.diameter(t) for t in SpanningTreeIterator(graph))
        result = topology.require_tree(topology.minimum_diameter_spanning_tree(graph))
        assert _edges(result) <= _edges(graph)
        assert topology.diameter(result) == best, sorted(graph.edges())


def test_minimum_diameter_spanning_tree_beats_every_bfs_tree_on_social_network() -> None:
    """On the Davis graph the min-diameter tree is no worse than any of the 32 BFS trees."""
    graph = topology.social_network()
    result = topology.require_tree(topology.minimum_diameter_spanning_tree(graph))
    assert topology.diameter(result) == 5
    assert all(
        topology.diameter(result) <= topology.diameter(topology.spanning_tree(graph, r))
        for r in range(32)
    )


@pytest.mark.parametrize("name", ["binary-tree", "chain", "star"], ids=str)
def test_minimum_diameter_spanning_tree_returns_tree_unchanged(name: str) -> None:
    """A graph that is already a tree is its own (only) spanning tree."""
    graph = topology.build(name, 9)[0]
    assert _edges(topology.minimum_diameter_spanning_tree(graph)) == _edges(graph)


# ---------------------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: topology.chain(16), 5.375),
        (lambda: topology.binary_tree(16), 3.3203),
        (lambda: topology.tree(16), 3.2578),  # 3.258 in section 1.8
        (lambda: topology.star(16), 1.8203),
        (lambda: topology.chain(2), 1.0),
        (lambda: topology.chain(1), 1.0),
    ],
    ids=["chain-16", "binary-tree-16", "tree-16", "star-16", "n2", "n1"],
)
def test_delay_correction_matches_paper(build: Callable[[], nx.Graph], expected: float) -> None:
    """Section 1.8 / I8: 1 + mean delay for the paper's topologies."""
    assert topology.delay_correction(build()) == pytest.approx(expected, abs=1e-4)


def test_binary_tree_delay_correction_inverts_consensus_value() -> None:
    """I8: binary-tree-16 consensus value 0.30118 is 1 / (1 + mean delay)."""
    assert 1 / topology.delay_correction(topology.binary_tree(16)) == pytest.approx(
        0.30118, abs=1e-5
    )


def test_distances_and_delays_on_chain() -> None:
    """Section 1.3: on a chain d_ik = |i - k| and delay = max(d - 1, 0)."""
    index = np.arange(7)
    expected = np.abs(index[:, None] - index[None, :])
    d = topology.distances(topology.chain(7))
    assert d.dtype == np.int64 and d.shape == (7, 7)
    np.testing.assert_array_equal(d, expected)
    np.testing.assert_array_equal(topology.delays(topology.chain(7)), np.maximum(expected - 1, 0))


@pytest.mark.parametrize("name", list(GRAPHS), ids=str)
def test_distances_match_networkx(name: str) -> None:
    """All-pairs hop distances equal networkx's shortest path lengths."""
    graph = GRAPHS[name]()
    d = topology.distances(graph)
    for i, row in nx.all_pairs_shortest_path_length(graph):
        for k, value in row.items():
            assert d[i, k] == value


@pytest.mark.parametrize("name", list(GRAPHS), ids=str)
def test_gossip_weights_invariants(name: str) -> None:
    """I3: MH matrix is symmetric, stochastic, non-negative, supported on edges + diagonal."""
    graph = GRAPHS[name]()
    W = topology.gossip_weights(graph)
    n = graph.number_of_nodes()
    assert W.dtype == np.float64 and W.shape == (n, n)
    np.testing.assert_allclose(W, W.T)
    np.testing.assert_allclose(W.sum(axis=1), np.ones(n), atol=1e-12)
    assert (W >= 0).all()
    support = nx.to_numpy_array(graph, nodelist=range(n)) + np.eye(n)
    np.testing.assert_array_equal(W > 0, support > 0)


def test_gossip_weights_ring_all_one_third() -> None:
    """I3 / section 2.5: on a ring every nonzero entry is 1/3."""
    W = topology.gossip_weights(topology.ring(8))
    np.testing.assert_allclose(W[W > 0], 1 / 3)
    assert (W > 0).sum() == 3 * 8


def test_gossip_weights_binary_tree_values() -> None:
    """Section 2.5: binary tree edges 1/4, internal self 1/4, leaf self 3/4."""
    graph = topology.binary_tree(16)
    W = topology.gossip_weights(graph)
    for u, v in graph.edges():
        assert W[u, v] == pytest.approx(1 / 4)
    for i in range(16):
        assert W[i, i] == pytest.approx(3 / 4 if graph.degree(i) == 1 else 1 / 4)


def test_gossip_weights_chain_and_star_self_weights() -> None:
    """Section 2.5: chain ends keep 2/3; the hub of a 32-star keeps 1/32."""
    W = topology.gossip_weights(topology.chain(5))
    assert W[0, 0] == pytest.approx(2 / 3) and W[4, 4] == pytest.approx(2 / 3)
    assert topology.gossip_weights(topology.star(32))[0, 0] == pytest.approx(1 / 32)


def test_gossip_weights_uniform_weight() -> None:
    """Section 2.5: weight=w puts w on every edge and 1 - deg*w on the diagonal."""
    w = 1 / 3 - 0.01
    graph = topology.binary_tree(16)
    W = topology.gossip_weights(graph, weight=w)
    for u, v in graph.edges():
        assert W[u, v] == w
    for i in range(16):
        assert W[i, i] == pytest.approx(1 - graph.degree(i) * w)
    np.testing.assert_allclose(
        topology.gossip_weights(topology.ring(5), weight=1 / 3)[0, :2], 1 / 3
    )


@pytest.mark.parametrize("weight", [0.4, 0.0, -0.1], ids=["too-large", "zero", "negative"])
def test_gossip_weights_bad_weight_raises(weight: float) -> None:
    """A weight that makes a self-weight negative (or is not positive) is a ConfigError."""
    with pytest.raises(ConfigError, match="1/max_degree"):
        topology.gossip_weights(topology.binary_tree(16), weight=weight)


@pytest.mark.parametrize("name", list(GRAPHS), ids=str)
def test_edge_index_consistency(name: str) -> None:
    """Directed edges are sorted by (src, dst); rev swaps src/dst and is an involution."""
    graph = GRAPHS[name]()
    src, dst, rev = topology.edge_index(graph)
    e = 2 * graph.number_of_edges()
    assert src.shape == dst.shape == rev.shape == (e,)
    assert src.dtype == dst.dtype == rev.dtype == np.int64
    assert list(zip(src.tolist(), dst.tolist(), strict=True)) == sorted(
        (u, v) for a, b in graph.edges() for u, v in ((a, b), (b, a))
    )
    np.testing.assert_array_equal(rev[rev], np.arange(e))
    np.testing.assert_array_equal(src[rev], dst)
    np.testing.assert_array_equal(dst[rev], src)


def test_edge_index_tree_has_two_n_minus_one_edges() -> None:
    """On a tree e = 2(n-1)."""
    src, _, _ = topology.edge_index(topology.binary_tree(16))
    assert len(src) == 2 * 15


def test_describe_reports_summary() -> None:
    """describe() gives n, edges, diameter, max degree, tree flag and delay correction."""
    info = topology.describe(topology.binary_tree(16))
    assert info == {
        "n": 16,
        "edges": 15,
        "diameter": 6,
        "max_degree": 3,
        "is_tree": True,
        "delay_correction": pytest.approx(3.3203, abs=1e-4),
    }
    assert topology.describe(topology.ring(5))["is_tree"] is False


# ---------------------------------------------------------------------------- build and files


@pytest.mark.parametrize("name", [n for n in topology.NAMES if n != "social-network"], ids=str)
def test_build_named_topologies(name: str) -> None:
    """Every name builds validated graphs on n workers; double trees give two."""
    graphs = topology.build(name, 16)
    assert len(graphs) == (2 if name == "double-binary-trees" else 1)
    for graph in graphs:
        assert sorted(topology.validate(graph).nodes) == list(range(16))


@pytest.mark.parametrize("spanning", ["bfs", "min-diameter"], ids=str)
@pytest.mark.parametrize("name", ["ring", "fully-connected", "social-network"], ids=str)
def test_build_spanning_gives_trees(name: str, spanning: str) -> None:
    """spanning="bfs" or "min-diameter" reduces every graph to a spanning tree."""
    num_nodes = 32 if name == "social-network" else 10
    (graph,) = topology.build(name, num_nodes, root=3, spanning=spanning)
    assert topology.require_tree(graph).number_of_nodes() == num_nodes


def test_build_bfs_uses_root() -> None:
    """The bfs spanning tree of a complete graph is the star around the root."""
    (graph,) = topology.build("fully-connected", 6, root=4, spanning="bfs")
    assert topology.neighbors(graph, 4) == [0, 1, 2, 3, 5]


def test_build_social_network_accepts_none_or_32() -> None:
    """social-network has 32 workers; num_nodes may be None or 32."""
    assert topology.build("social-network", None)[0].number_of_nodes() == 32
    assert topology.build("social-network", 32)[0].number_of_edges() == 89


def test_load_graph_edge_list(tmp_path: Path) -> None:
    """A 'u v' edge list with comments and blank lines loads as a validated graph."""
    path = tmp_path / "graph.txt"
    path.write_text("# ring of 4\n0 1\n\n1 2  # inline comment\n2 3\n3 0\n")
    graph = topology.load_graph(path)
    assert sorted(graph.nodes) == [0, 1, 2, 3]
    assert _edges(graph) == {(0, 1), (1, 2), (2, 3), (0, 3)}
    (built,) = topology.build(str(path), None)
    assert _edges(built) == _edges(graph)


def test_load_graph_json_with_addresses(tmp_path: Path) -> None:
    """JSON with edges and node addresses stores the address as a node attribute."""
    path = tmp_path / "graph.json"
    nodes = [{"id": i, "address": f"10.0.0.{i}:9000"} for i in range(3)]
    path.write_text(json.dumps({"nodes": nodes, "edges": [[0, 1], [1, 2]]}))
    graph = topology.load_graph(path)
    assert _edges(graph) == {(0, 1), (1, 2)}
    assert graph.nodes[2]["address"] == "10.0.0.2:9000"
    (built,) = topology.build(str(path), 3, spanning="bfs")
    assert built.nodes[0]["address"] == "10.0.0.0:9000"


def test_load_graph_json_without_nodes(tmp_path: Path) -> None:
    """JSON with only an edge list is enough."""
    path = tmp_path / "graph.json"
    path.write_text('{"edges": [[0, 1], [0, 2]]}')
    assert _edges(topology.load_graph(path)) == {(0, 1), (0, 2)}


# ---------------------------------------------------------------------------- errors


def test_validate_disconnected_raises() -> None:
    """A disconnected graph names the component count, the cut-off nodes and the fix."""
    graph = topology.chain(3)
    graph.add_edge(3, 4)
    with pytest.raises(TopologyError, match=r"2 components, nodes \[3, 4\].*add edges"):
        topology.validate(graph)


def test_validate_self_loop_raises() -> None:
    """A self-loop names the node and how to remove it."""
    graph = topology.chain(4)
    graph.add_edge(2, 2)
    with pytest.raises(TopologyError, match=r"self-loops at nodes \[2\].*selfloop_edges"):
        topology.validate(graph)


@pytest.mark.parametrize(
    "graph",
    [nx.davis_southern_women_graph(), nx.Graph([(1, 2), (2, 3)]), nx.Graph([(0, 1.5)])],
    ids=["strings", "one-based", "float"],
)
def test_validate_non_integer_labels_raises(graph: nx.Graph) -> None:
    """Nodes other than 0..n-1 point to convert_node_labels_to_integers."""
    with pytest.raises(TopologyError, match="convert_node_labels_to_integers"):
        topology.validate(graph)


def test_validate_empty_graph_raises() -> None:
    """A graph with no nodes has fewer than 1 worker."""
    with pytest.raises(TopologyError, match="fewer than 1 worker"):
        topology.validate(nx.Graph())


@pytest.mark.parametrize(
    "graph", [nx.DiGraph([(0, 1)]), nx.MultiGraph([(0, 1)]), [(0, 1)]], ids=str
)
def test_validate_wrong_graph_type_raises(graph: object) -> None:
    """Directed graphs, multigraphs and non-graphs are rejected with a conversion hint."""
    with pytest.raises(TopologyError, match="pass|build"):
        topology.validate(graph)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "build", [topology.chain, topology.ring, topology.star, topology.binary_tree], ids=str
)
def test_constructor_zero_nodes_raises(build: Callable[[int], nx.Graph]) -> None:
    """Constructors refuse n = 0 with the fix."""
    with pytest.raises(TopologyError, match=r"fewer than 1 worker; pass n >= 1"):
        build(0)


def test_tree_max_degree_too_small_raises() -> None:
    """A tree with max degree 1 cannot grow past two workers."""
    with pytest.raises(ConfigError, match="max_degree"):
        topology.tree(5, max_degree=1)


@pytest.mark.parametrize(
    "graph", [topology.ring(16), topology.fully_connected(4)], ids=["ring", "fully-connected"]
)
def test_require_tree_with_cycle_raises(graph: nx.Graph) -> None:
    """A graph with a cycle names the spanning-tree fix and the gossip alternative."""
    n, m = graph.number_of_nodes(), graph.number_of_edges()
    with pytest.raises(NotATreeError, match="spanning_tree") as info:
        topology.require_tree(graph)
    assert f"graph has {m} edges on {n} nodes, so it has a cycle" in str(info.value)
    assert "--algorithm dpsgd" in str(info.value)
    assert isinstance(info.value, TopologyError | ValueError)


def test_build_unknown_name_raises() -> None:
    """An unknown name lists the valid names."""
    with pytest.raises(ConfigError, match="unknown topology 'rng'.*binary-tree"):
        topology.build("rng", 16)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "social-network", "num_nodes": 16}, "num_nodes=32"),
        ({"name": "chain", "num_nodes": None}, "needs num_nodes"),
        ({"name": "chain", "num_nodes": 0}, "num_nodes must be an int >= 1"),
        ({"name": "ring", "num_nodes": 8, "spanning": "kruskal"}, "bfs, min-diameter"),
        ({"name": "ring", "num_nodes": 8, "spanning": "bfs", "root": 8}, r"root in 0\.\.7"),
    ],
    ids=["social-size", "no-size", "zero-size", "bad-spanning", "bad-root"],
)
def test_build_bad_options_raise(kwargs: dict[str, object], match: str) -> None:
    """Options that cannot run are ConfigErrors naming the fix."""
    with pytest.raises(ConfigError, match=match):
        topology.build(**kwargs)  # type: ignore[arg-type]


def test_build_file_size_mismatch_raises(tmp_path: Path) -> None:
    """A file with 3 workers and num_nodes=4 says which count to pass."""
    path = tmp_path / "chain.txt"
    path.write_text("0 1\n1 2\n")
    with pytest.raises(ConfigError, match="pass num_nodes=3 or None"):
        topology.build(str(path), 4)


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("bad.txt", "0 1\n1 x\n", r"bad\.txt:2: expected 'u v'"),
        ("three.txt", "0 1 2\n", "expected 'u v'"),
        ("gap.txt", "0 1\n1 3\n", "convert_node_labels_to_integers"),
        ("split.txt", "0 1\n2 3\n", "2 components"),
        ("bad.json", '{"edges": [[0, 1], [1]]}', r"pair \[u, v\]"),
        ("broken.json", '{"edges": [[0, 1]', "invalid JSON"),
        ("noedges.json", '{"nodes": [0, 1]}', '"edges" list'),
        ("strid.json", '{"edges": [["a", "b"]]}', "integer worker id"),
        ("unlisted.json", '{"nodes": [{"id": 0}, {"id": 1}], "edges": [[0, 2]]}', "node 2"),
    ],
    ids=[
        "token",
        "three-columns",
        "gap",
        "disconnected",
        "short-edge",
        "json",
        "no-edges",
        "string-id",
        "unlisted-node",
    ],
)
def test_load_graph_malformed_raises(tmp_path: Path, name: str, text: str, match: str) -> None:
    """Malformed files raise TopologyError naming the file, the problem and the fix."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TopologyError, match=match):
        topology.load_graph(path)


def test_load_graph_missing_file_raises(tmp_path: Path) -> None:
    """A missing file says so and lists the built-in names."""
    with pytest.raises(TopologyError, match="does not exist.*binary-tree"):
        topology.load_graph(tmp_path / "nope.txt")


def test_spanning_tree_bad_root_raises() -> None:
    """A root outside 0..n-1 is a ConfigError naming the valid range."""
    with pytest.raises(ConfigError, match=r"pick a root in 0\.\.3"):
        topology.spanning_tree(topology.ring(4), root=4)


def test_neighbors_unknown_worker_raises() -> None:
    """Asking for the neighbours of a worker outside the graph names the valid range."""
    with pytest.raises(TopologyError, match=r"0\.\.3"):
        topology.neighbors(topology.chain(4), 7)
