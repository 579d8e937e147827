"""A node on a machine it does not control: full disks, bad input, stale key files,
refusal logs, identity and pauses.

In-process: the ``relayfl node`` command line through :func:`relayfl.cli.main` (bad input
fails before any work, so nothing listens), and nodes as threads on the in-memory
transport. ``/dev/full`` gives ENOSPC without root.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
import torch

from relayfl import RunConfig
from relayfl.certs import make_certificates
from relayfl.cli import build_parser, main
from relayfl.errors import ConfigError, RelayflError
from relayfl.node import Node, NodeConfig
from relayfl.node.checkpoint import CHECKPOINT, save_checkpoint
from relayfl.node.events import MAX_SOURCES, EventLog
from relayfl.node.shell import security
from relayfl.task import builtin
from relayfl.transport.memory import MemoryHub, MemoryTransport
from relayfl.worker import LocalWorker

FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full (Linux)")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chain_run(out: Path | None, *, prepare=None) -> list[Node]:
    """A 3-node chain on the in-memory transport (6 steps, checkpoint every step)."""
    config = RunConfig(
        num_clients=3, topology="chain", steps=6, batch_size=16, eval_every=3, seed=5
    )
    task = builtin("digits", limit_test=60)
    hub = MemoryHub()
    nodes = []
    for i in range(3):
        folder = out / f"node-{i}" if out is not None else None
        if folder is not None:
            folder.mkdir(parents=True)
            if prepare is not None:
                prepare(i, folder)
        options = NodeConfig(
            i, out=folder, step_timeout=10, dead_after=4, heartbeat=0.2, checkpoint_every=1
        )
        nodes.append(Node(config, options, LocalWorker(task, config, i), MemoryTransport(hub)))
    errors: list[BaseException] = []

    def go(node: Node) -> None:
        try:
            node.run()
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=go, args=(n,), daemon=True) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "a node did not finish in time"
    if errors:
        raise errors[0]
    return nodes


def _events(folder: Path, kind: str) -> list[dict]:
    lines = (folder / "log.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


# ----------------------------------------------------------------------------- disks
@needs_dev_full
def test_save_checkpoint_on_a_full_disk_keeps_the_previous_one(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, {"round": 1})
    os.symlink(FULL, tmp_path / "checkpoint.pt.tmp")
    with pytest.raises(OSError) as err:
        save_checkpoint(path, {"round": 2, "x": torch.zeros(1000)})
    assert err.value.errno == 28  # ENOSPC
    assert not (tmp_path / "checkpoint.pt.tmp").exists()  # the partial file is gone
    assert torch.load(path, weights_only=False) == {"round": 1}


@needs_dev_full
def test_a_full_disk_costs_one_checkpoint_not_the_node(tmp_path: Path, caplog) -> None:
    """Node 1's next checkpoint hits ENOSPC: one error line naming the file, training
    goes on, later checkpoints are written, and every model is bit-identical to the
    run with room on the disk."""

    def full(i: int, folder: Path) -> None:
        if i == 1:
            os.symlink(FULL, folder / "checkpoint.pt.tmp")

    with caplog.at_level(logging.ERROR, logger="relayfl.node"):
        nodes = _chain_run(tmp_path / "full", prepare=full)
    clean = _chain_run(tmp_path / "clean")
    for a, b in zip(nodes, clean, strict=True):
        assert torch.equal(a._x, b._x)
    folder = tmp_path / "full" / "node-1"
    failed = _events(folder, "checkpoint-failed")
    assert [(e["round"], e["errno"]) for e in failed] == [(1, 28)]
    assert failed[0]["path"] == str(folder / CHECKPOINT)
    assert [e["round"] for e in _events(folder, "checkpoint")] == [2, 3, 4, 5, 6]
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1
    assert "checkpoint.pt" in lines[0] and "No space left on device" in lines[0]


@needs_dev_full
def test_results_that_cannot_be_written_fail_the_node_in_one_line(tmp_path: Path) -> None:
    def full(i: int, folder: Path) -> None:
        if i == 2:
            os.symlink(FULL, folder / "results.json.tmp")

    with pytest.raises(RelayflError, match=r"cannot write the results of node 2 .*space"):
        _chain_run(tmp_path, prepare=full)


# ----------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-node topology file with loopback addresses, its certificates, and bad files."""
    w = tmp_path_factory.mktemp("node-cli")
    nodes = [{"id": k, "address": f"127.0.0.1:{_free_port()}"} for k in range(3)]
    (w / "topo.json").write_text(json.dumps({"edges": [[0, 1], [1, 2]], "nodes": nodes}))
    make_certificates(w / "certs", {k: "127.0.0.1" for k in range(3)})
    for name, key in (("garbage", b"-----BEGIN PRIVATE KEY-----\nxx\n"), ("swapped", None)):
        (w / name).mkdir()
        for f in ("ca.pem", "node-0.pem", "node-0.key"):
            (w / name / f).write_bytes((w / "certs" / f).read_bytes())
        (w / name / "node-0.key").write_bytes(key or (w / "certs" / "node-2.key").read_bytes())
    (w / "corrupt").mkdir()
    (w / "corrupt" / CHECKPOINT).write_bytes(b"PK\x03\x04 cut short")
    (w / "a-file").write_text("not a folder")
    return w


