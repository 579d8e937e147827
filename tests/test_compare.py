"""``relayfl compare``: the grid runs end to end and writes the table, CSV/JSON and PNGs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from relayfl.cli import main
from relayfl.compare import CompareSpec
from relayfl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _check_outputs(out: Path, algorithms: list[str], alphas: list[str], seeds: int) -> dict:
    data = json.loads((out / "results.json").read_text())
    cells = {(r["algorithm"], r["alpha"]) for r in data["summary"]}
    assert cells == {(a, x) for a in algorithms for x in alphas}
    assert len(data["runs"]) == len(algorithms) * len(alphas) * seeds
    for run in data["runs"]:  # every run in the core schema
        assert {"config", "evaluations", "versions", "engine", "wall_s"} <= set(run)
        assert run["evaluations"][-1]["step"] == run["config"]["steps"]
    with open(out / "summary.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(cells)
    with open(out / "runs.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(data["runs"])
    for png in ("accuracy_vs_round.png", "worst_vs_alpha.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return data


def test_compare_cli_prints_the_table_and_writes_csv_json_and_both_pngs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tiny grid (2 simulator algorithms x 2 alphas x 2 seeds) through the CLI."""
    out = tmp_path / "cmp"
    argv = ["compare", "--dataset", "digits", "--clients", "4", "--alpha", "1,0.1"]
    argv += ["--algorithms", "relaysgd,dpsgd", "--seeds", "2", "--rounds", "4"]
    argv += ["--local-steps", "1", "--eval-every", "2", "--batch-size", "16"]
    assert main([*argv, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "relayfl compare" in text and "worst acc" in text and "±" in text
    data = _check_outputs(out, ["relaysgd", "dpsgd"], ["1", "0.1"], 2)
    topologies = {r["algorithm"]: r["topology"] for r in data["summary"]}
    assert topologies == {"relaysgd": "binary-tree", "dpsgd": "ring"}
    # the same (alpha, seed) gives every algorithm the identical split
    splits = {
        (r["config"]["alpha"], r["config"]["seed"], r["config"]["algorithm"]): r["task"][
            "partition_sizes"
        ]
        for r in data["runs"]
    }
    assert splits[(0.1, 1, "relaysgd")] == splits[(0.1, 1, "dpsgd")]


def test_compare_topology_override_and_bad_algorithm(tmp_path: Path) -> None:
    """--topology changes the relay's tree; an unknown algorithm names the valid ones."""
    spec = CompareSpec(topology="chain", algorithms=("relaysgd", "fedavg"))
    assert spec.config("relaysgd", 0.1, 0).topology_name == "chain"
    assert spec.config("fedavg", 0.1, 0).algorithm == "allreduce"  # clients train plainly
    assert math.isinf(CompareSpec.from_toml(_toml(tmp_path), alphas="iid").alphas[0])
    with pytest.raises(ConfigError, match="relaysgd, relaysgd-grad"):
        CompareSpec(algorithms=("relaysgd", "fedsgd"))


def _toml(folder: Path) -> Path:
    path = folder / "relayfl-compare-test.toml"
    path.write_text(
        '[compare]\ndataset = "digits"\nclients = 4\nalpha = [0.1]\n'
        'algorithms = ["relaysgd", "fedavg"]\nseeds = 1\nrounds = 3\nlocal-steps = 2\n'
        "[run]\nbatch-size = 16\n"
    )
    return path


@pytest.mark.slow
def test_compare_toml_config_runs_fedavg_through_flower(tmp_path: Path) -> None:
    """The TOML form with fedavg: Flower's FedAvg runs beside the simulator's relay."""
    out = tmp_path / "cmp"
    assert main(["compare", "--config", str(_toml(tmp_path)), "--out", str(out), "--quiet"]) == 0
    data = _check_outputs(out, ["relaysgd", "fedavg"], ["0.1"], 1)
    engines = {r["algorithm"]: r["engine"] for r in data["summary"]}
    assert engines["fedavg"] == "flower-simulation"
    fedavg = next(r for r in data["runs"] if r["config"]["algorithm"] == "fedavg")
    assert fedavg["extra"]["strategy"] == "flwr.serverapp.strategy.FedAvg"
    assert fedavg["config"]["steps"] == 6 and fedavg["config"]["local_steps"] == 2


def test_shipped_compare_config_parses() -> None:
    """simulations/compare_digits.toml is a valid spec (the issue's example grid)."""
    spec = CompareSpec.from_toml(ROOT / "simulations" / "compare_digits.toml")
    assert spec.algorithms == ("relaysgd", "dpsgd", "fedavg", "allreduce")
    assert spec.alphas == (1.0, 0.1, 0.01) and spec.seeds == (0, 1, 2)
    assert spec.config("dpsgd", 0.01, 2).batch_size == 32
