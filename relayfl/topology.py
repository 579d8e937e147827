"""Topologies: graph constructors, spanning trees, hop distances, delays and gossip weights.

A topology is a plain undirected :class:`networkx.Graph` whose nodes are the workers
``0..n-1``. Constructors (:func:`chain`, :func:`binary_tree`, ...) follow the numbering of
the RelaySum paper code (docs/algorithm.md section 2). :func:`build` maps the kebab-case names
used on the CLI and in Flower's run config to graphs, and also reads graphs from files
(:func:`load_graph`). :func:`validate` and :func:`require_tree` check a graph at the
boundary; the metrics (:func:`distances`, :func:`delays`, :func:`delay_correction`,
:func:`gossip_weights`, :func:`edge_index`) turn a graph into the arrays the relay and the
gossip baselines consume.

This module is part of the pure layer: it imports only numpy, networkx and the standard
library, and never reads a config object.
"""

from __future__ import annotations

import json
import os
from collections import deque
from os import PathLike
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import numpy.typing as npt

from relayfl.errors import ConfigError, NotATreeError, TopologyError

__all__ = [
    "NAMES",
    "SPANNING_METHODS",
    "binary_tree",
    "build",
    "chain",
    "delay_correction",
    "delays",
    "describe",
    "diameter",
    "distances",
    "double_binary_trees",
    "edge_index",
    "exponential",
    "fully_connected",
    "gossip_weights",
    "load_graph",
    "max_degree",
    "minimum_diameter_spanning_tree",
    "neighbors",
    "require_tree",
    "ring",
    "social_network",
    "spanning_tree",
    "star",
    "tree",
    "validate",
]

#: Topology names accepted by :func:`build` (kebab-case, as on the CLI).
NAMES: tuple[str, ...] = (
    "chain",
    "ring",
    "star",
    "binary-tree",
    "tree",
    "double-binary-trees",
    "fully-connected",
    "social-network",
    "exponential",
)

#: Spanning-tree reductions accepted by :func:`build` (``--spanning-tree`` on the CLI).
SPANNING_METHODS: tuple[str, ...] = ("bfs", "min-diameter")

#: Number of workers in the Davis southern women graph (:func:`social_network`).
_SOCIAL_NETWORK_SIZE = 32

_TREE_HINT = (
    "a relay needs a spanning tree: pass topology.spanning_tree(graph) or "
    "topology.minimum_diameter_spanning_tree(graph) (CLI: --spanning-tree bfs|min-diameter), "
    "or use --algorithm dpsgd"
)


# --------------------------------------------------------------------------------------
# Constructors (docs/algorithm.md section 2)
# --------------------------------------------------------------------------------------


