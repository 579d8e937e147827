"""A newcomer's first hour: outputs that are never lost, standard files, CLI words."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from relayfl.cli import main
from relayfl.results import EvalRecord, RunResult

TINY = ["--clients", "4", "--steps", "4", "--eval-every", "2", "--quiet"]


def _strict_load(path: Path) -> dict:
    """json.loads that rejects NaN / Infinity, as jq and JavaScript do."""

    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize(
    "command",
    [
        ["simulate", *TINY],
        ["compare", "--clients", "4", "--rounds", "2", "--seeds", "1", "--alpha", "1"],
        ["launch", "--nodes", "2", "--steps", "2", "--insecure", "--quiet"],
    ],
    ids=["simulate", "compare", "launch"],
)
def test_out_naming_a_file_is_refused_before_any_work(
    command: list[str], tmp_path: Path, capsys
) -> None:
    """--out that is an existing file: exit 2 at once, one line naming --out and the fix."""
    target = tmp_path / "taken.txt"
    target.write_text("mine\n")
    assert main([*command, "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("relayfl: error: --out"), err
    assert "existing file" in err[0] and str(target) in err[0]
    assert target.read_text() == "mine\n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.txt"]  # nothing written


def test_out_under_a_file_is_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("")
    assert main(["simulate", *TINY, "--out", str(tmp_path / "file" / "run")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_rerun_into_a_results_folder_says_it_overwrites_in_one_line(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["simulate", *TINY, "--out", str(out)]) == 0
    assert "overwrit" not in capsys.readouterr().err
    assert main(["simulate", *TINY, "--seed", "1", "--out", str(out)]) == 0
    notices = [line for line in capsys.readouterr().err.splitlines() if "overwrit" in line]
    assert notices == [f"relayfl: --out {out} already holds a run (results.json); overwriting it"]
    assert _strict_load(out / "results.json")["config"]["seed"] == 1


def test_results_json_is_strict_with_versions_and_the_real_topology(tmp_path: Path) -> None:
    """NaN becomes null; flwr, torchvision, scikit-learn versions; topology not None."""
    assert main(["simulate", *TINY, "--out", str(tmp_path)]) == 0
    data = _strict_load(tmp_path / "results.json")
    assert data["config"]["topology"] == "binary-tree"  # the default for relaysgd
    for name in ("flwr", "torchvision", "scikit-learn", "torch", "numpy", "relayfl"):
        assert data["versions"][name] not in ("", "not installed"), name

    nan = math.nan
    record = EvalRecord(2, 2, 0.1, 0.1, nan, nan, nan, nan, math.inf, nan, nan, [nan], [nan],
                        [0], [0], 0.5)  # fmt: skip
    result = RunResult(config={"topology": "chain"}, evaluations=[record])
    result.save(tmp_path / "nan")
    saved = _strict_load(tmp_path / "nan" / "results.json")["evaluations"][0]
    assert saved["mean_accuracy"] is None and saved["worst_loss"] is None
    assert saved["accuracies"] == [None] and saved["wall_s"] == 0.5
    back = RunResult.load(tmp_path / "nan").final  # null reads back as NaN, not None
    assert math.isnan(back.mean_accuracy) and math.isnan(back.accuracies[0])
    assert math.isnan(back.worst_loss)  # inf was written as null too
    assert back.step == 2 and back.bytes_sent == [0]


CLI_WORDS = {
    "clients": (["simulate", "--clients", "0"], "--clients must be >= 1, got 0"),
    "social-network": (
        ["simulate", "--topology", "social-network"],
        "got --clients 16; pass --clients 32",
    ),
    "launch-nodes": (["launch", "--nodes", "0", "--insecure"], "--nodes must be >= 1"),
    "compare-clients": (["compare", "--clients", "0"], "--clients must be >= 1"),
    "compare-rounds": (["compare", "--rounds", "0"], "--rounds must be >= 1, got 0"),
    "local-steps": (["simulate", "--local-steps", "0"], "--local-steps must be >= 1"),
    "missing-file": (
        ["simulate", "--topology", "missing.json"],
        "topology file 'missing.json' does not exist",
    ),
    "node-missing-file": (
        ["node", "--id", "0", "--topology", "missing.json", "--insecure"],
        "topology file missing.json does not exist",
    ),
}


@pytest.mark.parametrize(("args", "words"), CLI_WORDS.values(), ids=CLI_WORDS.keys())
def test_errors_name_the_cli_options_not_python_names(
    args: list[str], words: str, tmp_path: Path, capsys
) -> None:
    """A CLI user sees --clients, never num_clients / num_nodes=."""
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert "num_" not in err[0] and "_" not in err[0].split("error:")[1].split("'")[0]


def test_python_callers_keep_python_names() -> None:
    from relayfl.config import RunConfig
    from relayfl.errors import ConfigError

    with pytest.raises(ConfigError, match="num_clients must be >= 1"):
        RunConfig(num_clients=0)


def test_speak_cli_leaves_options_and_calls_alone() -> None:
    from relayfl.cli import build_parser
    from relayfl.cliwords import command_parser, speak_cli

    sim = command_parser(build_parser(), "simulate")
    text = "use --spanning-tree bfs (topology.spanning_tree(graph)); lower --lr, batch_size=8"
    assert speak_cli(text, sim) == (
        "use --spanning-tree bfs (topology.spanning_tree(graph)); lower --lr, --batch-size 8"
    )
    quoted = 'pass it in `run_config` or with --run-config "lr=0.1 batch_size=8", lr=0.2'
    assert speak_cli(quoted, sim) == (
        'pass it in `run_config` or with --run-config "lr=0.1 batch_size=8", --lr 0.2'
    )


@pytest.mark.parametrize("command", ["simulate", "compare", "launch", "node"])
def test_help_shows_every_default_and_never_none(command: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # unwrap argparse's columns
    assert "(default: None)" not in text
    if command == "simulate":
        for shown in ("--steps STEPS (default: 300)", "--lr LR (default: 0.1)",
                      "--batch-size BATCH_SIZE (default: 32)", "--seed SEED (default: 0)",
                      "--algorithm {", "(default: relaysgd)"):  # fmt: skip
            assert shown in text, shown


def test_clients_smaller_than_a_batch_are_warned_in_one_line() -> None:
    """1,437 digits over 4 clients (359 each) at batch 512: warned, with the sizes."""
    import warnings

    import relayfl
    from relayfl import RunConfig, simulate
    from relayfl.cliwords import one_line_warnings

    config = RunConfig(num_clients=4, alpha=math.inf, batch_size=512, steps=1, eval_every=0)
    with pytest.warns(UserWarning) as caught:
        simulate(config=config)
    text = (
        "4 of 4 clients hold fewer samples than one batch (smallest 359, batch-size 512, "
        "1437 samples in all): their batches repeat the same samples; use fewer clients "
        "or a smaller batch size"
    )
    assert [str(w.message) for w in caught if "batch" in str(w.message)] == [text]
    before = warnings.formatwarning
    try:
        one_line_warnings()  # what the CLI prints: one line, no file:line source
        inside = str(Path(relayfl.__file__).parent / "simulation.py")
        shown = warnings.formatwarning(text, UserWarning, inside, 1)
        assert shown == f"relayfl: warning: {text}\n"
        assert "relayfl: warning" not in warnings.formatwarning("x", UserWarning, "/a/b.py", 1)
    finally:
        warnings.formatwarning = before


@pytest.mark.filterwarnings("ignore:16 of 16 clients hold fewer samples")
def test_a_run_that_cannot_fit_in_memory_is_refused_with_the_estimate(
    tmp_path: Path, capsys
) -> None:
    """--batch-size 100000 on 16 clients: ~56 GiB of activations, refused before training."""
    from relayfl.sizes import available_memory

    free = available_memory(__import__("torch").device("cpu"))[0]
    if free > 200 * 2**30:
        pytest.skip("this machine has room for the run")
    assert main(["simulate", "--batch-size", "100000", "--quiet", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("relayfl: error: this run needs about 56.")  # GiB, measured 56.2
    assert "GiB (16 clients x batch-size 100000 x " in err
    assert "36.8 KiB of activations per sample" in err and "--batch-size" in err
    assert not (tmp_path / "results.json").exists()


def test_memory_estimate_scales_with_batch_and_clients() -> None:
    from relayfl.sizes import STATE_COPIES, estimate_memory

    base = estimate_memory(1000.0, 10, workers_at_once=4, workers=4, batch_size=8)
    assert base == 1000.0 * 8 * 4 + 4 * 10 * 4 * STATE_COPIES
    loop = estimate_memory(1000.0, 10, workers_at_once=1, workers=4, batch_size=8)
    assert loop == 1000.0 * 8 + 4 * 10 * 4 * STATE_COPIES


def test_threads_option_sets_torch_threads_and_refuses_zero(capsys) -> None:
    import torch

    from relayfl.threads import idle_cores, set_threads

    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        assert 1 <= set_threads("auto") == idle_cores() <= before or before == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit):
        main(["simulate", "--threads", "0"])
    assert "--threads takes a count >= 1 or 'auto', got '0'" in capsys.readouterr().err


def _cli(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``relayfl ARGS`` in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "relayfl.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# The README's deployment demo, measured on the 2-core machine at a load of 8-18 (101 s):
# mean 0.8437, worst node 0.8417 after 50 steps (0.43 with the uncapped 5-epoch warm-up).
LAUNCH_DEMO_WORST = 0.75


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_readme_launch_demo_learns(tmp_path: Path) -> None:
    """`relayfl launch --nodes 4 --topology binary-tree --dataset digits --steps 50`."""
    out = tmp_path / "launch"
    args = ["launch", "--nodes", "4", "--topology", "binary-tree", "--dataset", "digits"]
    proc = _cli([*args, "--steps", "50", "--insecure", "--quiet", "--out", str(out)], 840)
    assert proc.returncode == 0, proc.stderr[-2000:]
    final = _strict_load(out / "results.json")["evaluations"][-1]
    assert final["step"] == 50
    assert final["worst_accuracy"] >= LAUNCH_DEMO_WORST, final["accuracies"]


# simulations/compare_digits.toml's quick look (--rounds 20 --local-steps 5 --seeds 1) at
# its middle alpha 0.1, measured on the 2-core machine at a load of about 8 (351 s in all),
# worst client: relaysgd 0.592, dpsgd 0.436, fedavg 0.889, allreduce 0.892 (chance: 0.1;
# with --rounds 10 and 1 local step every algorithm stayed at chance).
QUICK_LOOK_WORST = {"relaysgd": 0.5, "dpsgd": 0.35, "fedavg": 0.8, "allreduce": 0.8}


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_toml_quick_look_compare_learns(tmp_path: Path) -> None:
    """The quick look the TOML suggests: every algorithm far above chance (0.1)."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "quick"
    args = ["compare", "--config", str(root / "simulations" / "compare_digits.toml")]
    quick = ["--rounds", "20", "--local-steps", "5", "--seeds", "1", "--alpha", "0.1"]
    assert main([*args, *quick, "--quiet", "--out", str(out)]) == 0
    rows = {r["algorithm"]: r for r in _strict_load(out / "results.json")["summary"]}
    assert sorted(rows) == sorted(QUICK_LOOK_WORST)
    for algorithm, floor in QUICK_LOOK_WORST.items():
        assert rows[algorithm]["worst_accuracy"] >= floor, (algorithm, rows[algorithm])


