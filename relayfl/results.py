"""One result schema for every command: ``simulate``, ``compare``, ``node``, Flower runs.

A :class:`RunResult` holds the full config, library versions, the topology summary and
one :class:`EvalRecord` per evaluation. It saves as ``results.json`` plus a CSV of the
evaluations, and loads back.
"""

from __future__ import annotations

import csv
import json
import math
import platform
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "EvalRecord",
    "RunResult",
    "dumps",
    "json_default",
    "library_versions",
]

SCHEMA_VERSION = 1

#: How a run ended, ``RunResult.status``: ran every step, stopped by the user
#: (Ctrl-C / SIGTERM), stopped because training diverged, or a deployed node failed
#: (``relayfl launch``: the evaluations are those the nodes logged before).
STATUSES = ("completed", "interrupted", "diverged", "failed")


@dataclass
class EvalRecord:
    """Every worker's model evaluated on the test set at one step.

    Attributes
    ----------
    step, round : int
        Local optimizer steps done, communication rounds done.
    epoch : float
        Fractional epochs over a worker's partition.
    lr : float
        Learning rate of the last step.
    mean_accuracy, worst_accuracy, best_accuracy : float
        Over workers (the paper reports the worst worker).
    mean_loss, worst_loss : float
        Test loss over workers.
    train_loss : float
        Mean training loss over workers at the last step.
    consensus_distance : float
        Mean squared distance of the workers' models from their average.
    accuracies, losses : list of float
        Per worker.
    bytes_sent, bytes_received : list of int
        Per worker, cumulative.
    wall_s : float
        Seconds since the run started.
    """

    step: int
    round: int
    epoch: float
    lr: float
    mean_accuracy: float
    worst_accuracy: float
    best_accuracy: float
    mean_loss: float
    worst_loss: float
    train_loss: float
    consensus_distance: float
    accuracies: list[float]
    losses: list[float]
    bytes_sent: list[int]
    bytes_received: list[int]
    wall_s: float

    @property
    def mean_bytes_sent(self) -> float:
        return sum(self.bytes_sent) / max(len(self.bytes_sent), 1)


