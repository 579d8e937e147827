"""Table 2 and Table 5 of the paper on real Fashion-MNIST, at a CPU-sized budget.

The paper's setting is CIFAR-10 / VGG-11 for 200 epochs on GPUs (``table2_cifar10.json``
holds it for users with the data and a GPU). Here every run uses the same 16 workers,
Dirichlet label skew, local SGD with the paper's schedule, batch size and weight decay,
but a small CNN and a few epochs, so the whole table fits on 2 CPU cores:

* data: Debian's ``dataset-fashion-mnist`` (60,000 training images, read by
  ``relayfl.task.builtin``), evaluation on a fixed seeded subset of 2,000 test images;
* model: :func:`cnn` (two strided convolutions and two linear layers, 26,826
  parameters);
* :data:`STEPS` steps of batch 32 per worker (about 2.6 epochs of the 3,750 images
  each worker holds), warm-up over the first :data:`WARMUP_EPOCHS` epochs, learning rate
  x0.1 at 75% and 90% of the run (the paper's 150/200 and 180/200 epochs);
* metric: each worker's test accuracy at the end of training, then the worst worker
  (also the mean over workers), then the mean over seeds 0, 1, 2 (the paper averages
  each worker's last two evaluations first, docs/algorithm.md 5.1; one evaluation here, to
  save CPU time);
* learning rates tuned on a small grid (section 5.1: x{1/2, 1, 2} of a base rate) at
  alpha = 0.1 and seed 0 only, then fixed for every alpha and seed; RelaySGD's grid is
  multiplied by 1 + mean delay of its tree (relayfl's ``lr_correction``: 3.32 on double
  binary trees, 5.375 on the chain), as the paper's x3 / x5.

Run (resumable; every finished run is a cell in ``simulations/results/<table>/cells``)::

    python simulations/fashion_mnist.py all [--shard 0/2]   # tune, then seed by seed:
                                                            # Table 5, Table 2
    python simulations/fashion_mnist.py tune|table5|table2|report [--shard 0/2]

Two shards (``--shard 0/2`` and ``--shard 1/2``) split the cells between two processes.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from common import RESULTS, CellCache, markdown_table, provenance
from torch import nn

from relayfl import RunConfig, Task, simulate
from relayfl.errors import ConfigError
from relayfl.task import builtin

STEPS = 300  # the default budget; ``--steps`` changes it (results in their own folders)
DEFAULT_STEPS = 300
EVAL_EVERY = 0  # evaluate once, at the end (an evaluation costs ~60 training steps)
WARMUP_EPOCHS = 0.1
BATCH = 32
CLIENTS = 16
EVAL_IMAGES = 2000
SEEDS = (0, 1, 2)
ALPHAS = (1.0, 0.1, 0.01)
TUNE_ALPHA, TUNE_SEED = 0.1, 0
BASE_LR = {True: 0.1, False: 0.2}  # with / without momentum (the paper's "m" and "0")
GRID = (0.5, 1.0, 2.0)  # the starting grid; extended past its edge (see ``tuned``)
GRID_LIMITS = (1 / 16, 16)
DROPS = (0.0, 0.01, 0.1)
SUPPLEMENT_MULT = 0.5  # the unstable rows' rate at α = 0.01 in the supplement


@dataclass(frozen=True)
class Row:
    """One row of Table 2: an algorithm on a topology, with or without local momentum."""

    label: str
    algorithm: str
    topology: str
    momentum: bool

    @property
    def key(self) -> str:
        return f"{self.algorithm}-{self.topology}-{'m' if self.momentum else '0'}"


ROWS = (
    Row("All-reduce", "allreduce", "fully-connected", False),
    Row("All-reduce + momentum", "allreduce", "fully-connected", True),
    Row("RelaySGD, double binary trees", "relaysgd", "double-binary-trees", False),
    Row("RelaySGD + local momentum, double binary trees", "relaysgd", "double-binary-trees", True),
    Row("RelaySGD, chain", "relaysgd", "chain", False),
    Row("RelaySGD + local momentum, chain", "relaysgd", "chain", True),
    Row("D-PSGD, ring", "dpsgd", "ring", False),
    Row("D-PSGD + local momentum, ring", "dpsgd", "ring", True),
    Row("D-PSGD + quasi-global momentum, ring", "qgm", "ring", True),
    Row("D², ring", "d2", "ring", False),
    Row("D² + local momentum, ring", "d2", "ring", True),
    Row("Gradient tracking, ring", "gradient-tracking", "ring", False),
    Row("Gradient tracking + local momentum, ring", "gradient-tracking", "ring", True),
    Row("SGP, time-varying exponential", "sgp", "exponential", False),
    Row("SGP + local momentum, time-varying exponential", "sgp", "exponential", True),
)

#: Table 5 (alpha = 0.01, local momentum 0.9): RelaySGD with the reference-state fill.
TABLE5_ROWS = (
    Row("RelaySGD + local momentum, double binary trees", "relaysgd", "double-binary-trees", True),
    Row("D-PSGD + local momentum, ring", "dpsgd", "ring", True),
    Row("D-PSGD + quasi-global momentum, ring", "qgm", "ring", True),
    Row("D² + local momentum, ring", "d2", "ring", True),
    Row("SGP + local momentum, time-varying exponential", "sgp", "exponential", True),
)
TABLE5_ALPHA = 0.01

#: Paper Table 2 (docs/algorithm.md 6.1, CIFAR-10/VGG-11, worst worker): alpha = 1 / .1 / .01.
PAPER_TABLE2 = {
    "allreduce-fully-connected-0": "87.0 / 87.0 / 87.0",
    "allreduce-fully-connected-m": "90.2 / 90.2 / 90.2",
    "relaysgd-double-binary-trees-0": "87.4 / 86.9 / 84.6",
    "relaysgd-double-binary-trees-m": "90.2 / 89.5 / 89.1",
    "relaysgd-chain-0": "87.3 / 87.2 / 86.5",
    "relaysgd-chain-m": "89.5 / 89.2 / 88.4",
    "dpsgd-ring-0": "87.4 / 79.9 / 53.9",
    "dpsgd-ring-m": "—",
    "qgm-ring-m": "89.5 / 84.8 / 63.3",
    "d2-ring-0": "87.2 / 84.0 / 38.2",
    "d2-ring-m": "88.2 / 88.5 / 61.0",
    "gradient-tracking-ring-0": "—",
    "gradient-tracking-ring-m": "—",
    "sgp-exponential-0": "87.4 / 86.7 / 86.7",
    "sgp-exponential-m": "89.5 / 89.2 / 87.5",
}
PAPER_TABLE5 = {
    "relaysgd-double-binary-trees-m": "89.2 / 89.3 / 89.3",
    "dpsgd-ring-m": "—",
    "qgm-ring-m": "69.3 / diverges / diverges",
    "d2-ring-m": "87.4 / diverges / diverges",
    "sgp-exponential-m": "88.5 / 88.6 / 88.1",
}


def experiment(table: str) -> str:
    """Results folder of ``table`` at the current budget: ``table2`` at the default
    :data:`STEPS`, ``table2_600steps`` at ``--steps 600``."""
    return table if STEPS == DEFAULT_STEPS else f"{table}_{STEPS}steps"


def cnn() -> nn.Module:
    """The CPU-sized CNN: 26,826 parameters, no normalisation layers."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 5, stride=2, padding=2),  # [B, 8, 14, 14]
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),  # [B, 16, 7, 7]
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


