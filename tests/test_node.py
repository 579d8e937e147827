"""``relayfl node`` deployed as local processes (``relayfl launch``) against the simulator.

Every node binds 127.0.0.1 port 0, uses one torch thread, and every wait is bounded.
The multi-process runs are marked slow (CI runs them).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from relayfl import RunConfig, simulate, topology
from relayfl.certs import TlsFiles, load_tls, make_certificates
from relayfl.cli import main
from relayfl.launch import Launcher, LaunchOptions
from relayfl.node import split_parts
from relayfl.transport.base import LinkSpec, Rejected
from relayfl.transport.grpc import GrpcTransport
from relayfl.transport.probe import DataProbe

#: Deployed and simulated models agree to this (same loop engine, keyed batches and
#: drops; only float summation order could differ: measured 0).
ATOL = 1e-5


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread in this process too (2 shared cores; restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(**kw) -> RunConfig:
    base = dict(
        num_clients=4,
        steps=12,
        batch_size=16,
        eval_every=6,
        eval_limit=120,
        seed=5,
        momentum=0.9,
        engine="loop",
    )
    return RunConfig(**{**base, **kw})


def _options(out: Path, **kw) -> LaunchOptions:
    base = dict(
        out=out,
        insecure=True,
        step_timeout=30.0,
        dead_after=4.0,
        heartbeat=0.5,
        startup_timeout=180.0,
        checkpoint_every=0,
    )
    return LaunchOptions(**{**base, **kw})


def _launch(config: RunConfig, options: LaunchOptions, timeout: float = 200):
    with Launcher(config, options) as run:
        run.start()
        run.run(timeout=timeout)
        result = run.collect()
        assert run.failed() is None
    return result


def _events(out: Path, node: int) -> list[dict]:
    path = out / "nodes" / f"node-{node}" / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize(
    "algorithm,topo,nodes",
    [("relaysgd", "binary-tree", 5), ("dpsgd", "ring", 4)],
    ids=["relaysgd-binary-tree", "dpsgd-ring"],
)
def test_deployment_equals_the_simulation(
    tmp_path: Path, algorithm: str, topo: str, nodes: int
) -> None:
    """N processes over gRPC/TCP end with the in-memory simulation's models."""
    config = _config(algorithm=algorithm, topology=topo, num_clients=nodes)
    result = _launch(config, _options(tmp_path))
    expected = simulate(config=config)
    torch.testing.assert_close(result.models.float(), expected.models, rtol=0, atol=ATOL)
    assert [e.step for e in result.evaluations] == [e.step for e in expected.evaluations]
    assert result.final.accuracies == pytest.approx(expected.final.accuracies, abs=1e-6)
    for name in ("results.json", "evaluations.csv", "learning_curve.png", "partition.png"):
        assert (tmp_path / name).is_file()
    assert result.extra["drops"] == {k: {} for k in range(nodes)}


@pytest.mark.slow
def test_deployed_flower_client_equals_the_simulation(tmp_path: Path) -> None:
    """Nodes training the ready Flower client ``clients.digits:app`` (through
    relayfl.flower's adapter; momentum kept in the Flower context) match the simulator."""
    config = _config(topology="chain", num_clients=3, steps=8, eval_every=4)
    result = _launch(config, _options(tmp_path, client="clients.digits:app"))
    expected = simulate(config=config)
    torch.testing.assert_close(result.models.float(), expected.models, rtol=0, atol=ATOL)
    assert result.final.accuracies == pytest.approx(expected.final.accuracies, abs=1e-6)


@pytest.mark.slow
def test_injected_drops_deployed_run_finishes_like_the_simulator(tmp_path: Path) -> None:
    """10% seeded drops with fill=latest: the deployed run finishes, models as simulated."""
    config = _config(drop_probability=0.1, fill="latest", steps=16, eval_every=8)
    result = _launch(config, _options(tmp_path, insecure=False))  # TLS + mutual TLS
    expected = simulate(config=config)
    torch.testing.assert_close(result.models.float(), expected.models, rtol=0, atol=ATOL)
    injected = sum(d.get("injected", 0) for d in result.extra["drops"].values())
    assert injected > 0
    assert result.extra["launch"]["mutual_tls"] is True


@pytest.mark.slow
def test_drops_with_latest_fill_keep_worst_client_accuracy_in_the_simulator() -> None:
    """Table 5's claim on digits: 10% dropped messages with fill="latest" cost the
    worst client at most ~2 points against the drop-free run (same seeds)."""
    base = RunConfig(num_clients=8, steps=300, alpha=0.1, fill="latest", eval_every=0, seed=0)
    clean = simulate(config=base).final.worst_accuracy
    lossy = simulate(config=base.replace(drop_probability=0.1)).final.worst_accuracy
    assert clean > 0.85
    assert lossy >= clean - 0.025, (clean, lossy)


