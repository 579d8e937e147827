"""One worker process of a serverless run: ``relayfl node``.

A :class:`Node` trains one worker (a :class:`Trainer`: the simulator's
:class:`~relayfl.worker.LocalWorker` on a :class:`~relayfl.task.Task`, or a Flower
``NumPyClient``) and, every ``local_steps`` steps, exchanges messages with its tree (or
gossip) neighbours through a :class:`~relayfl.transport.base.Transport`. The mixing is
the one-node view of the simulator's math: :class:`relayfl.relay.RelayNode` for
``relaysgd`` / ``relaysgd-grad`` and :class:`GossipNode` for ``dpsgd``, so a deployed
run reproduces :func:`relayfl.simulate` on the same seed (``tests/test_node.py``).

The protocol is step-synchronous and robust to timing:

* **Rendezvous.** Before step 0 every node waits (``startup_timeout``) until each of
  its neighbours has answered a status call.
* **Steps.** At step ``t`` a node sends its messages, then waits for one message per
  neighbour and tree. Messages for ``t + 1`` that arrive early are buffered; messages
  further ahead, and messages for a step already used (replays, late arrivals), are
  rejected. A message that misses ``step_timeout`` counts as dropped (docs/algorithm.md
  section 1.4): with ``fill="latest"`` the node fills the missing mass with its own
  latest model (Table 5, section 6.4), so drops do not pull models back to ``x0``.
* **Liveness apart from data.** A heartbeat thread exchanges status calls (step, phase,
  whom the node waits on) every ``heartbeat`` seconds. A neighbour silent for
  ``dead_after`` seconds is declared dead once; its edge counts as dropped from then on,
  and the node reports how the tree splits. A neighbour that reports it is blocked on
  *another* peer extends the wait instead of being dropped, so a dead node costs its
  neighbours one ``dead_after``, not a cascade of timeouts.
* **Resume and rejoin.** A node restarted with ``resume=True`` loads its checkpoint,
  learns the current step from its neighbours, skips ahead to the slowest one's step,
  and its neighbours restore the edge (and resend what it missed). When parts of a
  split tree meet again at different steps, the part behind catches up step by step
  (dropping the edge to the part ahead) while the part ahead holds: nobody loses
  training steps. Every status carries the step a node (re)started at, so nobody waits
  for a step that a restarted node never makes.
* **Checks.** Every received message is checked (run id, sender, tree, dtype, shape,
  count, step window, NaN/Inf) and a rejected one is logged in one line and never
  touches the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import json
import logging
import math
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import networkx as nx
import torch
from torch import Tensor

from relayfl import divergence, rng, topology
from relayfl.config import RunConfig
from relayfl.divergence import CHECK_EVERY
from relayfl.errors import ConfigError, DivergenceError, RelayflError, TransportError
from relayfl.relay import RelayNode, message_dtype, tree_slices, unpack
from relayfl.results import EvalRecord, RunResult, library_versions
from relayfl.task import Task
from relayfl.transport.base import LinkSpec, Message, Rejected, Transport
from relayfl.transport.buffers import BufferPool

__all__ = [
    "NODE_ALGORITHMS",
    "FlowerTrainer",
    "GossipNode",
    "Node",
    "NodeConfig",
    "NodeStopped",
    "Trainer",
    "load_trainer",
    "run_id",
    "split_parts",
]

#: Algorithms a deployed node runs (the others need a server or all-to-all links).
NODE_ALGORITHMS: tuple[str, ...] = ("relaysgd", "relaysgd-grad", "dpsgd")

_CHECKPOINT = "checkpoint.pt"


# --------------------------------------------------------------------------------------
# What a node trains
# --------------------------------------------------------------------------------------
@runtime_checkable
class Trainer(Protocol):
    """One worker's local training, as a node drives it (``LocalWorker`` is one).

    Attributes
    ----------
    x0 : Tensor[d]
        The initial model, flat (every node of a run must start from the same one).
    """

    x0: Tensor

    def train(self, x: Tensor, step: int, num_steps: int = 1) -> tuple[Tensor, float]:
        """``num_steps`` local steps from model ``x`` at global step ``step``;
        returns the new model and the mean training loss."""

    def evaluate(self, x: Tensor) -> tuple[float, float]:
        """Test accuracy and loss of model ``x``."""

    def state_dict(self) -> dict:
        """Local state to checkpoint (optimizer buffers)."""

    def load_state_dict(self, state: dict) -> None: ...


class NodeStopped(RelayflError):
    """The node was asked to stop (SIGTERM, or :meth:`Node.stop`) before the last step."""


class FlowerTrainer:
    """A Flower client as a :class:`Trainer`, through :mod:`relayfl.flower`'s adapter.

    Takes what :func:`relayfl.flower.client.as_trainer` takes: a ``client_fn(context)``
    returning a ``NumPyClient`` (or ``Client``), a :class:`relayfl.flower.RelayClientApp`
    such as ``clients.digits:app``, or a NumPyClient instance. The node keeps one Flower
    ``Context`` (``partition-id`` = node id, ``run_config`` = the run's config) whose
    ``state`` persists across rounds, as on a SuperNode. ``fit`` gets ``server-round``
    (round + 1), ``local-steps`` and ``step``.
    """

    def __init__(self, client: Any, config: RunConfig, node: int) -> None:
        from relayfl.flower.client import as_trainer
        from relayfl.flower.records import arrays_to_flat

        if callable(getattr(client, "fit", None)) and callable(
            getattr(client, "get_parameters", None)
        ):
            instance = client
            client = lambda context: instance  # noqa: E731 - a client_fn for one client
        self._trainer = as_trainer(client)
        self.context = _flower_context(node, config)
        self._base = dict(config.to_flower())
        self._like = self._trainer.initial_arrays(self._base, self.context)
        self.x0, self.layout = arrays_to_flat(self._like)
        self.num_samples = 0

    def _arrays(self, x: Tensor) -> Any:
        from relayfl.flower.records import flat_to_arrays

        # a copy: the client may change its arrays in place, the node's model must not move
        return flat_to_arrays(x.detach().cpu().clone(), self.layout, self._like)

    def train(self, x: Tensor, step: int, num_steps: int = 1) -> tuple[Tensor, float]:
        from relayfl.flower.records import arrays_to_flat

        config = {
            **self._base,
            "server-round": step // num_steps + 1,
            "local-steps": num_steps,
            "step": step,
        }
        arrays, metrics = self._trainer.fit(self._arrays(x), config, self.context)
        self._like = arrays
        self.num_samples = int(metrics.get("num-examples", 0))
        flat, _ = arrays_to_flat(arrays)
        loss = next(
            (metrics[k] for k in ("train-loss", "train_loss", "loss") if k in metrics), math.nan
        )
        return flat.to(x.dtype), float(loss)

    def evaluate(self, x: Tensor) -> tuple[float, float]:
        ev = self._trainer.evaluate(self._arrays(x), self._base, self.context)
        accuracy = next(
            (ev[k] for k in ("accuracy", "eval-accuracy", "eval_accuracy", "acc") if k in ev),
            math.nan,
        )
        return float(accuracy), float(ev.get("loss", math.nan))

    def state_dict(self) -> dict:
        return {"context_state": self.context.state}

    def load_state_dict(self, state: dict) -> None:
        if "context_state" in state:
            self.context.state = state["context_state"]


def _import(spec: str) -> Any:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(
            f"--client {spec!r} is not module:attribute; write e.g. clients.digits:client_fn"
        )
    sys.path.insert(0, os.getcwd()) if os.getcwd() not in sys.path else None
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"cannot import {module_name!r} for --client {spec!r} ({err}); run from the "
            "folder that holds it, or install it"
        ) from None
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    return obj


def _flower_context(node: int, config: RunConfig) -> Any:
    """A Flower ``Context`` for node ``node`` (``partition-id`` = the node id)."""
    from flwr.app import Context, RecordDict

    return Context(
        run_id=0,
        node_id=node,
        node_config={"partition-id": node, "num-partitions": config.num_clients},
        state=RecordDict(),
        run_config=dict(config.to_flower()),
    )


def load_trainer(client: str | Any | None, config: RunConfig, node: int) -> Trainer:
    """The trainer a node runs: the one place that decides how a client is loaded.

    Parameters
    ----------
    client : str, object or None
        None: the built-in dataset of ``config`` on the simulator's
        :class:`~relayfl.worker.LocalWorker` (so the node reproduces the simulation).
        ``"module:attribute"`` (or the object itself): a :class:`~relayfl.task.Task` or a
        factory returning one (``fn()`` or ``fn(node_id, num_nodes)``), which run on
        ``LocalWorker``; or any Flower client :class:`FlowerTrainer` takes: a
        ``client_fn(context)``, a ``RelayClientApp`` (the ready ``clients.digits:app``,
        ...) or a ``NumPyClient``. Clients are built under ``torch.manual_seed(seed)``
        so every node starts from the same initial model.
    config : RunConfig
    node : int

    Returns
    -------
    Trainer
    """
    from relayfl.worker import LocalWorker

    if client is None:
        return LocalWorker(config.load_task(), config, node)
    obj = _import(client) if isinstance(client, str) else client
    if isinstance(obj, Task):
        return LocalWorker(obj, config, node)
    if isinstance(obj, Trainer) and not callable(getattr(obj, "get_parameters", None)):
        return obj
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if callable(obj) and not _is_flower_client(obj):  # a factory: fn() or fn(id, n)
            made = obj(node, config.num_clients) if _positional(obj) >= 2 else obj()
            if isinstance(made, Task):
                return LocalWorker(made, config, node)
            obj = made
        return FlowerTrainer(obj, config, node)


def _is_flower_client(obj: Any) -> bool:
    """A ClientApp, a NumPyClient/Client, or a ``client_fn(context)``."""
    if callable(getattr(obj, "fit", None)):
        return True
    try:
        from flwr.clientapp import ClientApp
    except ImportError:  # pragma: no cover - flwr is a dependency
        return False
    return isinstance(obj, ClientApp) or _positional(obj) == 1


def _positional(fn: Any) -> int:
    """How many positional arguments ``fn`` requires (-1 when it cannot be told)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return -1
    return sum(
        1
        for p in params
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    )


# --------------------------------------------------------------------------------------
# One node's share of the mixing
# --------------------------------------------------------------------------------------
class GossipNode:
    """One worker's D-PSGD mixing on one graph: ``x_i <- sum_j W_ij x_j`` (section 3).

    The same Metropolis-Hastings weights, order of summation and drop renormalisation as
    :class:`relayfl.algorithms.Gossip` (section 1.4: a dropped neighbour term is removed
    and the rest renormalised by the weight that arrived).

    Parameters
    ----------
    graph : networkx.Graph
    node : int
    weight : float, optional
        Uniform edge weight instead of Metropolis-Hastings.
    """

    def __init__(
        self,
        graph: nx.Graph,
        node: int,
        *,
        weight: float | None = None,
        pool: BufferPool | None = None,
    ) -> None:
        self.pool = pool or BufferPool()
        W = topology.gossip_weights(graph, weight=weight)  # [n, n]
        self.node = node
        self.neighbors: list[int] = sorted(int(j) for j in graph.neighbors(node))
        self._self_w = torch.tensor(float(W[node, node]), dtype=torch.float64)
        self._w = {j: torch.tensor(float(W[j, node]), dtype=torch.float64) for j in self.neighbors}

    def mix(self, v: Tensor, received: Mapping[int, Tensor | None], *, renormalize: bool) -> Tensor:
        """This worker's mixed model from its own ``v`` [d] and its neighbours' values.

        Parameters
        ----------
        v : Tensor[d]
        received : mapping of neighbour id to Tensor[d], or None when dropped
        renormalize : bool
            Divide by the weight that arrived (the simulator does so whenever drops are
            enabled).
        """
        self_w = self._self_w.to(v.dtype)
        acc = torch.mul(v, self_w, out=self.pool.get(v.numel(), v.dtype))  # [d]
        scratch = self.pool.get(v.numel(), v.dtype)
        total = self_w
        for j in self.neighbors:
            got = received.get(j)
            w = self._w[j].to(v.dtype)
            if got is None:
                w = w * 0
            else:
                acc.add_(torch.mul(got.to(v.dtype), w, out=scratch))  # acc + x_j w_ij
            total = total + w
        return acc.div_(total) if renormalize else acc


def split_parts(graphs: Sequence[nx.Graph], dead: set[int]) -> list[list[int]]:
    """The parts a topology splits into when the ``dead`` nodes are removed.

    Returns the connected components of the first graph without the dead nodes (with
    several trees, the union of their edges), largest first.
    """
    union = nx.Graph()
    for g in graphs:
        union.add_nodes_from(g.nodes)
        union.add_edges_from(g.edges)
    union.remove_nodes_from(dead)
    parts = [sorted(int(v) for v in c) for c in nx.connected_components(union)]
    return sorted(parts, key=lambda p: (-len(p), p))


def run_id(config: RunConfig, graphs: Sequence[nx.Graph], name: str = "") -> str:
    """A short id shared by every node of one run, and only by them.

    A hash of the config (without machine-local fields: device, engine, data root and
    the topology's file path) and of the topology's edges, so nodes started with
    different options or topologies refuse each other.
    """
    data = config.to_dict()
    for key in ("device", "engine", "data_root", "topology", "precision", "channels_last"):
        data.pop(key, None)
    data["graphs"] = [sorted(sorted(map(int, e)) for e in g.edges) for g in graphs]
    data["graph_nodes"] = [g.number_of_nodes() for g in graphs]
    data["name"] = name
    raw = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


# --------------------------------------------------------------------------------------
# The node
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeConfig:
    """How one node runs and talks (the run itself is a :class:`~relayfl.RunConfig`).

    Parameters
    ----------
    node_id : int
    out : str or Path, optional
        Folder for ``log.jsonl``, ``results.json``, ``model.pt`` and ``checkpoint.pt``.
    step_timeout : float, default 60
        Seconds to wait for a neighbour's message of a step before it counts as dropped.
    dead_after : float, default 20
        Seconds without a heartbeat before a neighbour is declared dead.
    heartbeat : float, default 1
        Seconds between status calls to each neighbour.
    startup_timeout : float, default 300
        Seconds to wait at start-up for every neighbour to answer.
    checkpoint_every : int, default 10
        Checkpoint every k communication rounds (0: never).
    resume : bool
        Continue from ``out/checkpoint.pt`` and rejoin at the neighbours' step.
    run_name : str
        Mixed into the run id (to keep two runs with equal configs apart).
    events : bool
        Also print events as JSON lines on stdout (``relayfl launch`` reads them).
    linger : float, optional
        Seconds to keep answering after the last step, until every neighbour is done
        (default ``step_timeout + dead_after``).
    """

    node_id: int
    out: str | Path | None = None
    step_timeout: float = 60.0
    dead_after: float = 20.0
    heartbeat: float = 1.0
    startup_timeout: float = 300.0
    checkpoint_every: int = 10
    resume: bool = False
    run_name: str = ""
    events: bool = False
    linger: float | None = None

    def __post_init__(self) -> None:
        for name in ("step_timeout", "dead_after", "heartbeat", "startup_timeout"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name.replace('_', '-')} must be > 0 seconds, got {value}")
        if self.dead_after < 2 * self.heartbeat:
            raise ConfigError(
                f"dead-after {self.dead_after} s is shorter than two heartbeats "
                f"({self.heartbeat} s each); live peers would be declared dead. Use "
                f"--dead-after >= {2 * self.heartbeat:g} (e.g. 10 x --heartbeat)"
            )
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint-every must be >= 0, got {self.checkpoint_every}")


@dataclass
class _Peer:
    """What a node knows about one neighbour (guarded by the node's lock)."""

    id: int
    last_seen: float | None = None
    status: dict[str, Any] = field(default_factory=dict)
    dead: bool = False
    done: bool = False
    blocked_at: float = -math.inf  # last seen waiting on someone else
    progress_at: float = -math.inf  # last bytes of a message arriving
    revived_at: float = -math.inf
    advanced_at: float = -math.inf  # last time its step went up
    stuck_at: float = -math.inf  # last seen waiting for an earlier message of ours
    need_resend: bool = False
    resent: set[int] = field(default_factory=set)  # steps already sent again
    in_flight: bool = False


def _clean_status(status: Any) -> dict[str, Any] | None:
    if not isinstance(status, dict):
        return None
    step, phase = status.get("step"), status.get("phase")
    lists = [status.get("waiting_on", []), status.get("receiving", [])]
    if (
        not isinstance(step, int)
        or isinstance(step, bool)
        or phase not in ("start", "train", "wait", "done")
        or not all(isinstance(v, list) and all(isinstance(w, int) for w in v) for v in lists)
    ):
        return None
    since = status.get("since", 0)
    if not isinstance(since, int) or isinstance(since, bool):
        return None
    return {
        "step": step,
        "phase": phase,
        "waiting_on": lists[0],
        "receiving": lists[1],
        "since": since,
    }


class Node:
    """One worker of a serverless run (see the module docstring for the protocol).

    Parameters
    ----------
    config : RunConfig
        The run (the same on every node).
    options : NodeConfig
    trainer : Trainer
        What this node trains (:func:`load_trainer`).
    transport : Transport
        How it talks (:class:`~relayfl.transport.memory.MemoryTransport` or
        :class:`~relayfl.transport.grpc.GrpcTransport`).
    graphs : sequence of networkx.Graph, optional
        The topology (default: built from ``config``).
    addresses : mapping or callable, optional
        Each node's control address; or ``f(own_addresses) -> mapping`` called once this
        node listens (``relayfl launch`` passes the address book on stdin). Not needed
        in memory.
    token : str, optional
        The shared run token.
    logger : logging.Logger, optional
    """

    def __init__(
        self,
        config: RunConfig,
        options: NodeConfig,
        trainer: Trainer,
        transport: Transport,
        *,
        graphs: Sequence[nx.Graph] | None = None,
        addresses: Mapping[int, str] | Callable[[dict[str, str]], Mapping[int, str]] | None = None,
        token: str | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if config.algorithm not in NODE_ALGORITHMS:
            raise ConfigError(
                f"relayfl node runs {', '.join(NODE_ALGORITHMS)}, not {config.algorithm!r} "
                "(it needs a server or all-to-all links); use --algorithm relaysgd"
            )
        if graphs is None:
            graphs = config.build_graphs()
        self.graphs = tuple(graphs)
        n = self.graphs[0].number_of_nodes()
        me = options.node_id
        if n != config.num_clients:
            raise ConfigError(
                f"the topology has {n} nodes but the run has --clients {config.num_clients}; "
                "pass the topology's node count"
            )
        if not 0 <= me < n:
            raise ConfigError(f"node id {me} is outside 0..{n - 1}; pass --id below {n}")
        self.config, self.options, self.trainer, self.transport = (
            config,
            options,
            trainer,
            transport,
        )
        self.id, self.n = me, n
        self.log = logger or logging.getLogger("relayfl.node")
        self.out = Path(options.out) if options.out is not None else None
        self._addresses = addresses
        self.x0 = trainer.x0.detach().clone()
        self._bound = divergence.limit(self.x0)
        self._pool = BufferPool()
        d = self.x0.numel()
        self.slices = tree_slices(len(self.graphs))
        self.relay = config.algorithm in ("relaysgd", "relaysgd-grad")
        self.grad = config.algorithm == "relaysgd-grad"
        if self.relay:
            for g in self.graphs:
                topology.require_tree(g)
            norm = config.normalization or ("sum" if self.grad else "world_size")
            self.relays = [
                RelayNode(
                    g,
                    me,
                    normalization=norm,  # type: ignore[arg-type]
                    initial=self.x0[sl].contiguous() if norm == "world_size" else None,
                    fill=config.fill,  # type: ignore[arg-type]
                    alloc=self._pool.like,
                )
                for g, sl in zip(self.graphs, self.slices, strict=True)
            ]
            self.tree_neighbors = [set(r.neighbors) for r in self.relays]
            self.msg_dtype = message_dtype(self.x0.dtype)
        else:
            self.gossips = [GossipNode(g, me, pool=self._pool) for g in self.graphs]
            self.tree_neighbors = [set(gn.neighbors) for gn in self.gossips]
            self.msg_dtype = self.x0.dtype
        self.neighbors = sorted(set().union(*self.tree_neighbors))
        # on trees a chain of "blocked on someone else" cannot loop back, so such waits
        # need no cap; on gossip graphs with cycles they are capped
        self._acyclic = all(nx.is_forest(g) for g in self.graphs)
        self.numels = [len(range(d)[sl]) for sl in self.slices]
        itemsize = torch.empty((), dtype=self.msg_dtype).element_size()
        self.run_id = run_id(config, self.graphs, options.run_name)
        self.spec = LinkSpec(
            node=me,
            run_id=self.run_id,
            peers=frozenset(self.neighbors),
            token=token,
            max_payload_bytes=max(self.numels) * itemsize,
        )
        self._lock = threading.RLock()
        self._cv = threading.Condition(self._lock)
        self._peers = {j: _Peer(j) for j in self.neighbors}
        self._cur = 0
        self._phase = "start"
        self._waiting_on: list[int] = []
        self._inbox: dict[tuple[int, int, int], tuple[Tensor, float]] = {}
        #: What this node sent in its last two steps, for a neighbour that missed it.
        self._outboxes: dict[int, dict[int, list[Message]]] = {}
        self._sent_at: dict[int, float] = {}
        self._resend_after = 2 * options.heartbeat
        self._since = 0  # the first step of this process's run (later after --resume)
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._fatal: BaseException | None = None
        self._rejected: Counter[str] = Counter()
        self._drops: Counter[str] = Counter()
        self._dead_log: list[dict[str, Any]] = []
        self._revived_log: list[dict[str, Any]] = []
        self._last_warn: dict[tuple[str, str], tuple[float, int]] = {}
        self._events_lock = threading.Lock()
        self._jsonl = None
        self._t0 = time.monotonic()
        self.evaluations: list[EvalRecord] = []
        self._bytes_base = (0, 0)
        self._resumed: dict[str, Any] | None = None
        self._x: Tensor | None = None

    # ------------------------------------------------------------------ events, logs
    def _event(
        self, event: str, *, level: int | None = None, text: str | None = None, **fields: Any
    ) -> None:
        record = {
            "event": event,
            "node": self.id,
            "t": round(time.monotonic() - self._t0, 4),
            "time": time.time(),
            **fields,
        }
        line = json.dumps(record, default=str)
        with self._events_lock:
            if self._jsonl is not None:
                self._jsonl.write(line + "\n")
                self._jsonl.flush()
            if self.options.events:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
        if level is not None and text is not None:
            self.log.log(level, "node %d: %s", self.id, text)

    def on_reject(self, kind: str, source: str, detail: str) -> None:
        """One log line per refused message or peer (stderr lines rate-limited per
        kind and source; every one goes to ``log.jsonl``)."""
        with self._lock:
            self._rejected[kind] += 1
            count = self._rejected[kind]
            key = (kind, source)
            last, suppressed = self._last_warn.get(key, (-math.inf, 0))
            now = time.monotonic()
            show = now - last >= 5.0
            self._last_warn[key] = (now, 0) if show else (last, suppressed + 1)
        if count <= 1000:
            self._event("reject", kind=kind, source=source, detail=detail)
        if show:
            more = f" (+{suppressed} similar suppressed)" if suppressed else ""
            self.log.warning(
                "node %d: rejected %s from %s: %s%s", self.id, kind, source, detail, more
            )

    # ------------------------------------------------------------------ transport callbacks
    def on_message(self, message: Message) -> None:
        """Check a data message and buffer it for its step (called by the transport)."""
        source = f"node {message.sender}"
        try:
            self._check(message)
        except Rejected as err:
            self.on_reject(err.kind, source, err.detail)
            return
        key = (message.step, message.tree, message.sender)
        with self._cv:
            cur = self._cur
            if message.step < cur or key in self._inbox:
                kind, detail = (
                    "replay",
                    (
                        f"message for step {message.step} (tree {message.tree}) came after "
                        f"that step was used or buffered; now at step {cur}"
                    ),
                )
            elif message.step > cur + 1:
                kind, detail = (
                    "too-far-ahead",
                    (f"message for step {message.step}, more than one step ahead of step {cur}"),
                )
            else:
                self._inbox[key] = (message.payload, message.count)
                self._cv.notify_all()
                return
        self.on_reject(kind, source, detail)

    def _check(self, m: Message) -> None:
        if m.run_id != self.run_id:
            raise Rejected("wrong-run", f"run id {m.run_id!r}, this run is {self.run_id!r}")
        if not 0 <= m.tree < len(self.graphs):
            raise Rejected("wrong-tree", f"tree {m.tree}; this run has {len(self.graphs)}")
        if m.sender not in self.tree_neighbors[m.tree]:
            raise Rejected("not-neighbour", f"node {m.sender} is not a neighbour in tree {m.tree}")
        if m.payload.dtype != self.msg_dtype:
            raise Rejected(
                "wrong-dtype", f"payload is {m.payload.dtype}, this run sends {self.msg_dtype}"
            )
        if tuple(m.payload.shape) != (self.numels[m.tree],):
            raise Rejected(
                "wrong-shape",
                f"payload shape {tuple(m.payload.shape)}, tree {m.tree} carries "
                f"({self.numels[m.tree]},)",
            )
        c = m.count
        if self.relay:
            if not (math.isfinite(c) and 1 <= c <= self.n and c == int(c)):
                raise Rejected("bad-count", f"count {c} is not a whole number in 1..{self.n}")
        elif c != 1:
            raise Rejected("bad-count", f"gossip messages have count 1, got {c}")
        if not bool(torch.isfinite(m.payload.sum())) and not bool(torch.isfinite(m.payload).all()):
            bad = int((~torch.isfinite(m.payload)).sum())
            raise Rejected("non-finite", f"payload holds {bad} NaN/Inf values")

    def on_status(self, sender: int, status: dict[str, Any]) -> dict[str, Any]:
        """A neighbour's heartbeat (called by the transport); answer with ours."""
        clean = _clean_status(status)
        if clean is None:
            self.on_reject("malformed", f"node {sender}", f"status {status!r} is not valid")
        else:
            self._saw(sender, clean)
        return self._status()

    def on_progress(self, sender: int) -> None:
        with self._lock:
            if sender in self._peers:
                self._peers[sender].progress_at = time.monotonic()

    def on_send_failed(self, peer: int, step: int) -> None:
        with self._lock:
            if peer in self._peers:
                self._peers[peer].need_resend = True

    # ------------------------------------------------------------------ liveness
    def _status(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            receiving = [j for j, p in self._peers.items() if now - p.progress_at < 2.0]
            return {
                "step": self._cur,
                "phase": self._phase,
                "waiting_on": list(self._waiting_on),
                "receiving": receiving,
                "since": self._since,
            }

    def _saw(self, j: int, status: dict[str, Any]) -> None:
        resend: list[Message] = []
        revived = False
        with self._cv:
            p = self._peers.get(j)
            if p is None:
                return
            now = time.monotonic()
            p.last_seen = now
            if status["step"] > p.status.get("step", -1):
                p.advanced_at = now
            p.status = status
            p.done = status["phase"] == "done"
            waiting = set(status["waiting_on"])
            if status["phase"] in ("start", "wait"):
                if waiting - {self.id}:
                    p.blocked_at = now  # blocked on another peer, not computing for us
                elif status["step"] < self._cur:
                    p.stuck_at = now  # waits for an earlier message of ours (resent below)
            if p.dead:
                p.dead, revived = False, True
                p.revived_at = now
                p.need_resend = True
            step_j = status["step"]
            if (
                status["phase"] == "wait"
                and self.id in waiting
                and step_j in self._outboxes
                and step_j not in p.resent
                and self.id not in status["receiving"]
                # delivery failed, or it still waits for a step we sent a while ago and left
                and (
                    p.need_resend
                    or (
                        step_j < self._cur
                        and now - self._sent_at.get(step_j, now) > self._resend_after
                    )
                )
            ):
                p.need_resend = False
                p.resent = {k for k in p.resent if k >= step_j - 2} | {step_j}
                resend = list(self._outboxes[step_j].get(j, []))
            self._cv.notify_all()
            step = self._cur
        if revived:
            self._revived_log.append({"neighbor": j, "step": step, "peer_step": status["step"]})
            self._event(
                "revived",
                neighbor=j,
                step=step,
                peer_step=status["step"],
                level=logging.WARNING,
                text=f"neighbour {j} is back (at its step {status['step']}); its edge is restored",
            )
        for message in resend:
            self.transport.send(j, message)
        if resend:
            self._event("resent", neighbor=j, step=resend[0].step)

    def _heartbeat_loop(self) -> None:
        opts = self.options
        timeout = max(2 * opts.heartbeat, 1.0)
        with ThreadPoolExecutor(
            max_workers=max(1, len(self.neighbors)), thread_name_prefix="relayfl-beat"
        ) as pool:
            while not self._stop.is_set():
                status = self._status()
                for j in self.neighbors:
                    with self._lock:
                        p = self._peers[j]
                        if p.in_flight:
                            continue
                        p.in_flight = True
                    future = pool.submit(self.transport.status, j, status, timeout)
                    future.add_done_callback(lambda f, j=j: self._on_reply(j, f))
                self._check_deaths()
                self._stop.wait(opts.heartbeat)

    def _on_reply(self, j: int, future: Future) -> None:
        with self._lock:
            self._peers[j].in_flight = False
        try:
            reply = future.result()
        except Rejected as err:
            self.on_reject(err.kind, f"node {j} (refused our call)", err.detail)
            if self._phase == "start" and err.kind in (
                "wrong-run",
                "wrong-token",
                "not-neighbour",
                "bad-certificate",
            ):
                self._fatal = TransportError(f"node {j} refused this node: {err}")
            return
        except Exception as err:  # a transport bug must not stop the heartbeats
            self.log.warning("node %d: status call to node %d failed: %s", self.id, j, err)
            return
        if reply is None:
            return
        clean = _clean_status(reply)
        if clean is None:
            self.on_reject("malformed", f"node {j}", f"status reply {reply!r} is not valid")
            return
        self._saw(j, clean)

    def _check_deaths(self) -> None:
        newly: list[tuple[int, float, int]] = []
        with self._cv:
            now = time.monotonic()
            for p in self._peers.values():
                if p.dead or p.done or p.last_seen is None:
                    continue
                silent = now - p.last_seen
                if silent > self.options.dead_after:
                    p.dead = True
                    newly.append((p.id, silent, int(p.status.get("step", -1))))
            if newly:
                self._cv.notify_all()
            dead = {p.id for p in self._peers.values() if p.dead}
            step = self._cur
        for j, silent, last_step in newly:
            parts = split_parts(self.graphs, dead)
            record = {
                "neighbor": j,
                "step": step,
                "last_seen_step": last_step,
                "silent_s": round(silent, 2),
                "parts": parts,
                "time": time.time(),
            }
            self._dead_log.append(record)
            split = (
                f"; the tree splits into {len(parts)} parts {parts} that train separately"
                if len(parts) > 1
                else ""
            )
            self._event(
                "dead",
                **record,
                level=logging.WARNING,
                text=(
                    f"neighbour {j} declared dead at step {step}: no heartbeat for "
                    f"{silent:.1f} s (last seen at its step {last_step}); its edge counts as "
                    f"dropped from now on{split}"
                ),
            )

    # ------------------------------------------------------------------ the run
    def stop(self) -> None:
        """Ask the run to end at the next step boundary (checkpointed; ``run`` raises
        :class:`NodeStopped`). Safe to call from a signal handler or another thread."""
        self._abort.set()
        with self._cv:
            self._cv.notify_all()

    def run(self) -> RunResult:
        """Start, rendezvous, train every step, linger, and return this node's result."""
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.out / "log.jsonl", "a", buffering=1)  # noqa: SIM115
        beat = threading.Thread(target=self._heartbeat_loop, name="relayfl-heartbeat", daemon=True)
        try:
            checkpoint = self._load_checkpoint() if self.options.resume else None
            if checkpoint is not None:  # answer status calls with the checkpoint's step
                with self._lock:
                    self._cur = int(checkpoint["round"])
            own = self.transport.start(self.spec, self)
            self._event(
                "listening",
                control=own["control"],
                data=own["data"],
                run_id=self.run_id,
                parameters=int(self.x0.numel()),
                level=logging.INFO,
                text=f"listening on {own['control']} (data {own['data']}), run {self.run_id}",
            )
            book = self._addresses(own) if callable(self._addresses) else self._addresses
            if book is not None:
                missing = [j for j in self.neighbors if j not in book and str(j) not in book]
                if missing:
                    raise ConfigError(
                        f"no address for neighbours {missing}; list every node's "
                        '"address" in the topology file, or pass --peers'
                    )
                self.transport.set_peers(
                    {j: str(book[j] if j in book else book[str(j)]) for j in self.neighbors}
                )
            else:
                self.transport.set_peers({})
            beat.start()
            start = self._rendezvous(checkpoint)
            result = self._train(start)
            self._linger()
            return result
        finally:
            self._stop.set()
            if beat.is_alive():  # no status call in flight while the transport closes
                beat.join(timeout=max(5.0, 3 * self.options.heartbeat))
            try:
                self.transport.close(timeout=min(30.0, self.options.step_timeout))
            finally:
                if self._jsonl is not None:
                    with self._events_lock:
                        self._jsonl.close()
                        self._jsonl = None

    def _rendezvous(self, checkpoint: dict[str, Any] | None) -> int:
        opts = self.options
        deadline = time.monotonic() + opts.startup_timeout
        self._event(
            "rendezvous",
            neighbors=self.neighbors,
            level=logging.INFO,
            text=f"waiting for neighbours {self.neighbors}",
        )
        while True:
            if self._fatal is not None:
                raise self._fatal
            if self._abort.is_set():
                raise NodeStopped(f"node {self.id} stopped before the run started")
            with self._lock:
                missing = [j for j in self.neighbors if self._peers[j].last_seen is None]
                self._waiting_on = missing
            if not missing:
                break
            if time.monotonic() > deadline:
                raise TransportError(
                    f"neighbours {missing} did not answer within --startup-timeout "
                    f"{opts.startup_timeout:g} s; start them, check their addresses and "
                    "firewalls, or raise --startup-timeout"
                )
            time.sleep(0.05)
        with self._lock:
            steps = [
                int(p.status.get("step", 0))
                for p in self._peers.values()
                if p.status.get("phase") != "done"
            ]
            now = time.monotonic()
            for p in self._peers.values():
                p.last_seen = now  # the dead-after clock starts with the run
        # rejoin with the slowest neighbour: those ahead hold until it catches up, and no
        # neighbour waits for a step this node never makes
        current = min(steps, default=0)
        start = 0
        if checkpoint is not None:
            start = max(int(checkpoint["round"]), current)
            self._restore(checkpoint, skipped=start > int(checkpoint["round"]))
            self._resumed = {"checkpoint_round": int(checkpoint["round"]), "round": start}
            self._event(
                "resumed",
                checkpoint_round=int(checkpoint["round"]),
                round=start,
                level=logging.WARNING,
                text=(
                    f"resumed from the checkpoint of step {int(checkpoint['round'])}; the "
                    f"neighbours are at step {current}, continuing at step {start}"
                ),
            )
        elif current > 0:
            if self.out is not None and (self.out / _CHECKPOINT).is_file():
                raise ConfigError(
                    f"the neighbours are at step {current}: the run is under way; restart "
                    f"this node with --resume to continue from {self.out / _CHECKPOINT}"
                )
            self.log.warning(
                "node %d: joining a run under way at step %d from the initial model "
                "(no checkpoint to --resume from)",
                self.id,
                current,
            )
            start = current
        with self._lock:
            self._cur = start
            self._since = start
            self._waiting_on = []
        self._event("start", step=start)
        return start

    def _train(self, start: int) -> RunResult:
        config, trainer = self.config, self.trainer
        L = config.local_steps
        total_rounds = math.ceil(config.steps / L)
        x = self._x if self._x is not None else self.x0.clone()
        if start == 0 and config.eval_every and not self.evaluations:
            self._evaluate(x, 0, 0, math.nan)
        hook = getattr(getattr(trainer, "optimizer", None), "after_round", None)
        r = start
        while r < total_rounds:
            if self._abort.is_set():
                self._checkpoint(r, x)
                raise NodeStopped(f"node {self.id} stopped at step {r}; resume with --resume")
            s0 = r * L
            k = min(L, config.steps - s0)
            with self._lock:
                self._cur, self._phase = r, "train"
            t_train = time.monotonic()
            x_half, loss = trainer.train(x, s0, k)
            t_comm = time.monotonic()
            lr_at = getattr(trainer, "lr_at", None)
            lr = lr_at(s0) if lr_at is not None else math.nan
            message = divergence.check_loss(loss, step=s0, where=f"node {self.id}", lr=lr)
            if message is None and (s0 + k) // CHECK_EVERY > s0 // CHECK_EVERY:
                message = divergence.check_params(
                    x_half, self._bound, step=s0 + k, names="node", first=self.id, lr=lr
                )
            if message:
                self._diverged(message)
            if k == L:
                try:
                    x_new = self._communicate(r, s0 + L - 1, x, x_half)
                except NodeStopped:
                    self._checkpoint(r, x)
                    raise
                if hook is not None:
                    hook(x.unsqueeze(0), x_new.unsqueeze(0))
                x = x_new
            else:
                x = x_half
                with self._lock:
                    self._cur = r + 1
            done = s0 + k
            now = time.monotonic()
            self._event(
                "step",
                step=done,
                round=r + 1,
                train_s=round(t_comm - t_train, 4),
                comm_s=round(now - t_comm, 4),
            )
            every = config.eval_every
            if (every and done // every > s0 // every) or done == config.steps:
                self._evaluate(x, done, r + 1, loss)
            if self.options.checkpoint_every and (r + 1) % self.options.checkpoint_every == 0:
                self._checkpoint(r + 1, x)
            r += 1
        with self._lock:
            self._phase = "done"
            self._waiting_on = []
        self._x = x
        result = self.result()
        if self.out is not None:
            result.save(self.out)
            torch.save(
                {
                    "node": self.id,
                    "step": config.steps,
                    "x": x.detach().cpu(),
                    "state_dict": unpack(x.detach().cpu(), self.trainer.layout)
                    if hasattr(self.trainer, "layout")
                    else None,
                },
                self.out / "model.pt",
            )
        self._event(
            "done",
            step=config.steps,
            drops=dict(self._drops),
            rejected=dict(self._rejected),
            level=logging.INFO,
            text=f"finished {config.steps} steps",
        )
        return result

    def _communicate(self, r: int, mix_step: int, x_start: Tensor, x_half: Tensor) -> Tensor:
        """Send this round's messages, collect the neighbours', and mix (one round)."""
        if self.grad:
            value = torch.sub(x_half, x_start, out=self._pool.get(x_half.numel(), x_half.dtype))
        else:
            value = x_half  # [d]
        outbox: dict[int, list[Message]] = {j: [] for j in self.neighbors}
        expected = [(k, j) for k in range(len(self.slices)) for j in sorted(self.tree_neighbors[k])]
        with self._lock:
            self._outboxes[r] = outbox  # filled below; a resend takes what is there
            self._sent_at[r] = time.monotonic()
            for old in [k for k in self._outboxes if k < r - 1]:
                del self._outboxes[old]
                self._sent_at.pop(old, None)
            skip = {j for j, p in self._peers.items() if p.dead or p.done}
        for k, sl in enumerate(self.slices):
            part = value[sl].contiguous()  # [d_k]
            if self.relay:
                messages = self.relays[k].send_each(part)
            else:
                messages = ((j, part, 1.0) for j in self.gossips[k].neighbors)
            for j, m, c in messages:  # each goes on the wire while the next is computed
                message = Message(self.run_id, r, self.id, k, c, m.contiguous())
                outbox[j].append(message)
                if j not in skip:
                    self.transport.send(j, message)
        with self._lock:
            self._phase = "wait"
        received = self._collect(r, expected)
        if self._abort.is_set():
            raise NodeStopped(f"node {self.id} stopped at step {r}; resume with --resume")
        keep = self._drop_draws(mix_step, expected)
        for key, kept in keep.items():
            if not kept and received.get(key) is not None:
                received[key] = None
                self._drops["injected"] += 1
        mixed = []
        for k, sl in enumerate(self.slices):
            part = value[sl].contiguous()
            got = {j: received.get((k, j)) for j in self.tree_neighbors[k]}
            if self.relay:
                mixed.append(self.relays[k].receive(got))
            else:
                payloads = {j: None if v is None else v[0] for j, v in got.items()}
                renorm = self.config.drop_probability > 0 or any(
                    v is None for v in payloads.values()
                )
                mixed.append(self.gossips[k].mix(part, payloads, renormalize=renorm))
        del received, got
        if len(mixed) == 1:
            out = mixed[0]  # [d]
        else:
            out = self._pool.get(value.numel(), mixed[0].dtype)  # [d]
            for sl, part in zip(self.slices, mixed, strict=True):
                out[sl] = part
        with self._cv:
            self._cur = r + 1
            self._phase = "train"
            for key in [key for key in self._inbox if key[0] <= r]:
                del self._inbox[key]
        if self.grad:
            return torch.add(
                x_start, out.to(x_start.dtype), out=self._pool.get(out.numel(), x_start.dtype)
            )
        return out.to(x_half.dtype)

    def _drop_draws(
        self, step: int, expected: list[tuple[int, int]]
    ) -> dict[tuple[int, int], bool]:
        """Injected drops, drawn exactly as the simulator does (section 1.4): this node,
        as receiver, draws one number per incoming edge from generator
        ``(seed, node, step, "drop")``, graph by graph, by sender."""
        p = self.config.drop_probability
        if p <= 0 or not expected:
            return {}
        draws = torch.rand(
            len(expected), generator=rng.generator(self.config.seed, self.id, step, "drop")
        )
        return {key: u >= p for key, u in zip(expected, draws.tolist(), strict=True)}

    def _collect(self, r: int, expected: list[tuple[int, int]]) -> dict[tuple[int, int], Any]:
        """Wait for every expected ``(tree, sender)`` message of step ``r``.

        A message is given up on (None) at once when its sender is dead or finished, is
        two or more steps ahead (it sent step ``r`` long ago, and it was refused as too
        far ahead), or (re)started after step ``r``; otherwise when it misses
        ``step_timeout``. That clock restarts while bytes of the message are arriving,
        when the sender comes back from the dead, while the sender is behind and catching
        up step by step (this node holds for it), while it reports being blocked on
        another peer (on a tree such chains end at a timeout or a death, so no cap; on
        graphs with cycles capped at ``step_timeout + 2 dead_after``), and while it waits
        for an earlier message of ours that we resend (capped).
        """
        opts = self.options
        start = time.monotonic()
        cap = opts.step_timeout + 2 * opts.dead_after
        got: dict[tuple[int, int], Any] = {}
        reasons: dict[int, str] = {}
        with self._cv:
            while True:
                now = time.monotonic()
                pending: set[int] = set()
                for key in expected:
                    if key in got:
                        continue
                    k, j = key
                    item = self._inbox.pop((r, k, j), None)
                    if item is not None:
                        got[key] = item
                        continue
                    p = self._peers[j]
                    reason = None
                    if p.dead:
                        reason = "dead"
                    elif p.done:
                        reason = "finished"
                    elif p.status.get("phase") in ("train", "wait") and p.status["step"] >= r + 2:
                        reason = "ahead"  # it sent step r long ago (refused as too far ahead)
                    elif r < p.status.get("since", 0):
                        reason = "skipped"  # it (re)started after step r: it never sends r
                    else:
                        ref = max(start, p.revived_at, p.progress_at)
                        if (
                            p.status.get("step", r) < r
                            and p.status.get("phase") in ("train", "wait")
                            and now - p.advanced_at < opts.step_timeout
                        ):
                            ref = now  # behind us and catching up step by step: we hold
                        elif p.blocked_at > ref and (self._acyclic or now - start < cap):
                            ref = p.blocked_at  # blocked on another peer (bounded by its wait)
                        elif p.stuck_at > ref and now - start < cap:
                            ref = p.stuck_at  # waits for our resend
                        if now - ref > opts.step_timeout:
                            reason = "timeout"
                    if reason is not None:
                        got[key] = None
                        reasons[j] = reason
                        self._drops[reason] += 1
                    else:
                        pending.add(j)
                self._waiting_on = sorted(pending)
                if not pending or self._abort.is_set():
                    break
                self._cv.wait(0.25)
            self._waiting_on = []
        for j, reason in sorted(reasons.items()):
            if reason == "timeout":
                self._event(
                    "drop",
                    step=r,
                    neighbor=j,
                    reason=reason,
                    level=logging.WARNING,
                    text=(
                        f"step {r}: no message from node {j} within {opts.step_timeout:g} s; "
                        f"counted as dropped (fill={self.config.fill})"
                    ),
                )
            else:
                self._event("drop", step=r, neighbor=j, reason=reason)
        return got

    def _linger(self) -> None:
        """Keep answering until every neighbour is done or dead (bounded)."""
        opts = self.options
        limit = opts.linger if opts.linger is not None else opts.step_timeout + opts.dead_after
        deadline = time.monotonic() + limit
        with self._cv:
            while time.monotonic() < deadline:
                if all(p.done or p.dead for p in self._peers.values()):
                    break
                self._cv.wait(0.1)
        # one more heartbeat round so the neighbours see "done" before we go silent
        time.sleep(min(opts.heartbeat, 1.0))

    # ------------------------------------------------------------------ eval, results
    def _evaluate(self, x: Tensor, step: int, rounds: int, train_loss: float) -> EvalRecord:
        acc, loss = self.trainer.evaluate(x)
        lr_at = getattr(self.trainer, "lr_at", None)
        spe = getattr(self.trainer, "steps_per_epoch", None) or math.nan
        sent, received = self._bytes()
        record = EvalRecord(
            step=step,
            round=rounds,
            epoch=step / spe if spe == spe and spe else math.nan,
            lr=float(lr_at(max(step - 1, 0))) if lr_at is not None else math.nan,
            mean_accuracy=acc,
            worst_accuracy=acc,
            best_accuracy=acc,
            mean_loss=loss,
            worst_loss=loss,
            train_loss=train_loss,
            consensus_distance=math.nan,
            accuracies=[acc],
            losses=[loss],
            bytes_sent=[sent],
            bytes_received=[received],
            wall_s=time.monotonic() - self._t0,
        )
        self.evaluations.append(record)
        self._event("eval", **asdict(record))
        return record

    def _bytes(self) -> tuple[int, int]:
        return (
            self._bytes_base[0] + self.transport.bytes_sent(),
            self._bytes_base[1] + self.transport.bytes_received(),
        )

    def _diverged(self, message: str) -> None:
        """Stop: save the evaluations so far with status "diverged" and raise."""
        result = dataclasses.replace(self.result(), status="diverged")
        if self.out is not None:
            result.save(self.out)
        self._event("diverged", message=message)
        raise DivergenceError(message, result)

    def result(self) -> RunResult:
        """This node's result (one worker's view, in the core schema)."""
        sent, received = self._bytes()
        task_info: dict[str, Any] = {"parameters": int(self.x0.numel())}
        task = getattr(self.trainer, "task", None)
        if task is not None:
            task_info.update({"name": task.name, "train_samples": len(task.x_train), **task.info})
            parts = getattr(getattr(self.trainer, "data", None), "parts", None)
            if parts is not None:  # every node holds the run's split: keep it for the plots
                from relayfl import partition

                arrays = [p.cpu().numpy() for p in parts]
                task_info["partition_sizes"] = [len(a) for a in arrays]
                task_info["partition_counts"] = partition.count_matrix(
                    task.partition_labels, arrays, task.num_classes
                ).tolist()
        if hasattr(self.trainer, "num_samples"):
            task_info["partition_size"] = int(self.trainer.num_samples)
        return RunResult(
            config=self.config.to_dict(),
            evaluations=list(self.evaluations),
            topology={
                "name": self.config.topology_name,
                "graphs": [topology.describe(g) for g in self.graphs],
                "neighbors": self.neighbors,
            },
            versions=library_versions("grpcio"),
            task=task_info,
            wall_s=time.monotonic() - self._t0,
            engine="node",
            extra={
                "node": self.id,
                "run_id": self.run_id,
                "bytes_sent": sent,
                "bytes_received": received,
                "drops": dict(self._drops),
                "rejected": dict(self._rejected),
                "dead": list(self._dead_log),
                "revived": list(self._revived_log),
                "resumed": self._resumed,
                "options": {
                    k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.options).items()
                },
            },
            models=None,
        )

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, next_round: int, x: Tensor) -> None:
        if self.out is None:
            return
        state = {
            "version": 1,
            "run_id": self.run_id,
            "node": self.id,
            "round": next_round,
            "x": x.detach().cpu(),
            "relays": [r.state_dict() for r in self.relays] if self.relay else [],
            "trainer": self.trainer.state_dict(),
            "evaluations": [asdict(e) for e in self.evaluations],
            "bytes": self._bytes(),
            "drops": dict(self._drops),
        }
        path = self.out / _CHECKPOINT
        tmp = path.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        self._event("checkpoint", round=next_round)

    def _load_checkpoint(self) -> dict[str, Any]:
        path = self.out / _CHECKPOINT if self.out is not None else None
        if path is None or not path.is_file():
            raise ConfigError(
                f"--resume found no checkpoint at {path}; pass the node's original --out "
                "folder, or start without --resume"
            )
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("run_id") != self.run_id or state.get("node") != self.id:
            raise ConfigError(
                f"the checkpoint {path} is of run {state.get('run_id')} node "
                f"{state.get('node')}, not run {self.run_id} node {self.id}; start with the "
                "same options, topology and --id as before"
            )
        return state

    def _restore(self, state: dict[str, Any], *, skipped: bool) -> None:
        self._x = state["x"].to(self.x0.dtype)
        self.trainer.load_state_dict(state["trainer"])
        self.evaluations = [EvalRecord(**e) for e in state["evaluations"]]
        self._bytes_base = tuple(state["bytes"])  # type: ignore[assignment]
        self._drops.update(state.get("drops", {}))
        if self.relay:
            for relay, saved in zip(self.relays, state["relays"], strict=True):
                if skipped and saved.get("m") is not None:
                    # the buffered messages are of an old step: start as if all were dropped
                    saved = {
                        "m": torch.zeros_like(saved["m"]),
                        "c": torch.zeros_like(saved["c"]),
                        "fill": saved["fill"],
                    }
                relay.load_state_dict(saved)
