"""The node: one worker of a serverless run, from start-up to its result.

:class:`Node` ties the pieces together: what it trains (:mod:`relayfl.node.trainer`),
the message checks (:mod:`relayfl.node.checks`), the step protocol
(:mod:`relayfl.node.steps`), liveness (:mod:`relayfl.node.liveness`), checkpoints
(:mod:`relayfl.node.checkpoint`) and its event log (:mod:`relayfl.node.events`). The
protocol as a whole is described in :mod:`relayfl.node`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import networkx as nx
import torch
from torch import Tensor

from relayfl import divergence, topology
from relayfl.config import RunConfig
from relayfl.divergence import CHECK_EVERY
from relayfl.errors import ConfigError, DivergenceError, RelayflError, TransportError
from relayfl.node.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from relayfl.node.checks import MessageCheck, step_window
from relayfl.node.events import EventLog
from relayfl.node.liveness import Liveness, PeerState
from relayfl.node.mixing import GossipNode
from relayfl.node.options import NODE_ALGORITHMS, NodeConfig, NodeStopped, run_id
from relayfl.node.steps import StepProtocol
from relayfl.node.trainer import FlowerTrainer, Trainer
from relayfl.relay import RelayNode, message_dtype, tree_slices, unpack
from relayfl.results import EvalRecord, RunResult, library_versions
from relayfl.transport.base import LinkSpec, Message, Rejected, Transport
from relayfl.transport.buffers import BufferPool

__all__ = ["Node"]


class Node(Liveness, StepProtocol):
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
        # relayfl.divergence rule 3 for a Task; a Flower client: only non-finite arrays count
        flower = isinstance(trainer, FlowerTrainer)
        self._bound = math.inf if flower else divergence.limit(self.x0)
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
        x0_bytes = self.x0.detach().cpu().contiguous().numpy().tobytes()
        self.run_id = run_id(config, self.graphs, options.run_name, f"{zlib.crc32(x0_bytes):08x}")
        self._check = MessageCheck(
            self.run_id, self.tree_neighbors, self.msg_dtype, self.numels, relay=self.relay, n=n
        )
        self.spec = LinkSpec(
            node=me,
            run_id=self.run_id,
            peers=frozenset(self.neighbors),
            token=token,
            max_payload_bytes=max(self.numels) * itemsize,
            frame_sizes=frozenset(k * itemsize for k in self.numels),
        )
        self._lock = threading.RLock()
        self._cv = threading.Condition(self._lock)
        self._peers = {j: PeerState(j) for j in self.neighbors}
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
        self._drops: Counter[str] = Counter()
        self._dead_log: list[dict[str, Any]] = []
        self._revived_log: list[dict[str, Any]] = []
        self._t0 = time.monotonic()
        self.events = EventLog(me, self.log, stdout=options.events, t0=self._t0)
        self._event = self.events.event
        self._rejected = self.events.rejected
        self.evaluations: list[EvalRecord] = []
        self._bytes_base = (0, 0)
        self._resumed: dict[str, Any] | None = None
        self._x: Tensor | None = None
        self._last_checkpoint = 0

    # ------------------------------------------------------------------ transport callbacks
    def on_reject(self, kind: str, source: str, detail: str) -> None:
        """One log line per refused message or peer (stderr lines rate-limited per
        kind and source; every one goes to ``log.jsonl``)."""
        self.events.reject(kind, source, detail)

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
            refused = step_window(message, self._cur, key in self._inbox)
            if refused is None:
                self._inbox[key] = (message.payload, message.count)
                self._cv.notify_all()
                return
        self.on_reject(refused.kind, source, refused.detail)

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
            try:
                self.out.mkdir(parents=True, exist_ok=True)
                self.events.open(self.out / "log.jsonl")
            except OSError as err:
                raise ConfigError(
                    f"cannot write into --out {self.out} ({err.strerror or err}); pass a "
                    "writable folder"
                ) from None
        beat = threading.Thread(target=self._heartbeat_loop, name="relayfl-heartbeat", daemon=True)
        try:
            checkpoint = self._load_checkpoint() if self.options.resume else None
            if checkpoint is not None:  # answer status calls with the checkpoint's step
                self._last_checkpoint = int(checkpoint["round"])
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
                self.events.close()

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
            if self.out is not None and (self.out / CHECKPOINT).is_file():
                raise ConfigError(
                    f"the neighbours are at step {current}: the run is under way; restart "
                    f"this node with --resume to continue from {self.out / CHECKPOINT}"
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
        freeze = getattr(trainer, "freeze", None)
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
            try:
                x_half, loss = trainer.train(x, s0, k)
            except DivergenceError as err:  # a Flower client's fit returned non-finite arrays
                self._diverged(str(err))
            t_comm = time.monotonic()
            lr_at = getattr(trainer, "lr_at", None)
            lr = lr_at(s0) if lr_at is not None else math.nan
            message = None
            if getattr(trainer, "reports_loss", True):  # a Flower client may report no loss
                message = divergence.check_loss(loss, step=s0, where=f"node {self.id}", lr=lr)
            due = math.isinf(self._bound) or (s0 + k) // CHECK_EVERY > s0 // CHECK_EVERY
            if message is None and due:
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
                x = freeze(x_new) if freeze is not None else x_new  # requires_grad=False
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
            self._save_result(result, x)
        self._event(
            "done",
            step=config.steps,
            drops=dict(self._drops),
            rejected=dict(self._rejected),
            level=logging.INFO,
            text=f"finished {config.steps} steps",
        )
        return result

    def _save_result(self, result: RunResult, x: Tensor) -> None:
        """``results.json`` and ``model.pt`` (RelayflError, one line, when they cannot
        be written: the run's result must not be lost silently)."""
        assert self.out is not None
        try:
            result.save(self.out)
            torch.save(
                {
                    "node": self.id,
                    "step": self.config.steps,
                    "x": x.detach().cpu(),
                    "state_dict": unpack(x.detach().cpu(), self.trainer.layout)
                    if hasattr(self.trainer, "layout")
                    else None,
                },
                self.out / "model.pt",
            )
        except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError
            raise RelayflError(
                f"cannot write the results of node {self.id} to {self.out}: "
                f"{getattr(err, 'strerror', None) or str(err).splitlines()[0]}; free space or "
                "point --out elsewhere (the run itself finished)"
            ) from None

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
        lr = float(lr_at(max(step - 1, 0))) if lr_at is not None else math.nan
        epoch = step / spe if spe == spe and spe else math.nan
        progress = getattr(self.trainer, "progress", None)  # a Flower client's own counts
        if progress is not None:
            step, epoch = progress(rounds)
        sent, received = self._bytes()
        record = EvalRecord(
            step=step,
            round=rounds,
            epoch=epoch,
            lr=lr,
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
        task_info.update(getattr(self.trainer, "task_info", {}))  # a Flower client's own
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
                "client_metrics": getattr(self.trainer, "client_metrics", []),
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
        path = self.out / CHECKPOINT
        try:
            save_checkpoint(path, state)
        except OSError as err:
            # the neighbours depend on this node: keep training on the last good one
            kept = f"{path} of step {self._last_checkpoint}" if self._last_checkpoint else "none"
            self._event(
                "checkpoint-failed",
                round=next_round,
                path=str(path),
                error=err.strerror or str(err),
                errno=err.errno,
                level=logging.ERROR,
                text=(
                    f"cannot write checkpoint {path}: {err.strerror or err}; free space or "
                    f"point --out elsewhere; training goes on (last good checkpoint: {kept})"
                ),
            )
            return
        self._last_checkpoint = next_round
        self._event("checkpoint", round=next_round)

    def _load_checkpoint(self) -> dict[str, Any]:
        path = self.out / CHECKPOINT if self.out is not None else None
        return load_checkpoint(path, self.run_id, self.id)

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
