"""Table 2 (and Table 5) in the paper's own setting: CIFAR-10, VGG-11, 200 epochs.

Needs the CIFAR-10 python batches (``cifar-10-batches-py``; relayfl never downloads)
and a GPU: one run is 19,400 steps of 16 VGG-11 workers. The runs, the paper's final
learning rates and the shared settings are in ``table2_cifar10.json``; this script runs
them cell by cell (cached in ``simulations/results/table2_cifar10/cells``, so it
resumes) and writes ``simulations/results/table2_cifar10/table2_cifar10.md``.

Example::

    python simulations/table2_cifar10.py --data-root ~/data/cifar-10-batches-py
    python simulations/table2_cifar10.py --data-root DIR --table table5
    python simulations/table2_cifar10.py --data-root DIR --only relaysgd --alpha 0.01
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import RESULTS, CellCache, markdown_table, provenance

from relayfl import RunConfig, simulate

SPEC = Path(__file__).resolve().parent / "table2_cifar10.json"


def cells_of(spec: dict, table: str) -> list[tuple[str, str, RunConfig]]:
    """(row label, cell key, config) for every run of ``table``."""
    out = []
    t = spec[table]
    seeds = t.get("seeds", spec["seeds"])
    for row in t["rows"]:
        for key, lr in row["lr"].items():
            for seed in seeds:
                changes = {**spec["base"], **row["config"], "lr": lr, "seed": seed}
                if table == "table2":
                    changes["alpha"] = float(key)
                    if row["config"]["algorithm"] == "allreduce":
                        changes["alpha"] = "iid"  # the paper's random split
                else:
                    changes["alpha"] = t["alpha"]
                    changes["drop_probability"] = float(key)
                config = RunConfig.from_dict(changes)
                cell = f"{table}-{row['config']['algorithm']}-{row['config']['topology']}-"
                cell += f"m{row['config']['momentum']:g}-{key}-s{seed}"
                out.append((row["label"], cell, config))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="folder with the CIFAR-10 batches")
    parser.add_argument("--table", choices=("table2", "table5"), default="table2")
    parser.add_argument("--device", default=None, help="override the config's device")
    parser.add_argument("--only", default=None, help="run only this algorithm")
    parser.add_argument("--alpha", type=float, default=None, help="run only this alpha")
    args = parser.parse_args()
    spec = json.loads(SPEC.read_text())
    cache = CellCache("table2_cifar10")
    results: dict[tuple[str, str], list[float]] = {}
    for label, key, config in cells_of(spec, args.table):
        changes = {"data_root": args.data_root}
        if args.device:
            changes["device"] = args.device
        config = config.replace(**changes)
        if args.only and config.algorithm != args.only:
            continue
        if args.alpha is not None and not config.iid and config.alpha != args.alpha:
            continue

        def run(config: RunConfig = config) -> dict:
            result = simulate(config=config)
            last = np.array([e.accuracies for e in result.evaluations[-2:]]).mean(0)  # [n]
            return {"worst": float(last.min()), "mean": float(last.mean())}

        cell = cache.compute(key, run)
        column = key.rsplit("-", 2)[-2]
        results.setdefault((label, column), []).append(cell["worst"])
        print(f"{key}: worst {cell['worst']:.4f}", flush=True)

    columns = sorted({c for _, c in results}, key=float, reverse=args.table == "table2")
    labels = list(dict.fromkeys(label for label, _ in results))
    rows = [
        [
            label,
            *[
                f"{100 * np.mean(results[(label, c)]):.1f}" if (label, c) in results else "—"
                for c in columns
            ],
        ]
        for label in labels
    ]
    out = RESULTS / "table2_cifar10"
    (out / f"{args.table}_cifar10.md").write_text(
        "\n".join(
            [
                f"# {args.table} on CIFAR-10 / VGG-11 (paper setting)",
                "",
                provenance(
                    f"python simulations/table2_cifar10.py --table {args.table}",
                    spec["seeds"],
                    "200 epochs, see table2_cifar10.json",
                    cache.wall_s(),
                ),
                "",
                "Worst-worker test accuracy (%), mean of the last two evaluations, "
                "mean over seeds:",
                "",
                markdown_table(["algorithm", *columns], rows),
                "",
            ]
        )
    )


if __name__ == "__main__":
    main()
