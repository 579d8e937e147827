"""``relayfl simulate``: end to end, and one-line errors that name the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relayfl.cli import main


def _run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "relayfl.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def test_simulate_writes_results_table_csv_and_both_pngs(tmp_path: Path, capsys) -> None:
    """A tiny run writes results.json, evaluations.csv, the learning curve and the heatmap."""
    rc = main(
        [
            "simulate",
            "--clients",
            "4",
            "--steps",
            "12",
            "--eval-every",
            "6",
            "--alpha",
            "0.5",
            "--topology",
            "chain",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert rc == 0
    for name in ("results.json", "evaluations.csv", "learning_curve.png", "partition.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    data = json.loads((tmp_path / "results.json").read_text())
    assert [e["step"] for e in data["evaluations"]] == [0, 6, 12]
    assert data["config"]["topology"] == "chain"
    out = capsys.readouterr().out
    assert "worst acc" in out and "relaysgd" in out


BAD_INPUTS = {
    "alpha-zero": (["--alpha", "0"], "alpha must be > 0"),
    "too-many-clients": (["--clients", "5000"], "use at most 1437 clients"),
    "relay-on-ring": (["--topology", "ring"], "--spanning-tree bfs"),
    "disconnected": (["--topology", "{graph}"], "connected"),
    "lr-negative": (["--lr", "-1"], "lr must be"),
}


@pytest.mark.parametrize(("args", "match"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_exits_2_with_one_line_naming_the_fix(
    args: list[str], match: str, tmp_path: Path
) -> None:
    """Bad input: exit code 2, one 'relayfl: error:' line, no traceback."""
    graph = tmp_path / "edges.txt"
    graph.write_text("0 1\n2 3\n")
    args = [a.replace("{graph}", str(graph)) for a in args]
    proc = _run(["simulate", "--steps", "2", "--out", str(tmp_path / "out"), "--quiet", *args])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("relayfl: error:") and match in lines[0]
    assert "Traceback" not in proc.stderr


def test_unknown_algorithm_is_an_argparse_error_listing_choices(tmp_path: Path) -> None:
    """An unknown algorithm is refused before anything runs, listing the valid ones."""
    proc = _run(["simulate", "--algorithm", "fedprox", "--out", str(tmp_path)])
    assert proc.returncode == 2
    assert "invalid choice: 'fedprox'" in proc.stderr and "relaysgd" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)  # 9 s on a quiet 2-core machine, 286 s at a load of 8-18
def test_default_demo_runs_and_learns(tmp_path: Path) -> None:
    """`relayfl simulate` with no options: the README demo reaches the README's number."""
    proc = _run(["simulate", "--out", str(tmp_path), "--quiet"], timeout=840)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["evaluations"][-1]["worst_accuracy"] >= 0.95  # measured 0.9722 (seed 0)
