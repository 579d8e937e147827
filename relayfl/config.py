"""One frozen, validated :class:`RunConfig` per run, however it is started."""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import networkx as nx

from relayfl import topology as _topology
from relayfl.algorithms import ALGORITHMS, DEFAULT_TOPOLOGY
from relayfl.errors import ConfigError
from relayfl.optim import OPTIMIZERS
from relayfl.relay import FILLS, NORMALIZATIONS
from relayfl.task import DATASETS, Task, builtin

__all__ = ["RunConfig"]

SPANNING: tuple[str, ...] = ("bfs", "min-diameter")
ENGINES: tuple[str, ...] = ("auto", "batched", "vmap", "loop")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")

#: Default base learning rate per algorithm (digits small CNN, SGD; see README).
DEFAULT_LR: float = 0.1


@dataclass(frozen=True, slots=True)
class RunConfig:
    """One run: ``relayfl simulate``, a Flower app, a node, or Python.

    Parameters
    ----------
    algorithm : str
        One of ``relaysgd``, ``relaysgd-grad``, ``dpsgd``, ``d2``, ``gradient-tracking``,
        ``qgm``, ``sgp``, ``allreduce`` (:data:`relayfl.algorithms.ALGORITHMS`). ``qgm``
        needs ``momentum > 0`` (its quasi-global momentum); ``sgp`` needs a power-of-two
        ``num_clients``.
    topology : str, optional
        A name (``chain``, ``ring``, ``star``, ``binary-tree``, ``double-binary-trees``,
        ``exponential``, ...) or an edge-list file; default per algorithm (relay: binary
        tree, gossip family: ring, sgp: exponential).
    spanning_tree : {"bfs", "min-diameter"}, optional
        Reduce the graph to a spanning tree first (needed for relays on graphs with cycles).
    root : int
        Root of the BFS spanning tree.
    num_clients : int
    alpha : float
        Dirichlet concentration; ``math.inf`` (CLI ``--alpha iid``) gives an IID split.
    even_split : bool
        The paper's even re-split after the Dirichlet draw (docs/algorithm.md section 4).
    dataset : str
        Built-in dataset, when the run is started by name.
    data_root : str, optional
    model : str, optional
    steps : int
        Local optimizer steps per worker.
    local_steps : int
        Steps per communication round (1 for RelaySGD as in the paper).
    batch_size : int
    lr : float
        Base learning rate.
    lr_correction : bool
        For ``relaysgd``, multiply the learning rate by ``1 + mean delay`` of the tree
        (section 1.8: delayed averaging shrinks the effective step by that factor; the
        paper's tuned rates carry it). Ignored by the other algorithms.
    schedule : bool
        Warm-up and step decay (section 1.8); off gives a constant learning rate.
    warmup_epochs : float, optional
        Linear warm-up length (section 1.8). Default: the paper's 5 epochs, capped at
        2.5% of the run (its 5 of 200 epochs) so short runs reach the peak rate; an
        explicit value is honoured (with a warning if it covers the whole run).
    milestones : tuple of float
        Decay points as fractions of the run (the paper's 150/200 and 180/200).
    optimizer : {"sgd", "adam"}
    momentum, weight_decay : float
    nesterov : bool
    fill : {"initial", "latest"}
        RelaySum/Model fill; ``latest`` for lossy links (Table 5).
    normalization : {"world_size", "counts", "sum"}, optional
        Override the relay's normalization.
    drop_probability : float
        Simulated message drop probability (section 1.4).
    eval_every : int
        Evaluate every k steps (0: only at the end).
    eval_limit : int, optional
        Evaluate on the first k test samples.
    dropout : float
        Dropout rate of the built-in small CNN.
    seed : int
    device : str
    engine : {"auto", "batched", "vmap", "loop"}
        ``batched``: all workers as one network (grouped layout, else vmap); ``loop``:
        one worker after another; ``auto``: the fastest that runs the model.
    precision : {"fp32", "bf16"}
        ``bf16`` runs forward/backward under bfloat16 autocast; parameters, optimizer
        state and relay sums stay float32.
    channels_last : bool
        Image activations in channels-last memory format (batched engine).
    accuracy_key : str, optional
        Flower clients only: the ``evaluate`` metric holding the test accuracy (default:
        the first of ``accuracy``, ``eval-accuracy``, ``eval_acc``, ``eval_accuracy``,
        ``acc``). A named key the client does not report is a one-line error.
    """

    algorithm: str = "relaysgd"
    topology: str | None = None
    spanning_tree: str | None = None
    root: int = 0
    num_clients: int = 16
    alpha: float = 0.1
    even_split: bool = True
    dataset: str = "digits"
    data_root: str | None = None
    model: str | None = None
    steps: int = 300
    local_steps: int = 1
    batch_size: int = 32
    lr: float = DEFAULT_LR
    lr_correction: bool = True
    schedule: bool = True
    warmup_epochs: float | None = None
    milestones: tuple[float, ...] = (0.75, 0.9)
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 1e-4
    nesterov: bool = True
    fill: str = "initial"
    normalization: str | None = None
    drop_probability: float = 0.0
    eval_every: int = 50
    eval_limit: int | None = None
    dropout: float = 0.0
    seed: int = 0
    device: str = "cpu"
    engine: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    accuracy_key: str | None = None

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(msg)

        if self.algorithm not in ALGORITHMS:
            bad(f"unknown algorithm {self.algorithm!r}; use one of {', '.join(ALGORITHMS)}")
        if not (self.alpha > 0):  # also catches NaN
            bad(
                f"alpha must be > 0, got {self.alpha}; use e.g. 0.1 for strong label skew, "
                "100 for nearly IID, or 'iid'"
            )
        if self.num_clients < 1:
            bad(f"num_clients must be >= 1, got {self.num_clients}")
        for name in ("steps", "local_steps", "batch_size"):
            if getattr(self, name) < 1:
                bad(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.eval_limit is not None and self.eval_limit < 1:
            bad(
                f"eval-limit must be >= 1 (the first K test samples), got {self.eval_limit}; "
                "omit it to evaluate on the whole test set"
            )
        if self.accuracy_key is not None and not (
            isinstance(self.accuracy_key, str) and self.accuracy_key.strip()
        ):
            bad(
                f"accuracy-key must name the evaluate metric holding accuracy, got "
                f"{self.accuracy_key!r}; omit it to use accuracy / eval_acc / acc"
            )
        if self.eval_every < 0:
            bad(f"eval-every must be >= 0 (0: only at the end), got {self.eval_every}")
        if not (self.lr >= 0 and math.isfinite(self.lr)):
            bad(f"lr must be a finite number >= 0, got {self.lr}")
        if not 0 <= self.drop_probability < 1:
            bad(f"drop-probability must be in [0, 1), got {self.drop_probability}")
        if not 0 <= self.dropout < 1:
            bad(f"dropout must be in [0, 1), got {self.dropout}")
        if self.spanning_tree not in (None, *SPANNING):
            bad(f"unknown spanning tree {self.spanning_tree!r}; use {' or '.join(SPANNING)}")
        if self.optimizer not in OPTIMIZERS:
            bad(f"unknown optimizer {self.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
        if self.fill not in FILLS:
            bad(f"unknown fill {self.fill!r}; use one of {', '.join(FILLS)}")
        if self.normalization not in (None, *NORMALIZATIONS):
            bad(
                f"unknown normalization {self.normalization!r}; "
                f"use one of {', '.join(NORMALIZATIONS)}"
            )
        if self.precision not in PRECISIONS:
            bad(f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if self.engine not in ENGINES:
            bad(f"unknown engine {self.engine!r}; use one of {', '.join(ENGINES)}")
        if self.warmup_epochs is not None and not (
            self.warmup_epochs >= 0 and math.isfinite(self.warmup_epochs)
        ):
            bad(f"warmup-epochs must be a finite number >= 0, got {self.warmup_epochs}")
        if any(not 0 < f <= 1 for f in self.milestones):
            bad(f"milestones are fractions of the run in (0, 1], got {self.milestones}")
        if self.dataset not in DATASETS:
            bad(f"unknown dataset {self.dataset!r}; use one of {', '.join(DATASETS)}")
        if self.algorithm == "qgm" and (self.momentum <= 0 or self.optimizer != "sgd"):
            bad(
                f"qgm (quasi-global momentum) needs --optimizer sgd and --momentum > 0, got "
                f"{self.optimizer} with momentum {self.momentum}; use e.g. --momentum 0.9"
            )
        n = self.num_clients
        if self.algorithm == "sgp" and n & (n - 1):
            bad(
                f"sgp needs a power-of-two number of clients (time-varying exponential "
                f"graph), got {n}; use e.g. --clients {1 << (n - 1).bit_length()}"
            )
        if self.drop_probability > 0 and self.algorithm == "allreduce":
            bad(
                "drop-probability applies to decentralized links; allreduce has none. "
                "Use --algorithm relaysgd or dpsgd"
            )

    @property
    def topology_name(self) -> str:
        """The topology actually used (the algorithm's default when unset)."""
        return self.topology or DEFAULT_TOPOLOGY[self.algorithm]

    @property
    def iid(self) -> bool:
        return math.isinf(self.alpha)

    def build_graphs(self) -> tuple[nx.Graph, ...]:
        """The run's graphs: :func:`relayfl.topology.build` of :attr:`topology_name` on
        ``num_clients`` workers, reduced by ``spanning_tree`` (from ``root``)."""
        return _topology.build(
            self.topology_name, self.num_clients, root=self.root, spanning=self.spanning_tree
        )

    def load_task(self) -> Task:
        """The built-in :class:`~relayfl.task.Task` this run names (``dataset``,
        ``data_root``, ``model``, ``eval_limit``, ``dropout``)."""
        return builtin(
            self.dataset,
            root=self.data_root,
            model=self.model,
            limit_test=self.eval_limit,
            dropout=self.dropout,
        )

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (validated again)."""
        return RunConfig(**{**asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (``alpha`` inf becomes the string ``"iid"``)."""
        out = asdict(self)
        out["milestones"] = list(self.milestones)
        if self.iid:
            out["alpha"] = "iid"
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; valid keys: {sorted(known)}")
        data = dict(data)
        if data.get("alpha") == "iid":
            data["alpha"] = math.inf
        if "milestones" in data:
            data["milestones"] = tuple(data["milestones"])
        return cls(**data)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunConfig:
        """Build from parsed ``relayfl simulate`` arguments (dest names = field names)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in vars(args).items() if k in known and v is not None}
        return cls(**values)

    def to_flower(self) -> dict[str, bool | int | float | str]:
        """Flower run-config form: kebab-case keys and Flower's scalar values only
        (``num_clients`` -> ``"num-clients"``, alpha inf -> ``"iid"``, milestones as
        ``"0.75,0.9"``, no ``None``), valid in a ``ConfigRecord``, a legacy fit config
        and ``flwr run --run-config``."""
        out = {}
        for k, v in self.to_dict().items():
            if isinstance(v, list | tuple):
                v = ",".join(str(x) for x in v)
            if v is not None:
                out[k.replace("_", "-")] = v
        return out

    @classmethod
    def from_flower(cls, run_config: Any, *, base: RunConfig | None = None) -> RunConfig:
        """Build from a Flower ``context.run_config`` or ``ConfigRecord`` (kebab-case keys).

        Keys that are not config fields (``server-round``, ``num-server-rounds``, ...) are
        ignored; missing fields keep the value of ``base`` (default: ``RunConfig()``); an
        empty string stands for None (TOML has no null).
        """
        known = {f.name for f in fields(cls)}
        values = {k.replace("-", "_"): v for k, v in dict(run_config).items()}
        values = {k: v for k, v in values.items() if k in known}
        optional = {f.name for f in fields(cls) if f.default is None}
        values = {k: None if v == "" and k in optional else v for k, v in values.items()}
        if isinstance(values.get("milestones"), str):
            text = values["milestones"]
            values["milestones"] = [float(x) for x in text.split(",") if x.strip()]
        return cls.from_dict({**(base or cls()).to_dict(), **values})
