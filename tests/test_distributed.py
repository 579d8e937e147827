"""Long runs: checkpoints and resume, simulations split over torch.distributed ranks
(2 gloo ranks on CPU, launched as torchrun does), bounded failures, TensorBoard."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from relayfl import simulate
from relayfl.errors import ConfigError, RunInterrupted
from relayfl.relay import RelaySum
from relayfl.results import EvalRecord
from relayfl.shard import cut_edges, split_workers
from relayfl.topology import binary_tree, build

sys.path.insert(0, str(Path(__file__).parent))
from dist_user_script import CASES, RESUME, make_task, run_stopped_and_resumed

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}
    return env


def _comparable(result: dict) -> str:
    """results.json without wall times (NaN-safe: compared as JSON text)."""
    result = {k: v for k, v in result.items() if k != "wall_s"}
    result["evaluations"] = [
        {k: v for k, v in e.items() if k != "wall_s"} for e in result["evaluations"]
    ]
    return json.dumps(result, sort_keys=True, default=str)


# ------------------------------------------------------------------ one process
def test_relaysum_state_dict_continues_bit_for_bit() -> None:
    """Double trees with drops: save after 5 steps, load into a fresh RelaySum, and the
    next 5 steps equal the uninterrupted ones exactly (messages, counts, fill, inbox)."""
    trees = build("double-binary-trees", 9)
    x0 = torch.randn(7, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    values = [torch.randn(9, 7, generator=gen) for _ in range(10)]
    edges = RelaySum(trees, initial=x0).edge_indices
    keeps = [[torch.rand(len(e.src), generator=gen) > 0.3 for e in edges] for _ in range(10)]
    a = RelaySum(trees, initial=x0, fill="latest")
    for v, k in zip(values[:5], keeps[:5], strict=True):
        a.step(v, keep=k)
    b = RelaySum(trees, initial=x0, fill="latest")
    b.load_state_dict(a.state_dict())
    for v, k in zip(values[5:], keeps[5:], strict=True):
        assert torch.equal(a.step(v, keep=k), b.step(v, keep=k))
    assert torch.equal(a.last_counts, b.last_counts)


def test_stopped_mid_round_and_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    """Double trees, 20% drops, 2 local steps, momentum, dropout: stopped after step 9
    (mid-round, past the trees' diameter) and resumed, the models are bitwise those of
    the uninterrupted run and results.json is equal but for wall times."""
    task = make_task()
    full = simulate(task, RESUME)
    resumed = run_stopped_and_resumed(task, tmp_path)
    assert (tmp_path / "checkpoint.pt").is_file()
    assert torch.equal(full.models, resumed.models)
    assert resumed.status == "completed"
    assert _comparable(full.to_dict()) == _comparable(resumed.to_dict())


def test_resume_refuses_missing_other_config_and_other_rank_count(tmp_path: Path) -> None:
    task = make_task()
    cfg = RESUME.replace(steps=4)
    with pytest.raises(ConfigError, match="found no checkpoint"):
        simulate(task, cfg, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(RunInterrupted) as stopped:
        simulate(task, cfg, checkpoint_dir=tmp_path, stop=lambda: True)
    assert stopped.value.result.status == "interrupted"
    with pytest.raises(ConfigError, match="differs in lr"):
        simulate(task, cfg.replace(lr=0.2), checkpoint_dir=tmp_path, resume=True)
    (tmp_path / "checkpoint.pt").rename(tmp_path / "checkpoint-rank0-of-2.pt")
    with pytest.raises(ConfigError, match="number of ranks that wrote it"):
        simulate(task, cfg, checkpoint_dir=tmp_path, resume=True)


def test_split_keeps_subtrees_together() -> None:
    """The DFS split of a 64-worker binary tree over 4 ranks cuts 7 edges (a contiguous
    split of the ids would cut 48), with shard sizes 16 each."""
    tree = binary_tree(64)
    owner = split_workers([tree], 4)
    assert torch.bincount(owner).tolist() == [16, 16, 16, 16]
    assert cut_edges([tree], owner) == 7
    assert cut_edges([tree], torch.arange(64) // 16) == 48
    with pytest.raises(ConfigError, match="at most 64 ranks"):
        split_workers([tree], 65)


# ------------------------------------------------------------------ TensorBoard
def test_tensorboard_writes_every_evaluation(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from relayfl.tensorboard import SCALARS, TensorBoardWriter

    writer = TensorBoardWriter(tmp_path)
    for step, acc in ((0, 0.25), (10, 0.5), (20, 0.75)):
        loss = math.nan if step == 0 else 1.0
        record = EvalRecord(
            *(step, step, step / 10, 0.1, acc, acc - 0.2, acc + 0.1, 1.5, 2.0, loss, 0.01),
            *([acc], [1.5], [100 * step], [100 * step], 1.0),
        )
        writer.add_evaluation(record)
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert set(events.Tags()["scalars"]) == set(SCALARS)
    worst = events.Scalars("accuracy/worst")
    assert [e.step for e in worst] == [0, 10, 20]
    assert [e.value for e in worst] == pytest.approx([0.05, 0.3, 0.55])
    assert [e.value for e in events.Scalars("bytes/sent_per_worker")] == [0, 1000, 2000]


def test_tensorboard_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from relayfl.tensorboard import TensorBoardWriter

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    with pytest.raises(ConfigError, match=r"pip install 'relayfl\[tensorboard\]'"):
        TensorBoardWriter("unused")


# ------------------------------------------------------------------ 2 gloo ranks
@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path: Path) -> None:
    """torchrun with 2 gloo ranks on CPU (a user's script, model and data): relaysgd on a
    binary tree and on double trees, dpsgd and gradient tracking, all with drops, give
    bitwise the single-process models (same summation order per worker); allreduce sums
    over ranks in another order, equal within 1e-6. A run stopped mid-round after 9
    steps and resumed on 2 ranks equals the uninterrupted 2-rank run and the one-process
    run (results.json but wall times and the consensus distance's last digits)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", str(ROOT / "tests" / "dist_user_script.py"), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    task = make_task()
    for name, config in CASES.items():
        single = simulate(task, config)
        sharded = torch.load(tmp_path / f"{name}.pt")
        if config.algorithm == "allreduce":
            torch.testing.assert_close(sharded, single.models, rtol=0, atol=1e-6)
        else:
            assert torch.equal(sharded, single.models), name
        info = json.loads((tmp_path / f"{name}.json").read_text())
        assert info["extra"]["distributed"]["world_size"] == 2
        assert info["extra"]["distributed"]["backend"] == "gloo"
        assert [e["accuracies"] for e in info["evaluations"]] == [
            e.accuracies for e in single.evaluations
        ]
    full = torch.load(tmp_path / "resume-full.pt")
    assert torch.equal(torch.load(tmp_path / "resume-resumed.pt"), full)
    assert torch.equal(full, simulate(task, RESUME).models)
    a = json.loads((tmp_path / "resume-full.json").read_text())
    b = json.loads((tmp_path / "resume-resumed.json").read_text())
    assert _comparable(a) == _comparable(b)
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.pt")) == [
        "checkpoint-rank0-of-2.pt",
        "checkpoint-rank1-of-2.pt",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_hung_rank_ends_the_run_within_the_timeout(tmp_path: Path) -> None:
    """Two `relayfl simulate` ranks (env as torchrun sets it), --dist-timeout 8: rank 1
    is frozen (SIGSTOP) mid-run; rank 0 exits non-zero within the timeout plus start-up
    slack, and its first error line names itself, the peer and the cause."""
    port = str(_free_port())
    args = [sys.executable, "-m", "relayfl.cli", "simulate", "--clients", "2", "--steps",
            "100000", "--eval-every", "0", "--dataset", "digits", "--model", "mlp",
            "--engine", "loop", "--batch-size", "4", "--eval-limit", "10",
            "--dist-timeout", "8", "--quiet", "--checkpoint-every", "1"]  # fmt: skip
    procs = []
    try:
        for rank in (0, 1):
            env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                       LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)  # fmt: skip
            procs.append(subprocess.Popen(
                [*args, "--out", str(tmp_path)], env=env, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True))  # fmt: skip
        deadline = time.monotonic() + 120
        while not (tmp_path / "checkpoint-rank1-of-2.pt").exists():
            assert time.monotonic() < deadline, "the ranks never reached their first round"
            assert procs[0].poll() is None, procs[0].communicate()[1]
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        waited = time.monotonic() - frozen
        assert procs[0].returncode != 0
        assert waited < 8 + 20
        first = next(line for line in err.splitlines() if line.startswith("relayfl:"))
        assert first.startswith("relayfl: error: rank 0 on "), first
        assert "with rank(s) [1] failed" in first, first
        assert "Timed out" in first, first
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


@pytest.mark.slow
def test_ctrl_c_saves_results_and_checkpoint_and_resume_finishes(tmp_path: Path) -> None:
    """SIGINT to `relayfl simulate` mid-run: exit 130, results.json with status
    interrupted, a checkpoint of the step it stopped at, and the command that resumes;
    --resume then finishes the run (status completed, every evaluation once)."""
    args = ["simulate", "--clients", "3", "--steps", "200", "--eval-every", "100",
            "--model", "mlp", "--engine", "loop", "--batch-size", "4", "--eval-limit", "20",
            "--checkpoint-every", "10", "--quiet", "--out", str(tmp_path)]  # fmt: skip
    cmd = [sys.executable, "-m", "relayfl.cli", *args]
    proc = subprocess.Popen(cmd, env=_env(), stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "checkpoint.pt").exists():  # stepping: round 10 is saved
            assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 130, err
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "interrupted"
    stopped = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["state"]["step"]
    assert 10 <= stopped < 200
    assert [e["step"] for e in saved["evaluations"]] == [s for s in (0, 100) if s <= stopped]
    assert err.splitlines()[-1].strip().endswith("--resume"), err
    done = subprocess.run([*cmd, "--resume"], env=_env(), capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr
    final = json.loads((tmp_path / "results.json").read_text())
    assert final["status"] == "completed"
    assert [e["step"] for e in final["evaluations"]] == [0, 100, 200]