@cache
def task(limit_train: int | None = None) -> Task:
    """Fashion-MNIST with :func:`cnn`, evaluated on a fixed subset of 2,000 test images."""
    base = builtin("fashion-mnist", limit_train=limit_train, limit_test=EVAL_IMAGES)
    return Task(
        "fashion-mnist-cnn",
        cnn,
        base.x_train,
        base.y_train,
        base.x_test,
        base.y_test,
        num_classes=10,
        info={"model": "cnn-26k", "dataset": "fashion-mnist"},
    )


def config(row: Row, lr: float, alpha: float, seed: int, **changes) -> RunConfig:
    """The run of one cell."""
    return RunConfig(
        algorithm=row.algorithm,
        topology=row.topology,
        num_clients=CLIENTS,
        alpha=alpha,
        dataset="fashion-mnist",
        steps=STEPS,
        batch_size=BATCH,
        lr=lr,
        warmup_epochs=WARMUP_EPOCHS,
        momentum=0.9 if row.momentum else 0.0,
        weight_decay=1e-4,
        eval_every=EVAL_EVERY,
        seed=seed,
        **changes,
    )


def run_cell(cfg: RunConfig, data: Task | None = None) -> dict:
    """Simulate one config; a diverged run is recorded with accuracy 0.1 (chance)."""
    try:
        result = simulate(data or task(), cfg)
    except ConfigError as err:
        if "diverged" not in str(err):
            raise
        return {"diverged": True, "worst": 0.1, "mean": 0.1, "message": str(err)}
    evals = result.evaluations
    last = np.array([e.accuracies for e in evals[-1:]]).mean(0)  # [n]
    return {
        "diverged": False,
        "worst": float(last.min()),
        "mean": float(last.mean()),
        "accuracies": last.tolist(),
        "train_loss": evals[-1].train_loss,
        "consensus_distance": evals[-1].consensus_distance,
        "mb_sent_per_worker": float(np.mean(evals[-1].bytes_sent)) / 1e6,
        "lr_correction": result.topology.get("lr_correction_factor", 1.0),
    }