@dataclass
class RunResult:
    """A finished run, in the schema every relayfl command writes.

    Attributes
    ----------
    config : dict
        ``RunConfig.to_dict()``: enough to re-run it.
    evaluations : list of EvalRecord
    topology : dict
        Summary of each graph used (nodes, edges, diameter, max degree, delay factor).
    versions : dict
        Python, relayfl, torch, numpy, networkx (and flwr where used).
    task : dict
        Dataset, model, number of parameters, partition sizes.
    wall_s : float
    engine : str
        Which engine ran (``batched``, ``loop``, ``flower``, ``node``).
    extra : dict
        Anything else a command wants to keep (e.g. drops, dead nodes).
    status : str
        One of :data:`STATUSES`: ``completed``, ``interrupted``, ``diverged`` or
        ``failed``.
    """

    config: dict[str, Any]
    evaluations: list[EvalRecord]
    topology: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    engine: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    status: str = "completed"
    schema: int = SCHEMA_VERSION
    #: Final flat parameters of every worker, Tensor[n, d] (in memory only, not saved).
    models: Any = field(default=None, repr=False, compare=False)
    #: ``relay.Layout`` of the flat vector, to unpack ``models`` into named tensors.
    layout: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # the topology actually used, not None for "the algorithm's default"
        if self.config.get("topology") is None and self.topology.get("name"):
            self.config = {**self.config, "topology": self.topology["name"]}

    @property
    def final(self) -> EvalRecord:
        """The last evaluation."""
        if not self.evaluations:
            raise ValueError("this result holds no evaluation")
        return self.evaluations[-1]

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def own_partition(self) -> bool:
        """True for a Flower client's run: it split its data itself, so ``alpha`` and
        ``dataset`` in ``config`` are relayfl's unused defaults (tables say ``own``)."""
        return str(self.task.get("partition", "")).startswith("the client's own")

    def summary(self) -> dict[str, Any]:
        """One table row: algorithm, topology, alpha, accuracies, bytes, wall time."""
        f = self.final
        return {
            "algorithm": self.config.get("algorithm"),
            "topology": self.config.get("topology"),
            "alpha": "own" if self.own_partition else self.config.get("alpha"),
            "seed": self.seed,
            "clients": self.config.get("num_clients"),
            "steps": f.step,
            "mean_accuracy": f.mean_accuracy,
            "worst_accuracy": f.worst_accuracy,
            "mean_loss": f.mean_loss,
            "bytes_per_client": f.mean_bytes_sent,
            "wall_s": self.wall_s,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of everything but the in-memory ``models`` and ``layout``."""
        out = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("models", "layout")
        }
        out["evaluations"] = [asdict(e) for e in self.evaluations]
        return out

    def state_dict(self, worker: int) -> dict[str, Any]:
        """Worker ``worker``'s final parameters as named tensors (``model.load_state_dict``
        with ``strict=False`` takes them)."""
        from relayfl.relay import unpack

        if self.models is None or self.layout is None:
            raise ValueError("this result holds no models (results loaded from disk do not)")
        return unpack(self.models[worker], self.layout)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        """The inverse of :meth:`to_dict`; a ``null`` that :func:`dumps` wrote for a NaN
        in an evaluation's float field reads back as NaN."""
        data = {k: v for k, v in data.items() if k not in ("models", "layout")}
        data["evaluations"] = [
            EvalRecord(**{k: _nan_for_null(k, v) for k, v in e.items()})
            for e in data.get("evaluations", [])
        ]
        return cls(**data)

    def save(self, out: str | Path) -> Path:
        """Write ``results.json`` and ``evaluations.csv`` into folder ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "results.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(dumps(self.to_dict()))
        tmp.replace(path)  # never a half-written results.json
        self.write_csv(out / "evaluations.csv")
        return path

    def write_csv(self, path: str | Path) -> None:
        """One row per evaluation; per-worker lists as ';'-joined columns."""
        rows = [asdict(e) for e in self.evaluations]
        if not rows:
            return
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {k: ";".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()}
                )

    @classmethod
    def load(cls, path: str | Path) -> RunResult:
        """Read a ``results.json`` (or the folder holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / "results.json"
        return cls.from_dict(json.loads(path.read_text()))


#: EvalRecord fields holding floats (or lists of them), where ``null`` means NaN.
_FLOAT_FIELDS = frozenset(f.name for f in fields(EvalRecord) if "float" in str(f.type))


def _nan_for_null(name: str, value: Any) -> Any:
    if name not in _FLOAT_FIELDS:
        return value
    if value is None:
        return math.nan
    if isinstance(value, list):
        return [math.nan if v is None else v for v in value]
    return value


def _strict(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_strict(v) for v in obj]
    if hasattr(obj, "tolist"):  # tensors and arrays, after conversion
        return _strict(obj.tolist())
    return obj


def dumps(data: Any, *, indent: int | None = 1) -> str:
    """Strict JSON text of ``data``: NaN and infinities become ``null``.

    Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which is not JSON
    (RFC 8259): ``jq``, JavaScript and most other readers reject the file. Tensors and
    arrays are written as lists, paths as strings.

    Raises
    ------
    TypeError
        A value that is neither JSON, a tensor/array nor a path.
    """
    return json.dumps(_strict(data), indent=indent, default=json_default, allow_nan=False)


def json_default(obj: Any) -> Any:
    """``json.dumps(default=)`` for tensors and arrays (``tolist``) and paths."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def library_versions(*extra: str) -> dict[str, str]:
    """Versions of Python and the libraries a run depends on.

    Read from the installed distributions' metadata (``importlib.metadata``), so asking
    for ``flwr`` never imports it.
    """
    out = {"python": platform.python_version()}
    core = ("relayfl", "torch", "torchvision", "numpy", "scikit-learn", "networkx", "flwr")
    for name in dict.fromkeys((*core, *extra)):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