def _check_n(n: int, name: str) -> int:
    """Return ``n`` if it is a valid worker count for constructor ``name``, else raise."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise TopologyError(
            f"{name}(n={n!r}) needs an int number of workers, got {type(n).__name__}; "
            "pass e.g. n=16"
        )
    if n < 1:
        raise TopologyError(f"{name}(n={n}) has fewer than 1 worker; pass n >= 1")
    return int(n)


def _empty(n: int) -> nx.Graph:
    """Return a graph with nodes ``0..n-1`` in order and no edges."""
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    return graph


def chain(n: int) -> nx.Graph:
    """Return the chain (path) ``0 - 1 - ... - n-1``.

    Parameters
    ----------
    n : int
        Number of workers, at least 1.

    Returns
    -------
    nx.Graph
        ``i <-> i+1`` for ``i < n-1``: diameter ``n-1``, maximum degree 2 (1 for ``n = 2``).

    Raises
    ------
    TopologyError
        If ``n < 1``.

    Notes
    -----
    docs/algorithm.md section 2.1 (``ChainTopology``). RelaySum runs on the chain, which is a
    spanning tree of the ring the gossip baselines use.

    Examples
    --------
    >>> sorted(chain(4).edges())
    [(0, 1), (1, 2), (2, 3)]
    """
    n = _check_n(n, "chain")
    graph = _empty(n)
    graph.add_edges_from((i, i + 1) for i in range(n - 1))
    return graph


def ring(n: int) -> nx.Graph:
    """Return the ring ``i <-> (i ± 1) mod n``.

    Parameters
    ----------
    n : int
        Number of workers, at least 1.

    Returns
    -------
    nx.Graph
        The cycle on ``n`` nodes for ``n >= 3``; one node for ``n = 1`` and a single edge
        (no multi-edge) for ``n = 2``.

    Raises
    ------
    TopologyError
        If ``n < 1``.

    Notes
    -----
    docs/algorithm.md section 2.1 (``RingTopology``), used by the gossip baselines.

    Examples
    --------
    >>> ring(4).number_of_edges(), ring(2).number_of_edges()
    (4, 1)
    """
    n = _check_n(n, "ring")
    graph = _empty(n)
    graph.add_edges_from((i, (i + 1) % n) for i in range(n) if (i + 1) % n != i)
    return graph


def star(n: int) -> nx.Graph:
    """Return the star with hub 0 and leaves ``1..n-1``.

    Parameters
    ----------
    n : int
        Number of workers, at least 1.

    Returns
    -------
    nx.Graph
        ``0 <-> i`` for every ``i >= 1``: diameter 2 for ``n >= 3``.

    Raises
    ------
    TopologyError
        If ``n < 1``.

    Notes
    -----
    docs/algorithm.md section 2.1 (``StarTopology``); used in the appendix simulations.
    """
    n = _check_n(n, "star")
    graph = _empty(n)
    graph.add_edges_from((0, i) for i in range(1, n))
    return graph


def fully_connected(n: int) -> nx.Graph:
    """Return the complete graph on ``n`` workers.

    Parameters
    ----------
    n : int
        Number of workers, at least 1.

    Returns
    -------
    nx.Graph
        Every pair of workers joined by an edge.

    Raises
    ------
    TopologyError
        If ``n < 1``.

    Notes
    -----
    docs/algorithm.md section 2.1; used for all-reduce only.
    """
    n = _check_n(n, "fully_connected")
    graph = _empty(n)
    graph.add_edges_from((i, j) for i in range(n) for j in range(i + 1, n))
    return graph


def exponential(n: int) -> nx.Graph:
    """Return the (static) exponential graph: ``i ~ (i + 2^k) mod n`` for every ``2^k < n``.

    Parameters
    ----------
    n : int
        Number of workers, at least 1.

    Returns
    -------
    nx.Graph
        The union of the peers SGP visits. For ``n = 16`` every worker has the 7
        neighbours ``i ± 1, i ± 2, i ± 4, i + 8``.

    Raises
    ------
    TopologyError
        If ``n < 1``.

    Notes
    -----
    docs/algorithm.md section 2.3. ``sgp`` runs its *time-varying* version (one peer per
    round, ``n`` a power of two) on this topology name; gossip on it uses the static graph.

    Examples
    --------
    >>> exponential(8).degree(0)
    5
    """
    n = _check_n(n, "exponential")
    graph = _empty(n)
    k = 1
    while k < n:
        graph.add_edges_from((i, (i + k) % n) for i in range(n) if (i + k) % n != i)
        k *= 2
    return graph


def binary_tree(n: int, *, reverse: bool = False) -> nx.Graph:
    """Return the binary tree of the paper code (``BinaryTreeTopology``).

    Parameters
    ----------
    n : int
        Number of workers, at least 1.
    reverse : bool (default: False)
        Mirror the tree with ``w -> n-1-w``, as the second of the double binary trees.

    Returns
    -------
    nx.Graph
        Worker 0 connects only to worker 1; every worker ``w >= 1`` has parent ``w // 2``
        and children ``2w, 2w+1`` when these are ``< n``. With ``reverse=True`` worker
        ``n-1`` connects only to ``n-2`` and every other link is mirrored.

    Raises
    ------
    TopologyError
        If ``n < 1``.

    Notes
    -----
    docs/algorithm.md section 2.1 and invariant 1 of section 7: for ``n = 16`` the diameter is
    6, the maximum degree 3 and the leaves are ``{0, 8..15}``.

    Examples
    --------
    >>> sorted(binary_tree(5).edges())
    [(0, 1), (1, 2), (1, 3), (2, 4)]
    >>> sorted(binary_tree(5, reverse=True).edges())
    [(0, 2), (1, 3), (2, 3), (3, 4)]
    """
    n = _check_n(n, "binary_tree")
    graph = _empty(n)
    if reverse:
        graph.add_edges_from((n - 1 - w // 2, n - 1 - w) for w in range(1, n))
    else:
        graph.add_edges_from((w // 2, w) for w in range(1, n))
    return graph


def tree(n: int, *, max_degree: int = 3) -> nx.Graph:
    """Return the balanced tree of the paper code (``TreeTopology``), filled layer by layer.

    Parameters
    ----------
    n : int
        Number of workers, at least 1.
    max_degree : int (default: 3)
        Degree of every internal worker: the root 0 has ``max_degree`` children, every
        other internal worker has a parent and ``max_degree - 1`` children. At least 2.

    Returns
    -------
    nx.Graph
        Worker ``w`` in ``1..max_degree`` hangs off the root; a later worker ``w`` hangs
        off ``1 + (w - max_degree - 1) // (max_degree - 1)``.

    Raises
    ------
    TopologyError
        If ``n < 1``.
    ConfigError
        If ``max_degree < 2``.

    Notes
    -----
    docs/algorithm.md section 2.1 ("3-tree"); for ``n = 16`` and ``max_degree = 3`` the diameter
    is 6 and ``1 + mean delay`` is 3.258 (section 1.8).

    Examples
    --------
    >>> sorted(tree(7).edges())
    [(0, 1), (0, 2), (0, 3), (1, 4), (1, 5), (2, 6)]
    """
    n = _check_n(n, "tree")
    if isinstance(max_degree, bool) or not isinstance(max_degree, int) or max_degree < 2:
        raise ConfigError(
            f"tree max_degree must be an int >= 2, got {max_degree!r}; "
            "use max_degree=3 for the paper's 3-tree or binary_tree(n) for the binary tree"
        )
    k = max_degree
    graph = _empty(n)
    graph.add_edges_from((0 if w <= k else 1 + (w - k - 1) // (k - 1), w) for w in range(1, n))
    return graph


def double_binary_trees(n: int) -> tuple[nx.Graph, nx.Graph]:
    """Return the double binary trees: the binary tree and its mirror image.

    Parameters
    ----------
    n : int
        Number of workers, at least 1.

    Returns
    -------
    tuple[nx.Graph, nx.Graph]
        ``(binary_tree(n), binary_tree(n, reverse=True))``. Tree 0 relays the even flat
        parameter indices ``[0::2]``, tree 1 the odd ones ``[1::2]``.

    Raises
    ------
    TopologyError
        If ``n < 1``.

    Notes
    -----
    docs/algorithm.md section 2.2 and invariant 2 of section 7: for ``n = 16``,
    ``deg_A(i) + deg_B(i)`` is 4 for workers 1..14 and 2 for workers 0 and 15, and no worker
    is internal in both trees.
    """
    n = _check_n(n, "double_binary_trees")
    return binary_tree(n), binary_tree(n, reverse=True)


def social_network() -> nx.Graph:
    """Return the Davis southern women graph relabelled to workers ``0..31``.

    Returns
    -------
    nx.Graph
        32 nodes and 89 edges (bipartite: 18 women, 14 events), diameter 4, maximum degree
        14. Workers ``0..17`` are the women in networkx's listed order, ``18..31`` the
        events ``E1..E14``; the original label is kept in the node attribute ``"name"``.

    Notes
    -----
    docs/algorithm.md section 2.4. The order is the one ``networkx.convert_node_labels_to_integers``
    gives, as in the paper code, so root ``r`` here is root ``r`` of figure 3.
    """
    davis = nx.davis_southern_women_graph()
    names = list(davis.graph["top"]) + list(davis.graph["bottom"])
    index = {name: i for i, name in enumerate(names)}
    graph = nx.Graph()
    for name in names:
        graph.add_node(index[name], name=name, bipartite=davis.nodes[name]["bipartite"])
    graph.add_edges_from(sorted(tuple(sorted((index[u], index[v]))) for u, v in davis.edges()))
    return graph


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _is_int(node: Any) -> bool:
    """Whether ``node`` is an integer label (Python or numpy int, not a bool)."""
    return isinstance(node, int | np.integer) and not isinstance(node, bool)


def _preview(items: list[Any], limit: int = 5) -> str:
    """Format up to ``limit`` items as a short list, noting how many were left out."""
    shown = ", ".join(repr(item) for item in items[:limit])
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"[{shown}]{more}"


def validate(graph: nx.Graph) -> nx.Graph:
    """Check that ``graph`` can serve as a topology and return it unchanged.

    Parameters
    ----------
    graph : nx.Graph
        Candidate topology.

    Returns
    -------
    nx.Graph
        The same object, for chaining.

    Raises
    ------
    TopologyError
        If ``graph`` is not an undirected simple ``networkx.Graph``, has fewer than 1
        worker, has nodes other than exactly ``0..n-1``, has self-loops, or is disconnected.
        Each message names the problem, the offending value and the fix.

    Notes
    -----
    docs/algorithm.md section 2: every worker ``0..n-1`` must reach every other one, or the
    averages of sections 1.2 and 2.5 cannot reach consensus.

    Examples
    --------
    >>> validate(chain(3)).number_of_nodes()
    3
    """
    if not isinstance(graph, nx.Graph):
        raise TopologyError(
            f"topology must be a networkx.Graph, got {type(graph).__name__}; "
            "build one with e.g. topology.chain(n) or networkx.Graph(edges)"
        )
    if graph.is_directed():
        raise TopologyError(
            f"topology must be undirected, got a {type(graph).__name__}; pass graph.to_undirected()"
        )
    if graph.is_multigraph():
        raise TopologyError(
            f"topology must be a simple graph, got a {type(graph).__name__}; "
            "pass networkx.Graph(graph) to merge parallel edges"
        )
    n = graph.number_of_nodes()
    if n < 1:
        raise TopologyError(
            "graph has fewer than 1 worker (0 nodes); add nodes 0..n-1, e.g. use topology.chain(n)"
        )
    bad = [node for node in graph.nodes if not _is_int(node)]
    if bad:
        raise TopologyError(
            f"graph nodes must be the integers 0..{n - 1}, got {_preview(bad)}; "
            "relabel with networkx.convert_node_labels_to_integers(graph)"
        )
    labels = {int(node) for node in graph.nodes}
    if labels != set(range(n)):
        extra = sorted(labels - set(range(n)))
        missing = sorted(set(range(n)) - labels)
        raise TopologyError(
            f"graph nodes must be the integers 0..{n - 1}, got {_preview(extra)} "
            f"instead of {_preview(missing)}; "
            "relabel with networkx.convert_node_labels_to_integers(graph)"
        )
    loops = sorted(int(u) for u, _ in nx.selfloop_edges(graph))
    if loops:
        raise TopologyError(
            f"graph has self-loops at nodes {_preview(loops)}; remove them with "
            "graph.remove_edges_from(networkx.selfloop_edges(graph))"
        )
    components = sorted(
        (sorted(int(v) for v in c) for c in nx.connected_components(graph)),
        key=lambda c: c[0],
    )
    if len(components) > 1:
        cut_off = sorted(v for c in components[1:] for v in c)
        raise TopologyError(
            f"graph is disconnected: {len(components)} components, nodes {_preview(cut_off)} "
            f"are cut off from node 0; add edges joining the components, "
            f"e.g. ({components[0][-1]}, {components[1][0]})"
        )
    return graph


def require_tree(graph: nx.Graph) -> nx.Graph:
    """Check that ``graph`` is a valid topology and a tree, and return it unchanged.

    Parameters
    ----------
    graph : nx.Graph
        Candidate relay topology.

    Returns
    -------
    nx.Graph
        The same object, for chaining.

    Raises
    ------
    TopologyError
        If :func:`validate` rejects ``graph``.
    NotATreeError
        If ``graph`` has a cycle; the message names the fixes (a spanning tree, or a gossip
        algorithm).

    Notes
    -----
    docs/algorithm.md section 1.1: RelaySum avoids double counting only on a tree.

    Examples
    --------
    >>> require_tree(binary_tree(16)).number_of_edges()
    15
    """
    validate(graph)
    n, m = graph.number_of_nodes(), graph.number_of_edges()
    if m != n - 1:
        raise NotATreeError(f"graph has {m} edges on {n} nodes, so it has a cycle; {_TREE_HINT}")
    return graph


# --------------------------------------------------------------------------------------
# Spanning trees (docs/algorithm.md section 2.4)
# --------------------------------------------------------------------------------------


def _adjacency(graph: nx.Graph) -> list[list[int]]:
    """Return sorted neighbour lists of a validated graph, indexed by worker."""
    adj: list[list[int]] = [[] for _ in range(graph.number_of_nodes())]
    for u, v in graph.edges():
        adj[int(u)].append(int(v))
        adj[int(v)].append(int(u))
    for row in adj:
        row.sort()
    return adj


def _bfs(adj: list[list[int]], sources: list[int]) -> tuple[list[int], list[int]]:
    """Lexicographically smallest shortest-path forest from ``sources``.

    Parameters
    ----------
    adj : list[list[int]]
        Sorted neighbour lists.
    sources : list[int]
        Roots, in increasing order; they form layer 0.

    Returns
    -------
    order, parent : list[int], list[int]
        Workers in BFS order (parents before children) and each worker's parent (-1 for a
        source).

    Notes
    -----
    A FIFO queue with sorted neighbour lists visits every layer in the lexicographic order
    of the workers' smallest shortest paths, so the first worker to discover ``v`` is the
    end of the lexicographically smallest shortest path to ``v``'s predecessors. The result
    is the tree of ``sorted(nx.all_shortest_paths(graph, root, v))[0]`` over all ``v``.
    """
    parent = [-2] * len(adj)
    for s in sources:
        parent[s] = -1
    order = list(sources)
    queue = deque(sources)
    while queue:
        u = queue.popleft()
        for w in adj[u]:
            if parent[w] == -2:
                parent[w] = u
                order.append(w)
                queue.append(w)
    return order, parent


def _tree_diameter(order: list[int], parent: list[int]) -> int:
    """Diameter of a rooted tree given in BFS order (parents before children)."""
    height = [0] * len(parent)  # longest downward path from v, over the children seen so far
    longest = [0] * len(parent)  # longest path inside v's subtree, over the children seen
    diam = 0
    for v in reversed(order):  # children before parents
        diam = max(diam, longest[v])
        p = parent[v]
        if p >= 0:
            h = height[v] + 1
            longest[p] = max(longest[p], longest[v], height[p] + h)
            height[p] = max(height[p], h)
    return diam


def _tree_from_parents(graph: nx.Graph, parent: list[int]) -> nx.Graph:
    """Build a tree on ``graph``'s workers (with their attributes) from a parent array."""
    result = nx.Graph()
    result.add_nodes_from((v, dict(graph.nodes[v])) for v in range(len(parent)))
    result.add_edges_from((p, v) for v, p in enumerate(parent) if p >= 0)
    return result


