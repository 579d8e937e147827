"""``relayfl compare``: a grid of algorithms x alphas x seeds on one task, in one table.

Every run uses the identical Dirichlet split for its (alpha, seed), the same model and the
same budget of local samples (``rounds x local_steps`` steps of ``batch_size`` per
client). ``relaysgd``, ``dpsgd``, ``allreduce`` (and the simulator's other baselines) run
on relayfl's simulator; ``fedavg`` runs through Flower's own FedAvg strategy on Flower's
simulation engine with relayfl's ready clients. Each algorithm uses its own default
topology unless ``--topology`` says otherwise.

With ``--client module:attr`` (a Flower ``client_fn`` or ``ClientApp``) the user's client
and partitions run instead: ``relaysgd`` / ``dpsgd`` through
:func:`relayfl.flower.simulate_clients`, ``fedavg`` through
:func:`relayfl.flower.run_fedavg` (the global model evaluated by every client's own
``evaluate``); ``allreduce``, the simulator's reference for a ``Task``, is left out (said
once), and ``alpha`` does not apply (the client's own partitions).

Outputs in ``--out``: ``results.json`` (the spec, the summary and every run in the core
schema), ``summary.csv`` and ``runs.csv``, ``accuracy_vs_round.png`` (mean and
worst-client accuracy per algorithm, one panel per alpha) and ``worst_vs_alpha.png``
(final worst-client accuracy against alpha, mean +- std over seeds).

A TOML file gives the same options for repeatable experiments
(``simulations/compare_digits.toml``)::

    [compare]
    dataset = "digits"
    alpha = [1.0, 0.1, 0.01]
    algorithms = ["relaysgd", "dpsgd", "fedavg", "allreduce"]
    seeds = 3
    rounds = 50

    [run]            # any other RunConfig field, kebab-case
    batch-size = 32
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from relayfl.algorithms import ALGORITHMS
from relayfl.config import RunConfig
from relayfl.errors import ConfigError, RelayflError
from relayfl.results import RunResult, dumps
from relayfl.threads import AUTO, parse_threads, set_threads

__all__ = [
    "COMPARE_ALGORITHMS",
    "CompareResult",
    "CompareSpec",
    "add_compare_parser",
    "plot_accuracy_vs_round",
    "plot_worst_vs_alpha",
    "run_compare",
]

#: What ``compare`` runs: the simulator's algorithms plus Flower's FedAvg.
COMPARE_ALGORITHMS: tuple[str, ...] = (*ALGORITHMS, "fedavg")

#: What ``compare --client`` runs on a Flower client.
_CLIENT_ALGORITHMS = ("relaysgd", "relaysgd-grad", "dpsgd", "fedavg")

#: Algorithms whose topology ``--topology`` does not change.
_NO_TOPOLOGY = ("fedavg", "allreduce")


def _alpha_text(alpha: float) -> str:
    return "iid" if math.isinf(alpha) else f"{alpha:g}"


@dataclass(frozen=True)
class CompareSpec:
    """One comparison grid.

    Parameters
    ----------
    dataset : str
    clients : int
    alphas : tuple of float
        Dirichlet concentrations (``math.inf`` = IID).
    algorithms : tuple of str
        Any of :data:`COMPARE_ALGORITHMS`.
    seeds : tuple of int
    rounds : int
        Communication rounds per run.
    local_steps : int
        Local steps per round (1 for RelaySGD as in the paper).
    topology : str, optional
        Overrides every algorithm's default topology (not FedAvg's or all-reduce's).
    eval_every : int, optional
        Evaluate every k rounds (default: ``max(1, rounds // 10)``).
    run : dict
        Any other :class:`RunConfig` field (snake_case or kebab-case keys).
    out : str
    quiet : bool
        No per-run lines (Flower's own log is always kept to warnings here).
    client : str, optional
        ``module:attribute`` of the user's Flower ``client_fn`` or ``ClientApp``.
    initial : str, optional
        The initial model file of ``client`` (``.pt`` state_dict or ``.npz``).
    run_config : dict
        The client's ``context.run_config`` entries.
    """

    dataset: str = "digits"
    clients: int = 16
    alphas: tuple[float, ...] = (1.0, 0.1, 0.01)
    algorithms: tuple[str, ...] = ("relaysgd", "dpsgd", "fedavg", "allreduce")
    seeds: tuple[int, ...] = (0, 1, 2)
    rounds: int = 50
    local_steps: int = 1
    topology: str | None = None
    eval_every: int | None = None
    run: dict[str, Any] = field(default_factory=dict)
    out: str = "results/compare"
    quiet: bool = False
    client: str | None = None
    initial: str | None = None
    run_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.client:
            self._client_grid()
        unknown = [a for a in self.algorithms if a not in COMPARE_ALGORITHMS]
        if unknown or not self.algorithms:
            raise ConfigError(
                f"unknown algorithms {unknown or '(none given)'}; use a comma-separated "
                f"subset of {', '.join(COMPARE_ALGORITHMS)}"
            )
        if not self.alphas or not self.seeds:
            raise ConfigError("give at least one alpha and one seed, e.g. --alpha 0.1 --seeds 1")
        for name in ("rounds", "local_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ConfigError(f"eval_every (rounds) must be >= 1, got {self.eval_every}")
        for algorithm in self.algorithms:  # every cell's run options, before any work
            self.config(algorithm, self.alphas[0], self.seeds[0])

    def _client_grid(self) -> None:
        """A Flower client runs relaysgd, relaysgd-grad, dpsgd and fedavg, on its own
        partitions (one alpha); allreduce is left out, saying so."""
        if "allreduce" in self.algorithms:
            kept = tuple(a for a in self.algorithms if a != "allreduce")
            object.__setattr__(self, "algorithms", kept)
            print(
                "relayfl compare: allreduce is the simulator's reference for relayfl Tasks; "
                "left out for a Flower --client",
                file=sys.stderr,
            )
        bad = [a for a in self.algorithms if a not in _CLIENT_ALGORITHMS]
        if bad:
            raise ConfigError(
                f"--client runs {', '.join(_CLIENT_ALGORITHMS)}, not {', '.join(bad)}; "
                "drop them from --algorithms"
            )
        object.__setattr__(self, "alphas", self.alphas[:1])

    @property
    def eval_rounds(self) -> int:
        return self.eval_every or max(1, self.rounds // 10)

    def config(self, algorithm: str, alpha: float, seed: int) -> RunConfig:
        """The :class:`RunConfig` of one cell (FedAvg's clients train as ``allreduce``)."""
        extra = {k.replace("-", "_"): v for k, v in self.run.items()}
        topology = None if algorithm in _NO_TOPOLOGY else self.topology
        return RunConfig.from_dict(
            {
                **RunConfig().to_dict(),
                **extra,
                "algorithm": "allreduce" if algorithm == "fedavg" else algorithm,
                "topology": topology,
                "num_clients": self.clients,
                "alpha": "iid" if math.isinf(alpha) else alpha,
                "dataset": self.dataset,
                "seed": seed,
                "steps": self.rounds * self.local_steps,
                "local_steps": self.local_steps,
                "eval_every": self.eval_rounds * self.local_steps,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["alphas"] = [_alpha_text(a) for a in self.alphas]
        return out

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> CompareSpec:
        """Read ``[compare]`` (and ``[run]``) from a TOML file; ``overrides`` win."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found; pass an existing TOML file") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
        table = {k.replace("-", "_"): v for k, v in data.get("compare", {}).items()}
        if "alpha" in table:
            table["alphas"] = table.pop("alpha")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(
                f"{path}: unknown [compare] keys {unknown}; valid: {sorted(known)} "
                "(other RunConfig fields go in [run])"
            )
        values = {**table, "run": {**data.get("run", {}), **table.get("run", {})}}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**_normalise(values))


def _normalise(values: dict[str, Any]) -> dict[str, Any]:
    """Lists/strings/ints from TOML or the CLI into the spec's types."""
    out = dict(values)
    if "alphas" in out:
        out["alphas"] = tuple(_parse_alpha(a) for a in _as_list(out["alphas"]))
    if "algorithms" in out:
        out["algorithms"] = tuple(str(a).strip() for a in _as_list(out["algorithms"]))
    if "seeds" in out:
        seeds = out["seeds"]
        if isinstance(seeds, int):
            out["seeds"] = tuple(range(seeds))
        else:
            out["seeds"] = tuple(int(s) for s in _as_list(seeds))
    return out


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [v for v in value.split(",") if v.strip()]
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _parse_alpha(value: Any) -> float:
    if isinstance(value, str) and value.strip().lower() in ("iid", "inf"):
        return math.inf
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"alpha must be a number or 'iid', got {value!r}") from None


@dataclass
class CompareResult:
    """All runs of a comparison and their summary rows (one per algorithm and alpha)."""

    spec: CompareSpec
    runs: list[RunResult]
    summary: list[dict[str, Any]]
    wall_s: float
    #: ``completed``, or ``interrupted`` while the grid runs and when a run of it failed
    #: or was stopped (the runs finished before are kept).
    status: str = "completed"

    def save(self, out: str | Path) -> Path:
        """Write ``results.json``, ``summary.csv`` and ``runs.csv`` into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "results.json"
        data = {
            "status": self.status,
            "spec": self.spec.to_dict(),
            "summary": self.summary,
            "wall_s": self.wall_s,
            "runs": [r.to_dict() for r in self.runs],
        }
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(dumps(data))
        tmp.replace(path)
        _write_csv(out / "summary.csv", self.summary)
        _write_csv(out / "runs.csv", [_run_row(r) for r in self.runs])
        return path


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _run_row(result: RunResult) -> dict[str, Any]:
    row = result.summary()
    row["engine"] = result.engine
    return row


def _summarise(runs: list[tuple[str, float, RunResult]]) -> list[dict[str, Any]]:
    """Mean and std over seeds of each (algorithm, alpha) cell, in grid order."""
    cells: dict[tuple[str, float], list[RunResult]] = {}
    for algorithm, alpha, result in runs:
        cells.setdefault((algorithm, alpha), []).append(result)
    rows = []
    for (algorithm, alpha), results in cells.items():
        mean = np.array([r.final.mean_accuracy for r in results])
        worst = np.array([r.final.worst_accuracy for r in results])
        rows.append(
            {
                "algorithm": algorithm,
                "topology": results[0].config.get("topology")
                or results[0].topology.get("name", ""),
                "alpha": "own" if results[0].own_partition else _alpha_text(alpha),
                "seeds": len(results),
                "mean_accuracy": float(mean.mean()),
                "mean_accuracy_std": float(mean.std()),
                "worst_accuracy": float(worst.mean()),
                "worst_accuracy_std": float(worst.std()),
                "bytes_per_client": float(np.mean([r.final.mean_bytes_sent for r in results])),
                "wall_s": float(np.mean([r.wall_s for r in results])),
                "engine": results[0].engine,
            }
        )
    return rows


def _fedavg(spec: CompareSpec, config: RunConfig, task: Any) -> RunResult:
    from relayfl.flower import run_fedavg, task_app

    # Flower's INFO log (every round, every aggregate) would bury the table: warnings only
    return run_fedavg(task_app(spec.dataset), config, task=task, quiet=True)


def _client_run(spec: CompareSpec, algorithm: str, config: RunConfig) -> RunResult:
    """One cell on the user's Flower client (relay in process, FedAvg on Flower)."""
    from relayfl.flower import run_fedavg, simulate_clients
    from relayfl.flower.fedavg import client_evaluator
    from relayfl.flower.inputs import load_client, load_initial

    client = load_client(str(spec.client))
    initial = load_initial(spec.initial) if spec.initial else None
    if algorithm != "fedavg":
        return simulate_clients(
            client, config, initial_arrays=initial, run_config=spec.run_config, return_models=False
        )
    evaluate = client_evaluator(client, config, initial_arrays=initial, run_config=spec.run_config)
    return run_fedavg(
        client,
        config,
        initial_arrays=initial,
        evaluate_fn=evaluate,
        run_config=spec.run_config,
        quiet=True,
    )


def run_compare(
    spec: CompareSpec,
    *,
    log: Callable[[str], None] | None = print,
    save_to: str | Path | None = None,
) -> CompareResult:
    """Run every (alpha, seed, algorithm) of ``spec``; see the module docstring.

    Parameters
    ----------
    spec : CompareSpec
    log : callable, optional
        Receives one line per finished run (default ``print``; None for silence).
    save_to : str or Path, optional
        Folder to write the runs finished so far into after every run, with
        ``"status": "interrupted"`` until the last one, so that a failure or Ctrl-C late
        in a grid keeps what finished.

    Returns
    -------
    CompareResult
    """
    from relayfl.simulation import simulate

    started = time.perf_counter()
    say = (lambda _: None) if (log is None or spec.quiet) else log
    base = spec.config("relaysgd", spec.alphas[0], spec.seeds[0])
    task = None if spec.client else base.load_task()
    total = len(spec.alphas) * len(spec.seeds) * len(spec.algorithms)
    done: list[tuple[str, float, RunResult]] = []
    for alpha in spec.alphas:
        for seed in spec.seeds:
            for algorithm in spec.algorithms:
                config = spec.config(algorithm, alpha, seed)
                t = time.perf_counter()
                if spec.client:
                    result = _client_run(spec, algorithm, config)
                elif algorithm == "fedavg":
                    result = _fedavg(spec, config, task)
                else:
                    result = simulate(task, config)
                result.config["topology"] = result.config.get("topology") or (
                    "star" if algorithm == "fedavg" else config.topology_name
                )
                done.append((algorithm, alpha, result))
                if save_to is not None and len(done) < total:
                    _partial(spec, done, started).save(save_to)
                f = result.final
                shown = "own" if result.own_partition else _alpha_text(alpha)
                say(
                    f"[{len(done)}/{total}] {algorithm:<10} alpha={shown:<5} "
                    f"seed={seed}: mean {f.mean_accuracy:.3f}, worst {f.worst_accuracy:.3f} "
                    f"({result.wall_s:.1f} s run, {time.perf_counter() - t:.1f} s in all, "
                    f"{result.engine})"
                )
    result = _partial(spec, done, started)
    result.status = "completed"
    return result


def _partial(
    spec: CompareSpec, done: list[tuple[str, float, RunResult]], started: float
) -> CompareResult:
    return CompareResult(
        spec=spec,
        runs=[r for _, _, r in done],
        summary=_summarise(done),
        wall_s=time.perf_counter() - started,
        status="interrupted",
    )


# ---------------------------------------------------------------------------- plots
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h")


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _curves(results: Sequence[RunResult]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Rounds and the seed-mean of mean / worst accuracy at the evaluations all share."""
    rounds = sorted(set.intersection(*[{e.round for e in r.evaluations} for r in results]))
    mean = np.array(
        [
            [next(e.mean_accuracy for e in r.evaluations if e.round == k) for k in rounds]
            for r in results
        ]
    )
    worst = np.array(
        [
            [next(e.worst_accuracy for e in r.evaluations if e.round == k) for k in rounds]
            for r in results
        ]
    )
    return rounds, mean.mean(0), worst.mean(0)


def plot_accuracy_vs_round(result: CompareResult, path: str | Path) -> Path:
    """Mean (solid) and worst-client (dashed) accuracy against rounds, per algorithm,
    averaged over seeds; one panel per alpha."""
    spec = result.spec
    groups: dict[tuple[str, float], list[RunResult]] = {}
    for r in result.runs:
        algorithm = r.config["algorithm"]
        alpha = _parse_alpha(r.config["alpha"])
        groups.setdefault((algorithm, alpha), []).append(r)
    k = len(spec.alphas)
    fig = _figure((5.5 * k, 5.0))
    count = max(len(spec.algorithms), 1)
    for i, alpha in enumerate(spec.alphas):
        ax = fig.add_subplot(1, k, i + 1)
        for j, algorithm in enumerate(spec.algorithms):
            runs = groups.get((algorithm, alpha))
            if not runs:
                continue
            rounds, mean, worst = _curves(runs)
            # equal curves stay visible: hollow markers and lines that shrink with the
            # algorithm's index, so a later curve drawn on an earlier one leaves its rim
            style = {
                "color": f"C{j % 10}",
                "marker": _MARKERS[j % len(_MARKERS)],
                "markersize": 5 + 8 * (count - 1 - j) / count,
                "markerfacecolor": "none",
                "markeredgewidth": 1.5,
                "linewidth": 1.0 + 3.0 * (count - 1 - j) / count,
                "alpha": 0.85,
            }
            ax.plot(rounds, mean, label=f"{algorithm} (mean)", **style)
            ax.plot(rounds, worst, linestyle="--", label=f"{algorithm} (worst)", **style)
        ax.set_title(
            f"{spec.client}, {spec.clients} clients"
            if spec.client
            else f"{spec.dataset}, {spec.clients} clients, alpha={_alpha_text(alpha)}"
        )
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=9, loc="best")
    return _save(fig, path)


def plot_worst_vs_alpha(result: CompareResult, path: str | Path) -> Path:
    """Final worst-client accuracy against alpha per algorithm (mean +- std over seeds)."""
    spec = result.spec
    alphas = sorted(spec.alphas)
    finite = all(math.isfinite(a) for a in alphas)
    xs = alphas if finite else list(range(len(alphas)))
    fig = _figure((7.5, 5.2))
    ax = fig.add_subplot()
    count = max(len(spec.algorithms), 1)
    for j, algorithm in enumerate(spec.algorithms):
        rows = {r["alpha"]: r for r in result.summary if r["algorithm"] == algorithm}
        cells = [rows.get(_alpha_text(a)) or rows.get("own", {}) for a in alphas]  # own: --client
        ys = [c.get("worst_accuracy", math.nan) for c in cells]
        es = [c.get("worst_accuracy_std", 0.0) for c in cells]
        ax.errorbar(
            xs,
            ys,
            yerr=es,
            marker=_MARKERS[j % len(_MARKERS)],
            markersize=6 + 8 * (count - 1 - j) / count,
            markerfacecolor="none",
            markeredgewidth=1.5,
            capsize=4,
            linewidth=1.0 + 3.0 * (count - 1 - j) / count,
            alpha=0.85,
            color=f"C{j % 10}",
            label=algorithm,
        )
    if finite and len(set(alphas)) > 1 and min(alphas) > 0:
        ax.set_xscale("log")
    else:
        ax.set_xticks(xs, [_alpha_text(a) for a in alphas])
    ax.set_xlabel("Dirichlet alpha (smaller = more label skew)")
    ax.set_ylabel("final worst-client test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=10)
    ax.set_title(f"{spec.client or spec.dataset}, {spec.clients} clients, {spec.rounds} rounds")
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    return path


# ---------------------------------------------------------------------------- table / CLI
def print_table(result: CompareResult, file: Any = None) -> None:
    """The summary as one rich table (mean +- std over seeds)."""
    from rich.console import Console
    from rich.table import Table

    spec = result.spec
    table = Table(
        title=f"relayfl compare: {spec.client or spec.dataset}, {spec.clients} clients, "
        f"{spec.rounds} rounds x {spec.local_steps} local steps, seeds {list(spec.seeds)}"
    )
    for col in ("algorithm", "topology", "alpha", "mean acc", "worst acc", "MB/client", "wall s"):
        table.add_column(col, justify="left" if col in ("algorithm", "topology") else "right")
    for r in result.summary:
        table.add_row(
            r["algorithm"],
            str(r["topology"]),
            r["alpha"],
            f"{r['mean_accuracy']:.3f} ± {r['mean_accuracy_std']:.3f}",
            f"{r['worst_accuracy']:.3f} ± {r['worst_accuracy_std']:.3f}",
            f"{r['bytes_per_client'] / 1e6:.2f}",
            f"{r['wall_s']:.1f}",
        )
    console = Console(file=file or sys.stdout, width=max(Console().width, 110))
    console.print(table)


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``relayfl compare`` (flags override the ``--config`` TOML file)."""
    p = sub.add_parser(
        "compare",
        help="compare algorithms (incl. Flower's FedAvg) over alphas and seeds",
        description="Run algorithms x alphas x seeds on one task; print one table, write "
        "results.json, summary.csv, runs.csv and two PNGs into --out.",
    )
    p.add_argument("--config", default=None, help="TOML file with [compare] and [run] tables")
    p.add_argument("--dataset", default=None, help="digits (default), fashion-mnist, ...")
    p.add_argument("--clients", type=int, default=None, help="workers (default 16)")
    p.add_argument("--alpha", dest="alphas", default=None, help="e.g. 1,0.1,0.01 or iid")
    p.add_argument(
        "--algorithms",
        default=None,
        help=f"comma-separated subset of {','.join(COMPARE_ALGORITHMS)} "
        "(default relaysgd,dpsgd,fedavg,allreduce)",
    )
    p.add_argument("--seeds", default=None, help="a count (3: seeds 0,1,2) or a list 0,5,7")
    p.add_argument("--rounds", type=int, default=None, help="communication rounds (default 50)")
    p.add_argument(
        "--local-steps",
        dest="local_steps",
        type=int,
        default=None,
        help="local steps per round (default 1)",
    )
    p.add_argument(
        "--topology",
        default=None,
        help="override every default topology (default: each algorithm's own)",
    )
    p.add_argument(
        "--eval-every",
        dest="eval_every",
        type=int,
        default=None,
        help="rounds between evaluations (default: a tenth of --rounds)",
    )
    d = RunConfig()
    p.add_argument(
        "--batch-size",
        dest="batch_size",
        type=int,
        default=None,
        help=f"samples per local step (default {d.batch_size})",
    )
    p.add_argument("--lr", type=float, default=None, help=f"learning rate (default {d.lr:g})")
    p.add_argument(
        "--data-root",
        dest="data_root",
        default=None,
        help="folder holding the data set files (default: the data set's standard folder)",
    )
    p.add_argument("--out", default=None, help="output folder (default results/compare)")
    p.add_argument("--quiet", action="store_true", default=None, help="no per-run lines")
    p.add_argument(
        "--threads",
        type=parse_threads,
        default=AUTO,
        help="torch CPU threads of the simulator runs: a count, or 'auto' for the cores "
        "other work leaves idle (default: auto)",
    )
    p.add_argument(
        "--client",
        default=None,
        help="module:attribute of your Flower client_fn or ClientApp: relaysgd, dpsgd and "
        "fedavg on it and its partitions (allreduce left out)",
    )
    p.add_argument(
        "--initial",
        default=None,
        help="initial model of --client (.pt state_dict or .npz; needed for a Message-API app)",
    )
    p.add_argument(
        "--run-config",
        dest="run_config",
        default=None,
        help='context.run_config of --client, as flwr run: "local-epochs=2 k=v"',
    )
    p.add_argument(
        "--accuracy-key",
        dest="accuracy_key",
        default=None,
        help="the evaluate metric of a Flower --client that holds accuracy (default: accuracy, "
        "eval-accuracy, eval_acc, eval_accuracy or acc, the first reported)",
    )
    p.set_defaults(handler=run_compare_cli)


def spec_from_args(args: argparse.Namespace) -> CompareSpec:
    """The spec from parsed ``relayfl compare`` arguments (and ``--config``)."""
    seeds: Any = args.seeds
    if isinstance(seeds, str) and "," not in seeds:
        try:
            seeds = int(seeds)
        except ValueError:
            raise ConfigError(f"--seeds takes a count or a list, got {seeds!r}") from None
    values = {
        "dataset": args.dataset,
        "clients": args.clients,
        "alphas": args.alphas,
        "algorithms": args.algorithms,
        "seeds": seeds,
        "rounds": args.rounds,
        "local_steps": args.local_steps,
        "topology": args.topology,
        "eval_every": args.eval_every,
        "out": args.out,
        "quiet": args.quiet,
        "client": args.client,
        "initial": args.initial,
    }
    if args.run_config:
        from relayfl.flower.inputs import parse_run_config

        values["run_config"] = parse_run_config(args.run_config)
    run = {
        k: v
        for k, v in {
            "batch_size": args.batch_size,
            "lr": args.lr,
            "data_root": args.data_root,
            "accuracy_key": args.accuracy_key,
        }.items()
        if v is not None
    }
    if args.config:
        spec = CompareSpec.from_toml(args.config, **values)
        return CompareSpec(**{**asdict(spec), "run": {**spec.run, **run}})
    given = {k: v for k, v in values.items() if v is not None}
    return CompareSpec(**_normalise({**given, "run": run}))


def run_compare_cli(args: argparse.Namespace) -> int:
    """``relayfl compare``: run, print the table, write the files."""
    from relayfl.outdir import check_out, written

    spec = spec_from_args(args)
    out = check_out(spec.out)
    set_threads(args.threads)
    started = time.time()
    try:
        result = run_compare(spec, save_to=out)
    except (RelayflError, KeyboardInterrupt):
        saved = out / "results.json"
        if saved.is_file() and saved.stat().st_mtime >= started:
            print(
                f"relayfl compare: the runs finished before are in {out}/results.json "
                '("status": "interrupted")',
                file=sys.stderr,
            )
        raise
    result.save(out)
    plot_accuracy_vs_round(result, out / "accuracy_vs_round.png")
    plot_worst_vs_alpha(result, out / "worst_vs_alpha.png")
    print_table(result)
    names = ("results.json", "summary.csv", "runs.csv", "accuracy_vs_round.png")
    print(written(out, (*names, "worst_vs_alpha.png"), since=started))
    return 0