_BASE = ["node", "--id", "0", "--topology", "topo.json", "--steps", "4", "--startup-timeout", "3"]


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--insecure", "--listen", "localhost"], ["'localhost'", "host:port"]),
        (["--insecure", "--listen", "127.0.0.1:x1"], ["'127.0.0.1:x1'"]),
        (["--insecure", "--listen", "127.0.0.1:70000"], ["70000", "0..65535"]),
        (["--insecure", "--listen", "127.0.0.1:65535"], ["65535", "--data-listen"]),
        (["--insecure", "--data-listen", "::"], ["--data-listen", "'::'"]),
        (["--certificates", "garbage"], ["garbage/node-0.key", "not a private key"]),
        (["--certificates", "swapped"], ["swapped/node-0.key", "matching"]),
        (["--insecure", "--out", "corrupt", "--resume"], ["corrupt/checkpoint.pt", "unreadable"]),
        (["--insecure", "--out", "a-file"], ["a-file", "is a file"]),
        (["--insecure", "--out", "empty", "--resume"], ["no checkpoint", "empty"]),
    ],
    ids=[
        "listen-no-port",
        "listen-port-not-a-number",
        "listen-port-out-of-range",
        "no-data-port-left",
        "data-listen-no-port",
        "garbage-key",
        "another-nodes-key",
        "corrupt-checkpoint",
        "out-is-a-file",
        "resume-without-checkpoint",
    ],
)
def test_bad_input_to_relayfl_node_is_one_line(
    workdir: Path, monkeypatch, capsys, argv: list[str], words: list[str]
) -> None:
    monkeypatch.chdir(workdir)
    out = [] if "--out" in argv else ["--out", "out"]
    assert main([*_BASE, *argv, *out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("relayfl: error: ")]
    assert len(errors) == 1, err
    assert all(w in errors[0] for w in words), errors[0]
    assert not any("Traceback" in line for line in err)


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--topology", "missing.json", "--id", "0"], ["missing.json", "does not exist"]),
        (["--topology", "topo.json", "--id", "7"], ["--id 7", "0..2"]),
        (["--topology", "topo.json", "--id", "-1"], ["--id -1", "0..2"]),
    ],
    ids=["missing-topology-file", "id-not-in-topology", "negative-id"],
)
def test_topology_mistakes_name_the_file_or_the_id(
    workdir: Path, monkeypatch, capsys, argv: list[str], words: list[str]
) -> None:
    monkeypatch.chdir(workdir)
    assert main(["node", *argv, "--steps", "4", "--insecure", "--out", "out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("relayfl: error: ")
    assert all(w in err[0] for w in words), err[0]


# ----------------------------------------------------------------------------- identity
def test_certificates_turn_on_mutual_tls_unless_opted_out(workdir: Path, caplog) -> None:
    def parse(*extra: str):
        return build_parser().parse_args(
            ["node", "--id", "1", "--topology", str(workdir / "topo.json"), *extra]
        )

    log = logging.getLogger("relayfl.node")
    certs = str(workdir / "certs")
    tls, mutual, _ = security(parse("--certificates", certs), 1, log)
    assert tls is not None and mutual
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        _, mutual, _ = security(parse("--certificates", certs, "--no-mutual-tls"), 1, log)
    assert not mutual
    assert ["pose as any neighbour" in r.getMessage() for r in caplog.records] == [True]
    with pytest.raises(ConfigError, match="--mutual-tls needs --certificates"):
        security(parse("--insecure", "--mutual-tls"), 1, log)


# ----------------------------------------------------------------------------- certs
def test_private_keys_are_0600_whatever_stale_files_lie_in_the_folder(tmp_path: Path) -> None:
    make_certificates(tmp_path, {0: "127.0.0.1", 1: "127.0.0.1"})
    stale = tmp_path / "node-1.key.tmp"
    stale.write_text("")
    stale.chmod(0o644)
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("untouched")
    os.symlink(elsewhere, tmp_path / "ca.key.tmp")
    make_certificates(tmp_path, {1: "127.0.0.1"})
    for key in ("ca.key", "node-0.key", "node-1.key"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600, key
    assert elsewhere.read_text() == "untouched"  # a planted symlink is never followed


# ----------------------------------------------------------------------------- logs
def test_refusals_are_rate_limited_per_peer_address_with_bounded_state(
    tmp_path: Path, caplog
) -> None:
    """A peer that opens a new connection (a new source port) per attempt still gets one
    stderr line per 5 s; every refusal reaches log.jsonl with its address; the rate
    limiter forgets the least recent of many peers."""
    events = EventLog(4, logging.getLogger("relayfl.node"))
    events.open(tmp_path / "log.jsonl")
    with caplog.at_level(logging.WARNING):
        for port in range(40000, 40200):
            events.reject("wrong-token", f"10.1.2.3:{port}", "a wrong run token")
        events.reject("wrong-token", "ipv4:10.9.9.9:5000", "a wrong run token")
    events.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "from 10.1.2.3:40000" in lines[0] and "from ipv4:10.9.9.9:5000" in lines[1]
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(records) == 201 and records[-1]["source"] == "ipv4:10.9.9.9:5000"
    assert events.rejected == {"wrong-token": 201}
    for k in range(MAX_SOURCES + 500):
        events.reject("busy", f"10.{k // 65536}.{k // 256 % 256}.{k % 256}:1", "busy")
    assert len(events._last_warn) == MAX_SOURCES


# ----------------------------------------------------------------------------- pauses
def test_a_node_waking_from_a_pause_judges_neighbours_on_fresh_heartbeats() -> None:
    """Frozen past dead-after (its neighbours' last heartbeats look stale by its own
    clock): on waking it logs the pause and declares nobody dead."""
    config = RunConfig(num_clients=3, topology="chain", steps=4, batch_size=16, seed=5)
    task = builtin("digits", limit_test=60)
    options = NodeConfig(1, dead_after=2.0, heartbeat=0.2)
    node = Node(config, options, LocalWorker(task, config, 1), MemoryTransport(MemoryHub()))
    seen: list[dict] = []
    node._event = lambda event, **fields: seen.append({"event": event, **fields})
    stale = time.monotonic() - 30.0  # 30 s frozen
    for p in node._peers.values():
        p.last_seen = stale
    node._woke_up(30.0)
    node._check_deaths()
    assert not any(p.dead for p in node._peers.values())
    assert [e["event"] for e in seen] == ["paused"]
    for p in node._peers.values():  # the clock runs again: silence from now on counts
        p.last_seen = time.monotonic() - 3.0
    node._check_deaths()
    assert all(p.dead for p in node._peers.values())


@pytest.mark.slow
def test_a_node_stopped_past_dead_after_wakes_without_declaring_anyone_dead(
    tmp_path: Path,
) -> None:
    """SIGSTOP node 2 of a chain for longer than --dead-after, then SIGCONT: it logs
    the pause and declares nobody dead (its neighbour, which really saw it go silent,
    may); everyone finishes, and the merged result's parts and finished agree."""
    import signal

    from relayfl.launch import Launcher, LaunchOptions

    config = RunConfig(
        num_clients=3, topology="chain", steps=600, batch_size=16, eval_every=600, seed=5
    )  # long enough that node 1 (about 10 ms a step alone) is still running when 2 wakes
    options = LaunchOptions(
        out=tmp_path,
        insecure=True,
        step_timeout=30.0,
        dead_after=1.5,
        heartbeat=0.25,
        startup_timeout=120.0,
        checkpoint_every=0,
    )
    with Launcher(config, options) as run:
        run.start()
        assert run.wait_step(2, 5, timeout=120)
        pid = run.procs[2].popen.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(3.0)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert run.procs[2].step < config.steps, "the run ended before the pause"
        assert run.procs[1].step < config.steps, "node 1 finished during the pause"
        run.run(timeout=150)
        result = run.collect()
        assert run.failed() is None
    assert _events(tmp_path / "nodes" / "node-2", "dead") == []
    events = _events(tmp_path / "nodes" / "node-2", "paused")
    assert len(events) == 1 and events[0]["gap_s"] >= 2.5
    assert result.extra["finished"] == [0, 1, 2]
    assert result.extra["parts"] == [[0, 1, 2]]
    assert result.final.step == config.steps