def _check_root(graph: nx.Graph, root: int) -> int:
    """Return ``root`` as an int if it is a worker of ``graph``, else raise ConfigError."""
    n = graph.number_of_nodes()
    if not _is_int(root) or not 0 <= root < n:
        raise ConfigError(
            f"spanning-tree root {root!r} is not a worker of this {n}-node graph; "
            f"pick a root in 0..{n - 1}"
        )
    return int(root)


def spanning_tree(graph: nx.Graph, root: int = 0) -> nx.Graph:
    """Return the shortest-path spanning tree of ``graph`` from ``root`` (paper figure 3).

    Parameters
    ----------
    graph : nx.Graph
        Connected topology on workers ``0..n-1``.
    root : int (default: 0)
        Worker the tree is grown from.

    Returns
    -------
    nx.Graph
        For every worker ``v``, the edges of the lexicographically smallest of all shortest
        ``root -> v`` paths. Node attributes (for example ``"address"``) are kept.

    Raises
    ------
    TopologyError
        If :func:`validate` rejects ``graph``.
    ConfigError
        If ``root`` is not in ``0..n-1``.

    See Also
    --------
    minimum_diameter_spanning_tree : the spanning tree with the smallest diameter.

    Notes
    -----
    docs/algorithm.md section 2.4 (``SocialNetworkTreeTopology``), which defines the tree as the
    union of ``sorted(nx.all_shortest_paths(graph, root, v))[0]``. This function gives the
    same tree in ``O(n + |E|)`` with one breadth-first search that visits neighbours in
    increasing order, instead of enumerating all shortest paths.

    Examples
    --------
    >>> sorted(spanning_tree(ring(4), root=0).edges())
    [(0, 1), (0, 3), (1, 2)]
    """
    validate(graph)
    root = _check_root(graph, root)
    _, parent = _bfs(_adjacency(graph), [root])
    return _tree_from_parents(graph, parent)