def run_cached(
    cells: CellCache, key: str, row: Row, lr: float, alpha: float, seed: int, **changes
) -> dict:
    """The cell ``key``: :func:`run_cell` of :func:`config` (computed once, then cached)."""
    return cells.compute(
        key, lambda: {"lr": lr, **run_cell(config(row, lr, alpha, seed, **changes))}
    )


def _mine(k: int, shard: tuple[int, int]) -> bool:
    return k % shard[1] == shard[0]


def tune_key(row: Row, mult: float) -> str:
    return f"tune-{row.key}-x{mult:g}"


def run_key(row: Row, lr: float, setting: str, seed: int) -> str:
    """A run's cell: the learning rate is part of the key, so a retuned row reruns."""
    return f"run-{row.key}-lr{lr:g}-{setting}-s{seed}"


def tuned(row: Row, cell: Callable[[float], dict]) -> tuple[float, list[float]]:
    """The best multiplier of ``row`` and every multiplier tried (ascending).

    Starts from :data:`GRID`; while the best (by worst-worker accuracy, ties broken by
    the mean) is the smallest or the largest multiplier tried, the grid grows by a factor
    2 past it, within :data:`GRID_LIMITS`, so no chosen rate sits on the grid's edge
    unless it is a limit. ``cell(mult)`` returns the tuning run of one multiplier.
    """
    mults = sorted(GRID)
    while True:
        best = max(mults, key=lambda m: (cell(m)["worst"], cell(m)["mean"], -m))
        if best == mults[0] and best / 2 >= GRID_LIMITS[0]:
            mults.insert(0, best / 2)
        elif best == mults[-1] and best * 2 <= GRID_LIMITS[1]:
            mults.append(best * 2)
        else:
            return best, mults


def tuning(shard: tuple[int, int] | None = None) -> dict[str, float]:
    """Run (or load) the tuning grids; return the chosen base lr per row key.

    With shards, each shard tunes every m-th row, then waits for the others' cells.
    """
    cells = CellCache(experiment("table2"))
    for k, row in enumerate(ROWS):
        if shard is not None and not _mine(k, shard):
            continue

        def cell(mult: float, row: Row = row) -> dict:
            lr = BASE_LR[row.momentum] * mult
            return run_cached(cells, tune_key(row, mult), row, lr, TUNE_ALPHA, TUNE_SEED)

        best, mults = tuned(row, cell)
        print(f"tune {row.key}: x{best:g} of {[f'x{m:g}' for m in mults]}", flush=True)
    return chosen_lrs(wait=shard is not None)


def chosen_lrs(wait: bool = False) -> dict[str, float]:
    """The tuned base lr per row key, replayed from the stored tuning cells."""
    cells = CellCache(experiment("table2"))

    def cell(mult: float, row: Row) -> dict:
        while (c := cells.get(tune_key(row, mult))) is None:
            if not wait:
                raise SystemExit(f"tuning cell {tune_key(row, mult)} missing; run `tune`")
            time.sleep(10)
        return c

    out = {}
    for row in ROWS:
        best, _ = tuned(row, lambda m, row=row: cell(m, row))
        out[row.key] = BASE_LR[row.momentum] * best
    return out


def table2(shard: tuple[int, int] | None, seeds: tuple[int, ...] = SEEDS) -> None:
    lrs = tuning(shard)
    cells = CellCache(experiment("table2"))
    k = 0
    for seed in seeds:
        for alpha in ALPHAS:
            for row in ROWS:
                if shard is None or _mine(k, shard):
                    lr = lrs[row.key]
                    key = run_key(row, lr, f"a{alpha:g}", seed)
                    c = run_cached(cells, key, row, lr, alpha, seed)
                    print(f"{row.key} a{alpha:g} s{seed}: {c['worst']:.4f}", flush=True)
                k += 1