@pytest.mark.slow
def test_eight_node_run_survives_a_killed_node_intruders_and_malformed_messages(
    tmp_path: Path,
) -> None:
    """SIGKILL an inner node mid-run, while intruders and malformed frames hit another.

    The others finish; only the killed node is declared dead (by its neighbours); the
    results name it and the parts the tree split into; every refusal is logged."""
    config = _config(num_clients=8, steps=150, eval_every=75)
    tree = topology.binary_tree(8)  # 0-1, 1-2, 1-3, 2-4, 2-5, 3-6, 3-7
    victim, killed, impostor = 3, 2, 1  # node 1 is a neighbour of node 3
    options = _options(tmp_path, insecure=False, mutual_tls=True, step_timeout=60.0)
    with Launcher(config, options) as run:
        run.start()
        assert run.wait_step(killed, 5, timeout=120)
        run.kill(killed)
        listening = next(e for e in _events(tmp_path, victim) if e["event"] == "listening")
        certs = tmp_path / "certificates"
        make_certificates(certs, {9: "127.0.0.1"})  # a valid certificate, not in the topology
        control = run.procs[victim].control
        data_port = int(run.procs[victim].data.rsplit(":", 1)[1])
        args = (certs, listening["run_id"], run.token, victim, impostor)
        _intruders(*args, control, data_port, tmp_path)
        _malformed(*args, data_port, listening["parameters"])
        assert run.procs[victim].step < config.steps, "the run ended before the attacks"
        run.run(timeout=240)
        result = run.collect()
        rc = {k: p.popen.returncode for k, p in run.procs.items()}
    assert all(rc[k] == 0 for k in rc if k != killed), rc
    assert result.extra["launch"]["killed"][0]["node"] == killed
    declared = {(d["declared_by"], d["neighbor"]) for d in result.extra["dead"]}
    assert declared == {(j, killed) for j in tree.neighbors(killed)}
    assert result.extra["parts"] == split_parts([tree], {killed}) == [[0, 1, 3, 6, 7], [4], [5]]
    final = result.final
    assert final.step == config.steps
    assert math.isnan(final.accuracies[killed])
    assert all(math.isfinite(a) for k, a in enumerate(final.accuracies) if k != killed)
    rejected = result.extra["rejected"][victim]
    for kind in (
        "wrong-token",
        "not-neighbour",
        "bad-certificate",
        "malformed",
        "truncated",
        "oversized",
        "wrong-shape",
        "wrong-dtype",
        "wrong-run",
        "replay",
        "too-far-ahead",
        "non-finite",
        "spoofed-sender",
    ):
        assert rejected.get(kind, 0) >= 1, (kind, rejected)
    logged = {e["kind"] for e in _events(tmp_path, victim) if e["event"] == "reject"}
    assert set(rejected) <= logged


def _intruders(
    certs: Path,
    run_id: str,
    token: str,
    victim: int,
    impostor: int,
    control: str,
    data_port: int,
    tmp: Path,
) -> None:
    """Wrong token, a certificate from another CA, and a node not in the topology."""
    other = make_certificates(tmp / "other-ca", {impostor: "127.0.0.1"})
    cases = [
        (impostor, "wrong-token", load_tls(certs, impostor), "wrong-token"),
        (9, token, load_tls(certs, 9), "not-neighbour"),
        (
            impostor,
            token,
            TlsFiles(
                certs / "ca.pem", other / f"node-{impostor}.pem", other / f"node-{impostor}.key"
            ),
            None,
        ),
    ]
    for sender, tok, tls, kind in cases:
        t = GrpcTransport(tls=tls, mutual_tls=True)
        t.start(LinkSpec(sender, run_id, frozenset({victim}), tok, 1 << 20), _Quiet())
        t.set_peers({victim: control})
        try:
            if kind is None:  # the TLS handshake itself fails: no answer at all
                assert t.status(victim, {"step": 0, "phase": "start", "waiting_on": []}, 3) is None
            else:
                with pytest.raises(Rejected, match=kind):
                    t.status(victim, {"step": 0, "phase": "start", "waiting_on": []}, 10)
        finally:
            t.close(timeout=1)
    with pytest.raises(OSError):
        DataProbe(
            "127.0.0.1",
            data_port,
            sender=impostor,
            run_id=run_id,
            token=token,
            tls=cases[2][2],
            server=victim,
        ).hello()