def minimum_diameter_spanning_tree(graph: nx.Graph) -> nx.Graph:
    """Return a spanning tree of ``graph`` with the smallest possible diameter.

    Parameters
    ----------
    graph : nx.Graph
        Connected topology on workers ``0..n-1`` (unweighted).

    Returns
    -------
    nx.Graph
        The best of the breadth-first trees rooted at every worker (as
        :func:`spanning_tree`) and at every edge midpoint. A tree rooted at edge ``(u, v)``,
        ``u < v``, contains that edge and hangs every other worker below whichever of ``u``
        and ``v`` is closer, ``u`` on a tie, along lexicographically smallest shortest
        paths. Ties in diameter go to the first candidate in the order: workers ``0..n-1``,
        then edges ``(u, v)`` sorted. A tree is returned as a copy of itself. Node
        attributes are kept.

    Raises
    ------
    TopologyError
        If :func:`validate` rejects ``graph``.

    See Also
    --------
    spanning_tree : the shortest-path tree from a given root.

    Notes
    -----
    docs/algorithm.md sections 1.8 and 2.4: the relay delays grow with tree distances, so a
    small diameter gives fast finite-time averaging (section 7, invariant 5). For an
    unweighted graph the minimum diameter over all spanning trees is twice the absolute
    radius, reached by the shortest-path tree from the absolute 1-center, which lies on a
    worker or on an edge midpoint (Hassin and Tamir, 1995). The function computes that
    radius from all hop distances, then scans the candidates in tie-break order and stops at
    the first whose diameter meets it: ``O(n |E|)`` for the distances plus ``O(n + |E|)``
    per candidate scanned.

    Examples
    --------
    >>> diameter(minimum_diameter_spanning_tree(ring(6)))
    5
    """
    validate(graph)
    n = graph.number_of_nodes()
    if graph.number_of_edges() == n - 1:
        return _tree_from_parents(graph, _bfs(_adjacency(graph), [0])[1])
    adj = _adjacency(graph)
    dist = _distance_matrix(adj)  # [n, n]
    edges = sorted((min(int(u), int(v)), max(int(u), int(v))) for u, v in graph.edges())
    us = np.array([u for u, _ in edges], dtype=np.int64)
    vs = np.array([v for _, v in edges], dtype=np.int64)
    # twice the eccentricity of each candidate centre: workers, then edge midpoints
    bound_vertex = 2 * dist.max(axis=1)  # [n]
    bound_edge = 2 * np.minimum(dist[us], dist[vs]).max(axis=1) + 1  # [|E|]
    target = int(min(bound_vertex.min(), bound_edge.min()))  # twice the absolute radius
    for r in range(n):
        order, parent = _bfs(adj, [r])
        diam = target if bound_vertex[r] == target else _tree_diameter(order, parent)
        if diam == target:
            return _tree_from_parents(graph, parent)
    for k, (u, v) in enumerate(edges):
        order, parent = _bfs(adj, [u, v])
        parent[v] = u
        diam = target if bound_edge[k] == target else _tree_diameter(order, parent)
        if diam == target:
            return _tree_from_parents(graph, parent)
    raise AssertionError("unreachable: the absolute 1-center tree meets the bound")