def unstable_rows(lrs: dict[str, float]) -> list[Row]:
    """Rows whose α = 0.01 runs diverged or scatter by more than 10 points over the seeds
    (all seeds finished): the rate tuned at α = 0.1 may be too large for them."""
    cells = CellCache(experiment("table2"))
    out = []
    for row in ROWS:
        worst = [c["worst"] for c in _runs(cells, row, lrs, f"a{ALPHAS[-1]:g}")]
        if len(worst) == len(SEEDS) and (min(worst) <= 0.1 or np.std(worst, ddof=1) > 0.10):
            out.append(row)
    return out


def supplement(shard: tuple[int, int] | None) -> None:
    """The unstable rows again at α = 0.01 with :data:`SUPPLEMENT_MULT` x their rate: is
    the rate tuned at α = 0.1 (the budget's one tuning point) what failed?"""
    lrs = tuning(shard)
    cells = CellCache(experiment("table2"))
    setting = f"a{ALPHAS[-1]:g}"
    while shard is not None and any(len(_runs(cells, r, lrs, setting)) < len(SEEDS) for r in ROWS):
        time.sleep(10)  # the other shard's α = 0.01 runs decide which rows are unstable
    for row in unstable_rows(lrs):
        for seed in SEEDS:
            k = ROWS.index(row) * len(SEEDS) + seed  # the same in every shard
            if shard is None or _mine(k, shard):
                lr = lrs[row.key] * SUPPLEMENT_MULT
                c = run_cached(cells, run_key(row, lr, setting, seed), row, lr, ALPHAS[-1], seed)
                print(f"supplement {row.key} lr {lr:g} s{seed}: {c['worst']:.4f}", flush=True)


def table5(shard: tuple[int, int] | None, seeds: tuple[int, ...] = SEEDS) -> None:
    lrs = tuning(shard)
    cells = CellCache(experiment("table5"))
    k = 0
    for seed in seeds:
        for p in DROPS:
            for row in TABLE5_ROWS:
                if shard is None or _mine(k, shard):
                    lr = lrs[row.key]
                    fill = "latest" if row.algorithm == "relaysgd" else "initial"
                    key = run_key(row, lr, f"p{p:g}", seed)
                    c = run_cached(
                        cells, key, row, lr, TABLE5_ALPHA, seed, drop_probability=p, fill=fill
                    )
                    print(f"{row.key} p{p:g} s{seed}: {c['worst']:.4f}", flush=True)
                k += 1


def _pct(values: list[float]) -> str:
    if not values:
        return "(running)"
    mean = 100 * float(np.mean(values))
    sd = 100 * float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    tag = "" if len(values) == len(SEEDS) else f" ({len(values)} seed{'s' * (len(values) > 1)})"
    return f"{mean:.1f} ± {sd:.1f}{tag}"


def _runs(cells: CellCache, row: Row, lrs: dict[str, float], setting: str) -> list[dict]:
    """The finished seeds of one table cell at the row's tuned rate."""
    if row.key not in lrs:
        return []
    found = [cells.get(run_key(row, lrs[row.key], setting, s)) for s in SEEDS]
    return [c for c in found if c is not None]


def _command() -> str:
    steps = "" if STEPS == DEFAULT_STEPS else f" --steps {STEPS}"
    return f"python simulations/fashion_mnist.py all{steps} --shard 0/2 (and 1/2), then report"