def _malformed(
    certs: Path, run_id: str, token: str, victim: int, impostor: int, data_port: int, numel: int
) -> None:
    """Every malformed kind, from an authenticated neighbour's connection."""
    tls = load_tls(certs, impostor)

    def probe() -> DataProbe:
        p = DataProbe(
            "127.0.0.1",
            data_port,
            sender=impostor,
            run_id=run_id,
            token=token,
            tls=tls,
            server=victim,
        )
        assert p.hello() == "welcome"
        return p

    zeros = torch.zeros(numel)
    good = {
        "kind": "data",
        "run": run_id,
        "step": 0,
        "sender": impostor,
        "tree": 0,
        "count": 1.0,
        "dtype": "float32",
        "shape": [numel],
    }
    nan = zeros.clone()
    nan[7] = float("nan")
    inf = zeros.clone()
    inf[0] = float("inf")
    with probe() as p:  # frames the node reads and refuses, keeping the connection
        p.send_frame({**good, "shape": [numel - 1]}, zeros[:-1].numpy().tobytes())
        p.send_frame({**good, "dtype": "float16"}, zeros.half().numpy().tobytes())
        p.send_frame({**good, "run": "someone-else"}, zeros.numpy().tobytes())
        p.send_frame(good, zeros.numpy().tobytes())  # step 0: already used (replay)
        p.send_frame({**good, "step": 10**6}, zeros.numpy().tobytes())  # too far ahead
        p.send_frame({**good, "step": 10**6}, nan.numpy().tobytes())  # NaN
        p.send_frame({**good, "step": 10**6}, inf.numpy().tobytes())  # Inf
        p.send_frame({**good, "sender": 0}, zeros.numpy().tobytes())  # spoofed sender
        p.send_raw(b"RLF1" + (5).to_bytes(4, "big") + (0).to_bytes(8, "big") + b"{oops")
        assert not p.closed_by_peer(timeout=1.0)
    with probe() as p:  # oversized: refused unread, connection closed
        p.send_frame(good, b"", payload_len=1 << 40)
        assert p.closed_by_peer()
    with probe() as p:  # truncated: the sender vanishes mid-payload
        p.send_frame(good, zeros.numpy().tobytes()[:100], payload_len=numel * 4)
        p.sock.shutdown(1)


class _Quiet:
    def on_message(self, message) -> None: ...
    def on_status(self, sender, status) -> dict:
        return {"step": 0, "phase": "start", "waiting_on": []}

    def on_reject(self, kind, source, detail) -> None: ...
    def on_progress(self, sender) -> None: ...
    def on_send_failed(self, peer, step) -> None: ...


@pytest.mark.slow
def test_killed_node_resumes_from_its_checkpoint_and_finishes(tmp_path: Path) -> None:
    """SIGKILL inner node 1 of a chain; once declared dead, restart it with --resume:
    it reloads its checkpoint, skips to its neighbours' step, and everyone finishes."""
    config = _config(topology="chain", steps=300, eval_every=150, fill="latest")
    options = _options(tmp_path, checkpoint_every=5, dead_after=3.0)
    with Launcher(config, options) as run:
        run.start()
        assert run.wait_step(1, 12, timeout=120)
        run.kill(1)
        killed_at = run.killed[0]["step"]
        assert run.wait_for(
            lambda s: any(e["event"] == "dead" and e["neighbor"] == 1 for e in s.events), 60
        )
        run.restart(1, resume=True)
        run.run(timeout=240)
        result = run.collect()
        assert run.failed() is None
    resumed = next(e for e in _events(tmp_path, 1) if e["event"] == "resumed")
    assert resumed["checkpoint_round"] == killed_at // 5 * 5  # its last checkpoint
    assert killed_at <= resumed["round"] < config.steps  # rejoined mid-run
    revived = {e["node"] for k in (0, 2) for e in _events(tmp_path, k) if e["event"] == "revived"}
    assert revived == {0, 2}
    assert result.final.step == config.steps
    assert result.extra["finished"] == [0, 1, 2, 3]
    accuracies = result.final.accuracies
    assert all(math.isfinite(a) for a in accuracies)
    assert max(accuracies) - min(accuracies) < 0.05  # node 1 was averaged back in


def test_node_without_certificates_names_the_certs_command(tmp_path: Path, capsys) -> None:
    """A node started without TLS material or --insecure is refused with the fix."""
    rc = main(
        [
            "node",
            "--id",
            "0",
            "--topology",
            "chain",
            "--clients",
            "2",
            "--peers",
            "127.0.0.1:1,127.0.0.1:2",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 2
    assert "relayfl certs" in capsys.readouterr().err


def test_node_refuses_algorithms_that_need_a_server(tmp_path: Path, capsys) -> None:
    """allreduce cannot run serverless; the error names the algorithms that can."""
    rc = main(
        ["launch", "--nodes", "2", "--algorithm", "allreduce", "--insecure", "--out", str(tmp_path)]
    )
    assert rc == 2
    assert "relaysgd" in capsys.readouterr().err