# --------------------------------------------------------------------------------------
# Files and names
# --------------------------------------------------------------------------------------


def _parse_edge_list(text: str, source: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Parse ``u v`` lines (``#`` comments, a lone ``u`` declares a node)."""
    nodes: list[int] = []
    edges: list[tuple[int, int]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        tokens = raw.split("#", 1)[0].split()
        if not tokens:
            continue
        try:
            values = [int(token) for token in tokens]
        except ValueError:
            values = []
        if len(values) not in (1, 2):
            raise TopologyError(
                f"{source}:{number}: expected 'u v' with integer workers, got {raw.strip()!r}; "
                "write one edge per line, e.g. '0 1', with '#' for comments"
            )
        nodes.extend(values)
        if len(values) == 2:
            edges.append((values[0], values[1]))
    return nodes, edges


def _json_int(value: Any, what: str, source: str) -> int:
    """Return ``value`` if it is a JSON integer, else raise TopologyError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TopologyError(
            f"{source}: {what} must be an integer worker id, got {value!r}; "
            'use ids 0..n-1, e.g. {"edges": [[0, 1], [1, 2]]}'
        )
    return value


def _parse_json(
    text: str, source: str
) -> tuple[list[int], list[tuple[int, int]], dict[int, dict[str, Any]]]:
    """Parse ``{"edges": [[u, v], ...], "nodes": [{"id": i, "address": ...}, ...]}``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise TopologyError(
            f"{source}: invalid JSON ({err.msg} at line {err.lineno} column {err.colno}); "
            "write {\"edges\": [[0, 1], ...]} or use a plain 'u v' edge list"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("edges"), list):
        found = f"keys {sorted(data)}" if isinstance(data, dict) else type(data).__name__
        raise TopologyError(
            f'{source}: expected a JSON object with an "edges" list, got {found}; '
            'write {"edges": [[0, 1], ...]}'
        )
    attributes: dict[int, dict[str, Any]] = {}
    raw_nodes = data.get("nodes", [])
    if not isinstance(raw_nodes, list):
        raise TopologyError(
            f'{source}: "nodes" must be a list, got {type(raw_nodes).__name__}; '
            'write "nodes": [{"id": 0, "address": "host:port"}, ...]'
        )
    for entry in raw_nodes:
        if isinstance(entry, dict):
            if "id" not in entry:
                raise TopologyError(
                    f'{source}: node entry {entry!r} has no "id"; '
                    'write {"id": 0, "address": "host:port"}'
                )
            node = _json_int(entry["id"], 'node "id"', source)
            attributes[node] = {key: value for key, value in entry.items() if key != "id"}
        else:
            attributes[_json_int(entry, "node", source)] = {}
    edges: list[tuple[int, int]] = []
    for entry in data["edges"]:
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise TopologyError(
                f"{source}: each edge must be a pair [u, v], got {entry!r}; "
                'write "edges": [[0, 1], [1, 2], ...]'
            )
        u, v = (_json_int(x, "edge endpoint", source) for x in entry)
        if raw_nodes and (u not in attributes or v not in attributes):
            missing = u if u not in attributes else v
            raise TopologyError(
                f'{source}: edge {[u, v]} names node {missing}, which is not in "nodes"; '
                'add it to "nodes" or fix the edge'
            )
        edges.append((u, v))
    nodes = list(attributes) + [x for edge in edges for x in edge]
    return nodes, edges, attributes


def load_graph(path: str | PathLike[str]) -> nx.Graph:
    """Read a topology from an edge-list or JSON file.

    Parameters
    ----------
    path : str or PathLike
        Either a JSON file (suffix ``.json``, or text starting with ``{``) of the form
        ``{"edges": [[0, 1], ...], "nodes": [{"id": 0, "address": "host:port"}, ...]}``
        where ``"nodes"`` is optional and every key of a node entry other than ``"id"``
        becomes a node attribute; or a plain text edge list with one ``u v`` pair per line,
        ``#`` comments and blank lines ignored, and a lone ``u`` declaring a worker without
        listing an edge.

    Returns
    -------
    nx.Graph
        The validated graph, with nodes ``0..n-1`` in order.

    Raises
    ------
    TopologyError
        If the file is missing or malformed, or :func:`validate` rejects the graph (nodes
        not exactly ``0..n-1``, self-loops, disconnected).

    Notes
    -----
    docs/algorithm.md section 2; a real deployment reads each worker's ``"address"`` from here.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "line.txt"
    >>> _ = p.write_text("# a chain\\n0 1\\n1 2\\n")
    >>> sorted(load_graph(p).edges())
    [(0, 1), (1, 2)]
    """
    file = Path(path)
    source = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TopologyError(
            f"topology file {source!r} does not exist; pass an existing edge-list or JSON "
            f"file, or one of the names {', '.join(NAMES)}"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise TopologyError(
            f"cannot read topology file {source!r} ({err}); pass a readable UTF-8 text file"
        ) from None
    attributes: dict[int, dict[str, Any]] = {}
    if file.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        nodes, edges, attributes = _parse_json(text, source)
    else:
        nodes, edges = _parse_edge_list(text, source)
    graph = nx.Graph()
    for node in sorted(set(nodes)):
        graph.add_node(node, **attributes.get(node, {}))
    graph.add_edges_from(edges)
    try:
        return validate(graph)
    except TopologyError as err:
        raise TopologyError(f"{source}: {err}") from None


def build(
    name: str,
    num_nodes: int | None,
    *,
    root: int = 0,
    spanning: str | None = None,
) -> tuple[nx.Graph, ...]:
    """Build the topology called ``name`` (or read from a file), optionally reduced to trees.

    Parameters
    ----------
    name : str
        One of :data:`NAMES` (kebab-case, as on the CLI), or the path of an edge-list or
        JSON file (:func:`load_graph`).
    num_nodes : int or None
        Number of workers. Required for the named constructors. For ``"social-network"``
        it must be 32 or None; for a file, None or the file's node count.
    root : int (default: 0)
        Root of the breadth-first spanning tree when ``spanning="bfs"``; ignored otherwise.
    spanning : str or None (default: None)
        None keeps every graph as it is; ``"bfs"`` replaces each by
        ``spanning_tree(graph, root)``; ``"min-diameter"`` by
        ``minimum_diameter_spanning_tree(graph)``.

    Returns
    -------
    tuple[nx.Graph, ...]
        One validated graph, or two for ``"double-binary-trees"`` (section 2.2).

    Raises
    ------
    ConfigError
        If ``name`` is neither a known name nor an existing file, ``num_nodes`` does not
        fit, ``spanning`` is unknown or ``root`` is out of range.
    TopologyError
        If the graph itself is invalid (for example a disconnected file).

    Notes
    -----
    docs/algorithm.md sections 2.1-2.4 (``configure_topology`` in the paper code).

    Examples
    --------
    >>> [g.number_of_edges() for g in build("double-binary-trees", 16)]
    [15, 15]
    >>> diameter(build("social-network", 32, spanning="bfs", root=3)[0]) >= 4
    True
    """
    if spanning is not None and spanning not in SPANNING_METHODS:
        raise ConfigError(
            f"unknown spanning tree {spanning!r}; use one of {', '.join(SPANNING_METHODS)} "
            "or None to keep the graph"
        )
    if num_nodes is not None and (not _is_int(num_nodes) or num_nodes < 1):
        raise ConfigError(
            f"num_nodes must be an int >= 1, got {num_nodes!r}; pass the number of workers"
        )
    graphs: tuple[nx.Graph, ...]
    if name in NAMES:
        if name == "social-network":
            if num_nodes not in (None, _SOCIAL_NETWORK_SIZE):
                raise ConfigError(
                    f"topology 'social-network' has {_SOCIAL_NETWORK_SIZE} workers, "
                    f"got num_nodes={num_nodes}; pass num_nodes={_SOCIAL_NETWORK_SIZE}"
                )
            graphs = (social_network(),)
        elif num_nodes is None:
            raise ConfigError(
                f"topology {name!r} needs num_nodes, got None; pass the number of workers"
            )
        elif name == "double-binary-trees":
            graphs = double_binary_trees(int(num_nodes))
        else:
            constructors = {
                "chain": chain,
                "ring": ring,
                "star": star,
                "binary-tree": binary_tree,
                "tree": tree,
                "fully-connected": fully_connected,
                "exponential": exponential,
            }
            graphs = (constructors[name](int(num_nodes)),)
    elif Path(name).is_file():
        graph = load_graph(name)
        n = graph.number_of_nodes()
        if num_nodes is not None and num_nodes != n:
            raise ConfigError(
                f"topology file {name!r} has {n} workers, got num_nodes={num_nodes}; "
                f"pass num_nodes={n} or None"
            )
        graphs = (graph,)
    elif Path(name).suffix or "/" in name or os.sep in name:  # a path, not a name
        raise ConfigError(
            f"topology file {name!r} does not exist; check the path, or use one of "
            f"{', '.join(NAMES)}"
        )
    else:
        raise ConfigError(
            f"unknown topology {name!r}; use one of {', '.join(NAMES)}, "
            "or the path of an existing edge-list or JSON file"
        )
    for graph in graphs:
        validate(graph)
    if spanning == "bfs":
        graphs = tuple(spanning_tree(graph, root) for graph in graphs)
    elif spanning == "min-diameter":
        graphs = tuple(minimum_diameter_spanning_tree(graph) for graph in graphs)
    return graphs


# --------------------------------------------------------------------------------------
# Metrics (docs/algorithm.md sections 1.3, 1.8, 2.5)
# --------------------------------------------------------------------------------------


def _distance_matrix(adj: list[list[int]]) -> npt.NDArray[np.int64]:
    """All-pairs hop distances of a connected graph by one BFS per worker."""
    n = len(adj)
    dist = np.empty((n, n), dtype=np.int64)  # [n, n]
    for s in range(n):
        row = [-1] * n
        row[s] = 0
        queue = deque([s])
        while queue:
            u = queue.popleft()
            du = row[u] + 1
            for w in adj[u]:
                if row[w] < 0:
                    row[w] = du
                    queue.append(w)
        dist[s] = row
    return dist


def neighbors(graph: nx.Graph, i: int) -> list[int]:
    """Return the neighbours of worker ``i``, sorted.

    Parameters
    ----------
    graph : nx.Graph
        Topology on workers ``0..n-1``.
    i : int
        A worker.

    Returns
    -------
    list[int]
        ``N_i`` of docs/algorithm.md section 1.1, in increasing order.

    Raises
    ------
    TopologyError
        If ``i`` is not a worker of ``graph``.

    Notes
    -----
    docs/algorithm.md section 1.1. This does not call :func:`validate`, so it is cheap to call
    per worker.
    """
    if not _is_int(i) or i not in graph:
        raise TopologyError(
            f"worker {i!r} is not in this {graph.number_of_nodes()}-node graph; "
            f"pick a worker in 0..{graph.number_of_nodes() - 1}"
        )
    return sorted(int(j) for j in graph.neighbors(i))


def distances(graph: nx.Graph) -> npt.NDArray[np.int64]:
    """Return all-pairs hop distances ``d_ik``.

    Parameters
    ----------
    graph : nx.Graph
        Connected topology on workers ``0..n-1``.

    Returns
    -------
    ndarray[n, n] of int64
        ``d[i, k]``: number of edges on a shortest ``i -> k`` path; 0 on the diagonal.

    Raises
    ------
    TopologyError
        If :func:`validate` rejects ``graph``.

    Notes
    -----
    docs/algorithm.md section 1.1 (``d_ik``) and 1.3.

    Examples
    --------
    >>> distances(chain(3)).tolist()
    [[0, 1, 2], [1, 0, 1], [2, 1, 0]]
    """
    validate(graph)
    return _distance_matrix(_adjacency(graph))


def diameter(graph: nx.Graph) -> int:
    """Return the diameter ``D`` (longest shortest path, in hops); 0 for one worker.

    Parameters
    ----------
    graph : nx.Graph
        Connected topology on workers ``0..n-1``.

    Returns
    -------
    int
        ``max_{i,k} d_ik``.

    Raises
    ------
    TopologyError
        If :func:`validate` rejects ``graph``.

    Notes
    -----
    docs/algorithm.md section 7, invariant 5: on a tree the relay averages exactly from step
    ``D - 1`` on.
    """
    return int(distances(graph).max())


def max_degree(graph: nx.Graph) -> int:
    """Return the largest number of neighbours of any worker; 0 for one worker.

    Parameters
    ----------
    graph : nx.Graph
        Topology on workers ``0..n-1``.

    Returns
    -------
    int
        ``max_i |N_i|``: the per-step communication of the busiest worker, in models.

    Raises
    ------
    TopologyError
        If :func:`validate` rejects ``graph``.

    Notes
    -----
    docs/algorithm.md section 7, invariant 14.
    """
    validate(graph)
    return max(int(d) for _, d in graph.degree())


def delays(graph: nx.Graph) -> npt.NDArray[np.int64]:
    """Return the synchronous relay delays ``δ_ik = max(d_ik - 1, 0)``.

    Parameters
    ----------
    graph : nx.Graph
        Connected topology on workers ``0..n-1`` (a tree, for a relay).

    Returns
    -------
    ndarray[n, n] of int64
        Steps by which worker ``k``'s value is late at worker ``i``.

    Raises
    ------
    TopologyError
        If :func:`validate` rejects ``graph``.

    Notes
    -----
    docs/algorithm.md section 1.3, synchronous mode (``overlap_communication=False``): own and
    neighbour values arrive without delay. With overlap the delay would be ``d_ik``.
    """
    return np.maximum(distances(graph) - 1, 0)


def delay_correction(graph: nx.Graph) -> float:
    """Return the learning-rate correction ``1 + δ̄`` with ``δ̄`` the mean delay.

    Parameters
    ----------
    graph : nx.Graph
        Connected topology on workers ``0..n-1`` (a tree, for a relay).

    Returns
    -------
    float
        ``1 + n^-2 Σ_{i,k} δ_ik``: a unit update applied once by every worker ends at
        consensus ``1 / (1 + δ̄)``.

    Raises
    ------
    TopologyError
        If :func:`validate` rejects ``graph``.

    Notes
    -----
    docs/algorithm.md section 1.8 and section 7, invariant 8: 5.375 for chain-16, 3.3203 for
    binary-tree-16, 3.258 for the 3-tree of 16, 1.8203 for star-16 and 1 for ``n <= 2``.

    Examples
    --------
    >>> delay_correction(chain(16))
    5.375
    """
    return 1.0 + float(delays(graph).mean())


def gossip_weights(graph: nx.Graph, *, weight: float | None = None) -> npt.NDArray[np.float64]:
    """Return the Metropolis-Hastings gossip matrix ``W``.

    Parameters
    ----------
    graph : nx.Graph
        Connected topology on workers ``0..n-1``.
    weight : float or None (default: None)
        None gives ``W_ij = 1 / (max(deg_i, deg_j) + 1)`` on every edge; a float ``w`` gives
        every edge the weight ``w``. The diagonal is ``1 - Σ_{j≠i} W_ij`` in both cases.

    Returns
    -------
    ndarray[n, n] of float64
        Symmetric, rows summing to 1, non-negative, ``W_ij > 0`` exactly on edges and the
        diagonal (for ``weight=None``).

    Raises
    ------
    TopologyError
        If :func:`validate` rejects ``graph``.
    ConfigError
        If ``weight`` is not positive, or makes some self-weight negative.

    Notes
    -----
    docs/algorithm.md section 2.5 (``Topology.gossip_matrix``) and section 7, invariant 3: every
    entry is 1/3 on a ring; on a binary tree the edges are 1/4, internal workers keep 1/4
    and leaves 3/4; the ends of a chain keep 2/3.

    Examples
    --------
    >>> gossip_weights(chain(3)).round(3).tolist()
    [[0.667, 0.333, 0.0], [0.333, 0.333, 0.333], [0.0, 0.333, 0.667]]
    """
    validate(graph)
    n = graph.number_of_nodes()
    degree = np.array([graph.degree(i) for i in range(n)], dtype=np.int64)  # [n]
    if weight is not None:
        worst = int(degree.argmax())
        if not weight > 0 or weight * degree[worst] > 1 + 1e-12:
            raise ConfigError(
                f"gossip weight {weight!r} gives worker {worst} (degree {degree[worst]}) the "
                f"self-weight 1 - {degree[worst]}*{weight} = {1 - degree[worst] * weight:.4g}; "
                f"use 0 < weight <= 1/max_degree = {1 / max(int(degree[worst]), 1):.4g}"
            )
    W = np.zeros((n, n), dtype=np.float64)  # [n, n]
    for u, v in graph.edges():
        i, j = int(u), int(v)
        w = 1.0 / (max(degree[i], degree[j]) + 1) if weight is None else float(weight)
        W[i, j] = W[j, i] = w
    np.fill_diagonal(W, np.maximum(1.0 - W.sum(axis=1), 0.0))
    return W


def edge_index(
    graph: nx.Graph,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Return the directed edges as ``src``, ``dst`` and ``rev`` index arrays.

    Parameters
    ----------
    graph : nx.Graph
        Connected topology on workers ``0..n-1``.

    Returns
    -------
    src, dst, rev : ndarray[e] of int64
        Every undirected edge ``{i, j}`` in both directions, ``e = 2|E|`` (``2(n-1)`` on a
        tree), sorted by ``(src, dst)``. ``rev[k]`` is the index of the edge
        ``dst[k] -> src[k]``, so ``rev[rev] == arange(e)``.

    Raises
    ------
    TopologyError
        If :func:`validate` rejects ``graph``.

    Notes
    -----
    docs/algorithm.md sections 1.1 and 1.9: one message and one count live on each directed
    edge, and a worker relays everything it received except the message from the
    recipient, which is ``msgs[rev]``.

    Examples
    --------
    >>> [a.tolist() for a in edge_index(chain(3))]
    [[0, 1, 1, 2], [1, 0, 2, 1], [1, 0, 3, 2]]
    """
    validate(graph)
    n = graph.number_of_nodes()
    adj = _adjacency(graph)
    src = np.array([i for i in range(n) for _ in adj[i]], dtype=np.int64)  # [e]
    dst = np.array([j for i in range(n) for j in adj[i]], dtype=np.int64)  # [e]
    keys = src * n + dst  # [e], increasing
    rev = np.searchsorted(keys, dst * n + src).astype(np.int64)  # [e]
    return src, dst, rev


def describe(graph: nx.Graph) -> dict[str, Any]:
    """Summarise a topology for results files and CLI tables.

    Parameters
    ----------
    graph : nx.Graph
        Connected topology on workers ``0..n-1``.

    Returns
    -------
    dict[str, Any]
        ``n`` (int), ``edges`` (int), ``diameter`` (int), ``max_degree`` (int), ``is_tree``
        (bool) and ``delay_correction`` (float, ``1 + δ̄``).

    Raises
    ------
    TopologyError
        If :func:`validate` rejects ``graph``.

    Notes
    -----
    docs/algorithm.md sections 1.8 and 2.

    Examples
    --------
    >>> describe(star(4))["diameter"]
    2
    """
    validate(graph)
    n = graph.number_of_nodes()
    dist = _distance_matrix(_adjacency(graph))  # [n, n]
    return {
        "n": n,
        "edges": graph.number_of_edges(),
        "diameter": int(dist.max()),
        "max_degree": max(int(d) for _, d in graph.degree()),
        "is_tree": graph.number_of_edges() == n - 1,
        "delay_correction": 1.0 + float(np.maximum(dist - 1, 0).mean()),
    }