def test_compare_keeps_the_runs_finished_before_a_failure(tmp_path: Path) -> None:
    """Stopped after its first run, a grid leaves that run in results.json (interrupted)."""
    from relayfl.compare import CompareSpec, run_compare

    spec = CompareSpec(
        clients=4, alphas=(1.0,), algorithms=("relaysgd", "dpsgd"), seeds=(0,), rounds=2
    )

    def stop(line: str) -> None:
        raise KeyboardInterrupt  # Ctrl-C right after the first run

    with pytest.raises(KeyboardInterrupt):
        run_compare(spec, log=stop, save_to=tmp_path)
    data = _strict_load(tmp_path / "results.json")
    assert data["status"] == "interrupted"
    assert [r["config"]["algorithm"] for r in data["runs"]] == ["relaysgd"]


def test_compare_checks_every_algorithm_before_any_work() -> None:
    """sgp on 6 clients is refused at once, not after the relaysgd runs."""
    from relayfl.compare import CompareSpec
    from relayfl.errors import ConfigError

    with pytest.raises(ConfigError, match="sgp needs a power-of-two number of clients"):
        CompareSpec(clients=6, algorithms=("relaysgd", "sgp"), alphas=(1.0,), seeds=(0,))


def test_the_written_line_names_only_files_this_run_wrote(tmp_path: Path) -> None:
    """A file the run did not write is not named; one an earlier run left (a built-in
    run's partition.png before a Flower client's run) is removed, not passed off."""
    import os
    import time

    from relayfl.outdir import written

    stale = tmp_path / "partition.png"
    stale.write_bytes(b"earlier run")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    started = time.time()
    (tmp_path / "results.json").write_text("{}")
    names = ("results.json", "evaluations.csv", "partition.png")
    line = written(tmp_path, names, since=started, note="nodes/node-K/: logs")
    assert line == f"results written to {tmp_path}/ (results.json; nodes/node-K/: logs)"
    assert not stale.exists() and (tmp_path / "results.json").is_file()