def report() -> None:
    """Write table2.md, table5.md and their PNGs from whatever cells exist."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget = (
        f"{CLIENTS} workers, small CNN (26,826 parameters), {STEPS} steps of batch {BATCH} "
        f"per worker (~{STEPS * BATCH * CLIENTS / 60000:.1f} epochs), warm-up "
        f"{WARMUP_EPOCHS} epoch, lr x0.1 at 75% and 90%, weight decay 1e-4, Nesterov "
        f"momentum 0.9 where marked, one evaluation at the end on {EVAL_IMAGES:,} "
        "fixed test images"
    )
    cells = CellCache(experiment("table2"))
    try:
        lrs = chosen_lrs()
    except SystemExit:
        lrs = {}
    tried = {
        row.key: tuned(row, lambda m, row=row: cells.get(tune_key(row, m)))[1]
        for row in ROWS
        if row.key in lrs
    }
    all_mults = sorted({m for ms in tried.values() for m in ms} or GRID)
    out = RESULTS / experiment("table2")
    rows, lr_rows, tune_rows = [], [], []
    for row in ROWS:
        worst, mean = [], []
        for alpha in ALPHAS:
            cs = _runs(cells, row, lrs, f"a{alpha:g}")
            worst.append(_pct([c["worst"] for c in cs]))
            mean.append(_pct([c["mean"] for c in cs]))
            if any(c["diverged"] for c in cs):
                worst[-1] += f" ({sum(c['diverged'] for c in cs)} diverged)"
        rows.append([row.label, *worst, *mean, PAPER_TABLE2[row.key]])
        lr = lrs.get(row.key)
        corr = cells.get(tune_key(row, 1.0)) or {}
        factor = corr.get("lr_correction", 1.0)
        lr_rows.append(
            [
                row.label,
                "—" if lr is None else f"{lr:g}",
                f"{factor:.3g}",
                "—" if lr is None else f"{lr * factor:.3g}",
            ]
        )
        tune = []
        for mult in all_mults:
            c = cells.get(tune_key(row, mult)) if mult in tried.get(row.key, ()) else None
            cell = "—" if c is None else f"{100 * c['worst']:.1f} / {100 * c['mean']:.1f}"
            if lr is not None and c is not None and math.isclose(c["lr"], lr):
                cell = f"**{cell}**"
            tune.append(cell)
        tune_rows.append([row.label, *tune])
    supplement_text = []
    sup_rows = []
    for row in unstable_rows(lrs):
        alpha = ALPHAS[-1]
        half = {row.key: lrs[row.key] * SUPPLEMENT_MULT}
        tuned_cs, half_cs = (
            _runs(cells, row, lrs, f"a{alpha:g}"),
            _runs(cells, row, half, f"a{alpha:g}"),
        )
        sup_rows.append(
            [
                row.label,
                f"{lrs[row.key]:g}: {_pct([c['worst'] for c in tuned_cs])}",
                f"{half[row.key]:g}: {_pct([c['worst'] for c in half_cs])}",
                f"{_pct([c['mean'] for c in half_cs])}",
            ]
        )
    if sup_rows:
        supplement_text = [
            f"Supplement: the rows whose α = {ALPHAS[-1]:g} seeds diverged or scattered by "
            f"more than 10 points, again at α = {ALPHAS[-1]:g} with x{SUPPLEMENT_MULT:g} "
            "their tuned base rate (`"
            + _command().split(" all")[0]
            + f" supplement{'' if STEPS == DEFAULT_STEPS else f' --steps {STEPS}'}`):",
            "",
            markdown_table(
                [
                    "algorithm",
                    "worst, tuned base lr",
                    f"worst, x{SUPPLEMENT_MULT:g}",
                    f"mean, x{SUPPLEMENT_MULT:g}",
                ],
                sup_rows,
            ),
            "",
        ]
    header = [
        "algorithm",
        *[f"worst α={a:g}" for a in ALPHAS],
        *[f"mean α={a:g}" for a in ALPHAS],
        "paper worst (CIFAR-10) α=1 / .1 / .01",
    ]
    text = [
        "# Table 2 on Fashion-MNIST (CPU-sized)",
        "",
        provenance(
            _command(),
            SEEDS,
            budget,
            cells.wall_s(),
        ),
        "",
        "Test accuracy in % (mean ± sample std over the seeds) at the end of training: the "
        "worst worker, and the mean over workers.",
        "",
        markdown_table(header, rows),
        "",
        f"Learning rates, tuned at α = {TUNE_ALPHA:g}, seed {TUNE_SEED} on base x "
        f"{{{', '.join(f'{m:g}' for m in GRID)}}} (base {BASE_LR[False]:g} without, "
        f"{BASE_LR[True]:g} with momentum), extended by factors of 2 past whichever edge "
        f"won (within x{GRID_LIMITS[0]:g} to x{GRID_LIMITS[1]:g}) until the best is "
        "inside the grid; best worst-worker accuracy (ties: mean); RelaySGD runs at "
        "base x (1 + mean delay):",
        "",
        markdown_table(["algorithm", "base lr", "relay correction", "lr used"], lr_rows),
        "",
        "Tuning runs (worst / mean accuracy in %; chosen in bold; — not tried):",
        "",
        markdown_table(["algorithm", *[f"x{m:g}" for m in all_mults]], tune_rows),
        "",
        *supplement_text,
        "![worst-worker accuracy](table2_worst_worker.png)",
        "",
    ]
    (out / "table2.md").write_text("\n".join(text))

    fig, ax = plt.subplots(figsize=(12, 4.8))
    width = 0.8 / len(ALPHAS)
    for a, alpha in enumerate(ALPHAS):
        ys = []
        for row in ROWS:
            cs = [c["worst"] for c in _runs(cells, row, lrs, f"a{alpha:g}")]
            ys.append(100 * np.mean(cs) if cs else math.nan)
        ax.bar(np.arange(len(ROWS)) + (a - 1) * width, ys, width, label=f"α = {alpha:g}")
    ax.set_xticks(np.arange(len(ROWS)), [r.label for r in ROWS], rotation=35, ha="right")
    ax.set_ylabel("worst-worker test accuracy (%)")
    ax.set_ylim(0, 112)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper center", ncol=len(ALPHAS))
    ax.set_title(f"Fashion-MNIST, 16 workers, {STEPS} steps (mean over seeds)")
    fig.tight_layout()
    fig.savefig(out / "table2_worst_worker.png", dpi=110)
    plt.close(fig)

    cells5 = CellCache(experiment("table5"))
    rows5 = []
    for row in TABLE5_ROWS:
        vals = []
        for p in DROPS:
            cs = _runs(cells5, row, lrs, f"p{p:g}")
            v = _pct([c["worst"] for c in cs])
            if any(c["diverged"] for c in cs):
                v += f" ({sum(c['diverged'] for c in cs)} diverged)"
            vals.append(v)
        lr = lrs.get(row.key)
        rows5.append([row.label, "—" if lr is None else f"{lr:g}", *vals, PAPER_TABLE5[row.key]])
    text5 = [
        "# Table 5 on Fashion-MNIST: message drops (CPU-sized)",
        "",
        provenance(
            _command(),
            SEEDS,
            f"{budget}; α = {TABLE5_ALPHA:g}, local momentum 0.9, learning rates from the "
            "Table 2 tuning; RelaySGD with the reference-state fill (--fill latest)",
            cells5.wall_s(),
        ),
        "",
        "Worst-worker test accuracy in % (mean ± sample std over the seeds) with each "
        "received message dropped independently with probability p (docs/algorithm.md 1.4; "
        "seeded per receiver and step):",
        "",
        markdown_table(
            [
                "algorithm",
                "base lr",
                *[f"p={p:g}" for p in DROPS],
                "paper (CIFAR-10, 1 seed) 0 / 1% / 10%",
            ],
            rows5,
        ),
        "",
        "![drops](table5_drops.png)",
        "",
    ]
    (RESULTS / experiment("table5")).mkdir(parents=True, exist_ok=True)
    (RESULTS / experiment("table5") / "table5.md").write_text("\n".join(text5))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row in TABLE5_ROWS:
        ys = []
        for p in DROPS:
            cs = [c["worst"] for c in _runs(cells5, row, lrs, f"p{p:g}")]
            ys.append(np.mean(cs) if cs else math.nan)
        ax.plot([f"{p:g}" for p in DROPS], ys, marker="o", label=row.label)
    ax.set_xlabel("message drop probability")
    ax.set_ylabel("worst-worker test accuracy")
    ax.set_title(f"Fashion-MNIST, α = {TABLE5_ALPHA:g}, 16 workers, {STEPS} steps (seed mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / experiment("table5") / "table5_drops.png", dpi=110)
    plt.close(fig)
    print("wrote table2.md and table5.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("tune", "table2", "table5", "supplement", "all", "report"))
    parser.add_argument("--shard", default=None, help="k/m: run every m-th cell from k")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"steps per worker (default {DEFAULT_STEPS}; other budgets write "
        "simulations/results/table2_<steps>steps/ and table5_<steps>steps/)",
    )
    args = parser.parse_args()
    global STEPS
    if args.steps < 10:
        parser.error(f"--steps must be at least 10, got {args.steps}")
    STEPS = args.steps
    torch.set_num_threads(args.threads)
    shard = None
    if args.shard:
        k, m = (int(v) for v in args.shard.split("/"))
        shard = (k, m)
    if args.what == "tune":
        print(tuning(shard))
    elif args.what == "table2":
        table2(shard)
    elif args.what == "table5":
        table5(shard)
    elif args.what == "all":  # seed by seed, so a stopped run has whole seeds of both
        for seed in SEEDS:
            table5(shard, (seed,))
            table2(shard, (seed,))
            report()
        supplement(shard)
    elif args.what == "supplement":
        supplement(shard)
    report()


if __name__ == "__main__":
    main()
