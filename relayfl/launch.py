"""``relayfl launch``: N nodes as local processes on loopback, one results folder.

The demo and the test harness of the deployment. The launcher

1. writes the run config (``run_config.json``) and, unless ``insecure``, a run CA and
   node certificates (``certificates/``), and a random run token (passed to the nodes in
   their environment);
2. starts ``relayfl node`` once per node; each binds port 0 and reports its ports on
   stdout, so parallel runs never race for ports; the launcher then writes the address
   book to every node's stdin (and ``topology.json`` with the addresses);
3. follows the nodes' JSON events for one progress bar, can kill (SIGKILL) and restart
   (``--resume``) nodes on cue, and ends every process it started;
4. merges the nodes' logs into ``results.json``, ``evaluations.csv``,
   ``learning_curve.png`` and ``partition.png``: the same files as ``relayfl simulate``.

Each node's own files stay in ``nodes/node-K/`` (``log.jsonl``, ``stderr.log``,
``results.json``, ``model.pt``, ``checkpoint.pt``).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from relayfl.config import RunConfig
from relayfl.errors import ConfigError, TransportError
from relayfl.results import EvalRecord, RunResult, library_versions

__all__ = ["LaunchOptions", "Launcher", "merge_results"]


@dataclass
class LaunchOptions:
    """How ``relayfl launch`` starts and watches its nodes.

    Parameters
    ----------
    out : Path
        Results folder.
    insecure : bool
        Plaintext on loopback (no certificates).
    certificates : Path, optional
        A ``relayfl certs`` folder; default (without ``insecure``): made in
        ``out/certificates``.
    mutual_tls : bool, default True
        Nodes also check the certificates of the peers that connect to them.
    token : str, optional
        Run token (default: a random one).
    step_timeout, dead_after, heartbeat, startup_timeout : float
    checkpoint_every : int
    client : str, optional
        ``module:attribute`` every node trains (default: the built-in dataset).
    initial : str, optional
        The initial model file of a Flower ``client`` (``relayfl node --initial``).
    run_config : str, optional
        ``"k=v ..."``: the Flower client's ``context.run_config`` (``--run-config``).
    threads : int, default 1
        Torch threads per node.
    kills : list of (node, step)
        SIGKILL node once it reports that step.
    resume_after : float, optional
        Restart killed nodes with ``--resume`` after this many seconds.
    quiet : bool
    run_name : str
    """

    out: Path
    insecure: bool = False
    certificates: Path | None = None
    mutual_tls: bool = True
    token: str | None = None
    step_timeout: float = 60.0
    dead_after: float = 20.0
    heartbeat: float = 1.0
    startup_timeout: float = 300.0
    checkpoint_every: int = 10
    client: str | None = None
    initial: str | None = None
    run_config: str | None = None
    threads: int = 1
    kills: list[tuple[int, int]] = field(default_factory=list)
    resume_after: float | None = None
    quiet: bool = True
    run_name: str = ""
    fork: bool = True


#: The module whose ``main(argv)`` is the ``relayfl`` program a node process runs.
_ENTRY = "relayfl.cli"

#: What the launcher's fork server imports once, so each node starts in about a second
#: instead of importing torch (and torch.func's torch._dynamo, and scikit-learn) anew.
_PRELOAD = [
    "torch",
    "torch._dynamo",
    "sklearn.datasets",
    "relayfl.cli",
    "relayfl.deploy",
    "relayfl.node",
    "relayfl.worker",
    "relayfl.task",
    "relayfl.data",
    "relayfl.launch",
]


def _fork_context() -> Any:
    """The ``forkserver`` multiprocessing context with the heavy imports preloaded, or
    None where forking is not available (then nodes start as plain subprocesses)."""
    import multiprocessing as mp

    try:
        ctx = mp.get_context("forkserver")
    except ValueError:
        return None
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def _node_process(argv: list[str], stdin: Any, stdout: Any, stderr: str, env: dict) -> None:
    """Body of a forked node: own session, stdio on the launcher's pipes, then the CLI."""
    os.setsid()
    os.environ.update(env)
    fd = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    os.dup2(stdin.fileno(), 0)
    os.dup2(stdout.fileno(), 1)
    stdin.close()
    stdout.close()
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own stdio
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    # the `relayfl` program by its entry point's name, as the subprocess path runs
    # `python -m relayfl.cli`: the launcher is a library below the command line
    main = importlib.import_module(_ENTRY).main

    try:
        rc = main(argv)
    except SystemExit as err:
        rc = err.code if isinstance(err.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        rc = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


class _Forked:
    """A forked node with the parts of ``subprocess.Popen`` the launcher uses."""

    def __init__(self, ctx: Any, argv: list[str], stderr: Path, env: dict) -> None:
        child_in, self._in = ctx.Pipe(duplex=False)
        self._out, child_out = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=_node_process,
            args=(argv, child_in, child_out, str(stderr), env),
            daemon=False,
        )
        self.process.start()
        child_in.close()
        child_out.close()
        self.pid = self.process.pid
        self.stdin = os.fdopen(os.dup(self._in.fileno()), "wb")
        self.stdout = os.fdopen(os.dup(self._out.fileno()), "rb")
        self._in.close()
        self._out.close()

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int | None:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(f"node {self.pid}", timeout or 0)
        return self.process.exitcode

    def send_signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@dataclass
class _Proc:
    node: int
    popen: subprocess.Popen
    control: str | None = None
    data: str | None = None
    step: int = 0
    done: bool = False
    killed_at: float | None = None
    reader: threading.Thread | None = None


class Launcher:
    """Start, watch and end the nodes of one loopback run (a context manager).

    Examples
    --------
    >>> with Launcher(RunConfig(num_clients=4, steps=20), LaunchOptions(Path("out"))) as run:
    ...     run.start()
    ...     run.run(timeout=300)
    ...     result = run.collect()  # doctest: +SKIP
    """

    def __init__(self, config: RunConfig, options: LaunchOptions) -> None:
        from relayfl.node import NODE_ALGORITHMS

        if config.algorithm not in NODE_ALGORITHMS:
            raise ConfigError(
                f"relayfl launch runs {', '.join(NODE_ALGORITHMS)}, not {config.algorithm!r}; "
                "use relayfl simulate for the others"
            )
        self.config = config
        self.options = options
        self.out = Path(options.out)
        self.graphs = config.build_graphs()
        self.n = config.num_clients
        self.token = options.token or secrets.token_hex(16)
        self.procs: dict[int, _Proc] = {}
        self.events: list[dict[str, Any]] = []
        self.killed: list[dict[str, Any]] = []
        self.restarted: list[dict[str, Any]] = []
        self._cv = threading.Condition()
        self._started = time.monotonic()
        self._wall_started = time.time()  # file times of this run's outputs are after it
        self._bar: Any = None
        self._job: Any = None
        self._book: dict[int, str] = {}
        self._fork = _fork_context() if options.fork else None

    # ------------------------------------------------------------------ processes
    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def node_dir(self, node: int) -> Path:
        return self.out / "nodes" / f"node-{node}"

    def _command(
        self, node: int, *, resume: bool = False, listen: str = "127.0.0.1:0"
    ) -> list[str]:
        o = self.options
        cmd = [
            sys.executable,
            "-m",
            _ENTRY,
            "node",
            "--id",
            str(node),
            "--config",
            str(self.out / "run_config.json"),
            "--listen",
            listen,
            "--data-listen",
            "127.0.0.1:0",
            "--out",
            str(self.node_dir(node)),
            "--step-timeout",
            str(o.step_timeout),
            "--dead-after",
            str(o.dead_after),
            "--heartbeat",
            str(o.heartbeat),
            "--startup-timeout",
            str(o.startup_timeout),
            "--checkpoint-every",
            str(o.checkpoint_every),
            "--threads",
            str(o.threads),
            "--run-name",
            o.run_name,
            "--events",
            "--peers-from-stdin",
        ]
        if o.insecure:
            cmd.append("--insecure")
        else:
            cmd += ["--certificates", str(self._cert_dir)]
            if o.mutual_tls:
                cmd.append("--mutual-tls")
        if o.client:
            cmd += ["--client", o.client]
        if o.initial:
            cmd += ["--initial", str(Path(o.initial).resolve())]
        if o.run_config:
            cmd += ["--run-config", o.run_config]
        if resume:
            cmd.append("--resume")
        return cmd

    def _spawn(self, node: int, *, resume: bool = False, listen: str = "127.0.0.1:0") -> _Proc:
        folder = self.node_dir(node)
        folder.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "RELAYFL_TOKEN": self.token,
            "OMP_NUM_THREADS": str(self.options.threads),
            "MKL_NUM_THREADS": str(self.options.threads),
            "PYTHONUNBUFFERED": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
        }
        argv = self._command(node, resume=resume, listen=listen)
        if self._fork is not None:  # argv without "python -m relayfl.cli"
            node_env = {k: v for k, v in env.items() if os.environ.get(k) != v}
            popen: Any = _Forked(self._fork, argv[3:], folder / "stderr.log", node_env)
        else:
            stderr = open(folder / "stderr.log", "ab")  # noqa: SIM115
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                cwd=os.getcwd(),
                start_new_session=True,
            )
            stderr.close()
        proc = _Proc(node, popen)
        proc.reader = threading.Thread(
            target=self._read, args=(proc,), daemon=True, name=f"relayfl-launch-{node}"
        )
        proc.reader.start()
        return proc

    def _read(self, proc: _Proc) -> None:
        assert proc.popen.stdout is not None
        with open(self.node_dir(proc.node) / "stdout.log", "ab") as raw:
            for line in proc.popen.stdout:
                try:
                    event = json.loads(line)
                except ValueError:
                    raw.write(line)
                    continue
                if not isinstance(event, dict) or "event" not in event:
                    raw.write(line)
                    continue
                self._on_event(proc, event)
        with self._cv:
            self._cv.notify_all()

    def _on_event(self, proc: _Proc, event: dict[str, Any]) -> None:
        kind = event["event"]
        with self._cv:
            self.events.append(event)
            if kind == "listening":
                proc.control, proc.data = event["control"], event["data"]
            elif kind == "step":
                proc.step = int(event["step"])
            elif kind == "done":
                proc.done = True
            self._cv.notify_all()
        if self._bar is not None and kind in ("step", "eval", "dead"):
            self._update_bar()

    def start(self) -> None:
        """Write the config and certificates, start every node, hand out the addresses."""
        o = self.options
        self.out.mkdir(parents=True, exist_ok=True)
        # an earlier launch's node logs, results, models and checkpoints would be merged
        # into (or resumed by) this run; other files in the node folders are left alone
        for folder in (self.out / "nodes").glob("node-*"):
            for name in _NODE_OUTPUTS:
                (folder / name).unlink(missing_ok=True)
        (self.out / "run_config.json").write_text(json.dumps(self.config.to_dict(), indent=1))
        if not o.insecure:
            if o.certificates is not None:
                self._cert_dir = Path(o.certificates)
            else:
                from relayfl.certs import make_certificates

                self._cert_dir = make_certificates(
                    self.out / "certificates", {k: "127.0.0.1" for k in range(self.n)}
                )
        for node in range(self.n):
            self.procs[node] = self._spawn(node)
        deadline = time.monotonic() + o.startup_timeout
        with self._cv:
            while not all(p.control for p in self.procs.values()):
                dead = [p.node for p in self.procs.values() if p.popen.poll() is not None]
                if dead:
                    log = self.node_dir(dead[0]) / "stderr.log"
                    raise TransportError(
                        f"node {dead[0]} exited before listening{last_error(log)}; see {log}"
                    )
                if time.monotonic() > deadline:
                    raise TransportError(
                        f"nodes did not report their ports within {o.startup_timeout:g} s; "
                        "raise --startup-timeout"
                    )
                self._cv.wait(0.2)
        self._book = {k: p.control for k, p in self.procs.items()}  # type: ignore[misc]
        self._write_topology()
        for proc in self.procs.values():
            self._send_book(proc)

    def _send_book(self, proc: _Proc) -> None:
        assert proc.popen.stdin is not None
        line = json.dumps({"addresses": {str(k): v for k, v in self._book.items()}}) + "\n"
        try:
            proc.popen.stdin.write(line.encode())
            proc.popen.stdin.flush()
        except OSError:
            pass

    def _write_topology(self) -> None:
        graph = self.graphs[0]
        doc = {
            "edges": [[int(u), int(v)] for u, v in sorted(graph.edges)],
            "nodes": [{"id": k, "address": self._book[k]} for k in range(self.n)],
        }
        (self.out / "topology.json").write_text(json.dumps(doc, indent=1))

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        """Wait until ``predicate(launcher)`` is true (False on timeout)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.2))
        return True

    def wait_step(self, node: int, step: int, timeout: float) -> bool:
        """Wait until ``node`` reports ``step`` (False on timeout)."""
        return self.wait_for(lambda s: s.procs[node].step >= step, timeout)

    def kill(self, node: int) -> None:
        """SIGKILL ``node`` (a crash: no goodbye to its neighbours)."""
        proc = self.procs[node]
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait(timeout=30)
        proc.killed_at = time.monotonic()
        self.killed.append(
            {
                "node": node,
                "step": proc.step,
                "t": round(proc.killed_at - self._started, 3),
                "time": time.time(),
            }
        )

    def restart(self, node: int, *, resume: bool = True) -> None:
        """Start ``node`` again on its old control port (``--resume`` by default)."""
        old = self.procs[node]
        if old.popen.poll() is None:
            raise ConfigError(f"node {node} is still running; kill it first")
        proc = self._spawn(node, resume=resume, listen=old.control or "127.0.0.1:0")
        self.procs[node] = proc
        self.restarted.append(
            {"node": node, "t": round(time.monotonic() - self._started, 3), "resume": resume}
        )
        if not self.wait_for(
            lambda s: proc.control is not None or proc.popen.poll() is not None,
            self.options.startup_timeout,
        ):
            raise TransportError(f"restarted node {node} did not report its ports")
        self._send_book(proc)

    def run(self, timeout: float | None = None) -> None:
        """Follow the run until every node has exited (killing and restarting on cue)."""
        o = self.options
        self._open_bar()
        deadline = None if timeout is None else time.monotonic() + timeout
        pending_kills = list(o.kills)
        try:
            while True:
                for node, step in list(pending_kills):
                    proc = self.procs[node]
                    if proc.step >= step and proc.popen.poll() is None:
                        self.kill(node)
                        pending_kills.remove((node, step))
                if o.resume_after is not None:
                    for proc in list(self.procs.values()):
                        if (
                            proc.killed_at is not None
                            and time.monotonic() - proc.killed_at >= o.resume_after
                        ):
                            proc.killed_at = None
                            self.restart(proc.node)
                running = [p for p in self.procs.values() if p.popen.poll() is None]
                waiting_restart = o.resume_after is not None and any(
                    p.killed_at is not None for p in self.procs.values()
                )
                if not running and not waiting_restart:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TransportError(
                        f"the run did not finish within {timeout:g} s; nodes "
                        f"{[p.node for p in running]} were still running (stopped)"
                    )
                with self._cv:
                    self._cv.wait(0.2)
        finally:
            self._close_bar()
        for proc in self.procs.values():
            if proc.reader is not None:
                proc.reader.join(timeout=10)

    def failed(self) -> str | None:
        """A one-line reason when a node that was not killed exited non-zero."""
        killed = {k["node"] for k in self.killed}
        for node, proc in sorted(self.procs.items()):
            rc = proc.popen.poll()
            if rc not in (0, None) and not (node in killed and rc == -signal.SIGKILL):
                log = self.node_dir(node) / "stderr.log"
                return f"node {node} exited with code {rc}{last_error(log)}; see {log}"
        return None

    def close(self) -> None:
        """End every process this launcher started (SIGTERM, then SIGKILL)."""
        running = [p for p in self.procs.values() if p.popen.poll() is None]
        for proc in running:
            try:
                os.killpg(proc.popen.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                proc.popen.terminate()
        deadline = time.monotonic() + 5
        for proc in running:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    proc.popen.kill()
                proc.popen.wait(timeout=10)
        for proc in self.procs.values():
            for stream in (proc.popen.stdin, proc.popen.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()

    # ------------------------------------------------------------------ progress
    def _open_bar(self) -> None:
        if self.options.quiet:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} node-steps"),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
        )
        self._bar.start()
        self._job = self._bar.add_task(
            f"{self.config.algorithm} on {self.config.topology_name}, {self.n} nodes",
            total=self.n * self.config.steps,
            info="",
        )

    def _update_bar(self) -> None:
        with self._cv:
            completed = sum(p.step for p in self.procs.values())
            accs = [e["worst_accuracy"] for e in self.events if e["event"] == "eval"]
            dead = {e["neighbor"] for e in self.events if e["event"] == "dead"}
        info = f"last acc {accs[-1]:.3f}" if accs else ""
        if dead:
            info += f"  dead: {sorted(dead)}"
        self._bar.update(self._job, completed=completed, info=info)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._update_bar()
            self._bar.stop()
            self._bar = None

    # ------------------------------------------------------------------ results
    def collect(self) -> RunResult:
        """Merge the nodes' logs into one result and write the results folder."""
        result = merge_results(self.config, self.out, self.n, self.graphs)
        if self.options.client and self.options.run_config:  # the user's run config
            from relayfl.flower.inputs import parse_run_config

            result.extra["run_config"] = parse_run_config(self.options.run_config)
        if self.failed():
            result.status = "failed"
        result.extra.update(
            {
                "launch": {
                    "killed": self.killed,
                    "restarted": self.restarted,
                    "exit_codes": {k: p.popen.poll() for k, p in self.procs.items()},
                    "addresses": {
                        k: {"control": p.control, "data": p.data} for k, p in self.procs.items()
                    },
                    "tls": not self.options.insecure,
                    "mutual_tls": self.options.mutual_tls and not self.options.insecure,
                }
            }
        )
        result.wall_s = time.monotonic() - self._started
        result.save(self.out)
        self._plots(result)
        return result

    def _plots(self, result: RunResult) -> None:
        from relayfl import partition, plots

        alpha = self.config.to_dict()["alpha"]
        if result.evaluations:
            plots.learning_curves(
                result,
                self.out / "learning_curve.png",
                title=f"{self.options.client}, {self.n} nodes (deployed)"
                if self.options.client
                else f"{self.config.dataset}, {self.n} nodes (deployed), alpha={alpha}",
            )
        counts = result.task.get("partition_counts")
        if counts:
            partition.plot_counts(
                counts,
                self.out / "partition.png",
                title=f"label counts per client (alpha={alpha})",
            )

    def report(self, result: RunResult) -> None:
        """The same table as ``relayfl simulate`` plus the faults of the run."""
        from relayfl.console import summary_table

        if result.evaluations:
            summary = result.summary()
            summary["topology"] = self.config.topology_name
            summary_table([summary], title="relayfl launch (deployed nodes)")
        extra = result.extra
        for k in extra.get("launch", {}).get("killed", []):
            print(f"node {k['node']} was killed at step {k['step']} ({k['t']:.1f} s)")
        for k in extra.get("launch", {}).get("restarted", []):
            how = "with --resume" if k["resume"] else "from scratch"
            print(f"node {k['node']} was restarted {how} ({k['t']:.1f} s)")
        for d in extra.get("dead", []):
            print(
                f"node {d['declared_by']} declared neighbour {d['neighbor']} dead at step "
                f"{d['step']}" + (f"; parts {d['parts']}" if len(d["parts"]) > 1 else "")
            )
        if extra.get("revived"):
            print(f"nodes {extra['revived']} rejoined; their neighbours restored the edges")
        if extra.get("parts") and len(extra["parts"]) > 1:
            print(f"the tree split into parts {extra['parts']} (they trained separately)")
        from relayfl.outdir import written

        names = ("results.json", "evaluations.csv", "learning_curve.png", "partition.png")
        print(written(self.out, names, since=self._wall_started, note="nodes/node-K/: logs"))


#: What a node writes into its folder; removed before a launch into a used ``--out``.
_NODE_OUTPUTS = (
    "log.jsonl",
    "results.json",
    "evaluations.csv",
    "model.pt",
    "checkpoint.pt",
    "stderr.log",
)


def _client_task(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """A Flower client's task from its nodes' tasks (``{}`` for a node without
    results): its name and the ``num-examples`` each node reported."""
    sizes = [t.get("partition_size") for t in tasks]
    known = [s for s in sizes if s is not None]
    first = next((t for t in tasks if t), {})
    if not str(first.get("partition", "")).startswith("the client's own"):
        return {}  # not a Flower client's nodes
    return {
        "name": first.get("name"),
        "parameters": first.get("parameters"),
        "partition": first["partition"],
        "partition_sizes": sizes,
        "train_size": int(sum(known)) if len(known) == len(tasks) else None,
    }


def last_error(log: Path) -> str:
    """``": <the error>"``: the last line of a node's ``stderr.log`` that is not a
    warning (a traceback's exception line, or the node's own one-line error), so the
    launcher's one line says why; empty when the log has none."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    for line in reversed(tail):
        line = line.strip()
        if line and "warning" not in line.lower() and not line.startswith(("File ", "^", "~")):
            return ": " + line.removeprefix("relayfl: error: ")[:300]
    return ""


def _read_events(path: Path) -> list[dict[str, Any]]:
    events = []
    if not path.is_file():
        return events
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def merge_results(config: RunConfig, out: Path, n: int, graphs: Any) -> RunResult:
    """One :class:`RunResult` for the run from every node's ``log.jsonl`` and files.

    A node's evaluations come from its log (so a killed node's earlier evaluations are
    kept); per-worker lists hold NaN for a node without an evaluation at that step, and
    the mean and worst accuracy are over the nodes that have one. The final consensus
    distance is computed from the nodes' ``model.pt``.
    """
    from relayfl import topology
    from relayfl.node import split_parts

    per_node: dict[int, dict[int, dict[str, Any]]] = {}
    finished: dict[int, RunResult] = {}  # the nodes that wrote their results
    dead: list[dict[str, Any]] = []
    revived: set[int] = set()
    for k in range(n):
        folder = out / "nodes" / f"node-{k}"
        evals: dict[int, dict[str, Any]] = {}
        for event in _read_events(folder / "log.jsonl"):
            if event.get("event") == "eval":
                evals[int(event["step"])] = event
            elif event.get("event") == "dead":
                dead.append(
                    {
                        "declared_by": k,
                        **{
                            key: event[key]
                            for key in (
                                "neighbor",
                                "step",
                                "last_seen_step",
                                "silent_s",
                                "parts",
                                "time",
                            )
                        },
                    }
                )
            elif event.get("event") in ("revived", "resumed"):
                revived.add(int(event.get("neighbor", k)))
        per_node[k] = evals
        if (folder / "results.json").is_file():
            finished[k] = RunResult.load(folder)
    extras = {k: r.extra for k, r in finished.items()}
    steps = sorted({s for evals in per_node.values() for s in evals})
    evaluations = []
    nan = math.nan
    last_bytes = {k: (0, 0) for k in range(n)}
    for s in steps:
        accs, losses, sent, recv = [], [], [], []
        for k in range(n):
            e = per_node[k].get(s)
            if e is not None:
                last_bytes[k] = (int(e["bytes_sent"][0]), int(e["bytes_received"][0]))
            accs.append(e["mean_accuracy"] if e else nan)
            losses.append(e["mean_loss"] if e else nan)
            sent.append(last_bytes[k][0])
            recv.append(last_bytes[k][1])
        present = [a for a in accs if a == a]
        present_l = [x for x in losses if x == x]
        firsts = [per_node[k][s] for k in range(n) if s in per_node[k]]
        train = [e["train_loss"] for e in firsts if e["train_loss"] == e["train_loss"]]
        evaluations.append(
            EvalRecord(
                step=s,
                round=max(int(e["round"]) for e in firsts),
                epoch=firsts[0]["epoch"],
                lr=firsts[0]["lr"],
                mean_accuracy=sum(present) / len(present) if present else nan,
                worst_accuracy=min(present, default=nan),
                best_accuracy=max(present, default=nan),
                mean_loss=sum(present_l) / max(len(present_l), 1),
                worst_loss=max(present_l, default=nan),
                train_loss=sum(train) / len(train) if train else nan,
                consensus_distance=nan,
                accuracies=accs,
                losses=losses,
                bytes_sent=sent,
                bytes_received=recv,
                wall_s=max(e["wall_s"] for e in firsts),
            )
        )
    models = None
    d = None
    rows = []
    for k in range(n):
        path = out / "nodes" / f"node-{k}" / "model.pt"
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=False)
            rows.append(saved["x"].double())
            d = saved["x"].numel()
        else:
            rows.append(None)
    if d is not None:
        models = torch.stack(
            [r if r is not None else torch.full((d,), nan, dtype=torch.float64) for r in rows]
        )
        have = torch.stack([r for r in rows if r is not None])
        consensus = float(((have - have.mean(0, keepdim=True)) ** 2).sum(1).mean())
        if evaluations and evaluations[-1].step == config.steps:
            evaluations[-1].consensus_distance = consensus
    # a node that wrote its results finished the run: it is in no dead part, even if a
    # neighbour declared it dead (a pause, a partition) and finished before it was back
    gone = {e["neighbor"] for e in dead} - revived - set(extras)
    task_info: dict[str, Any] = {}
    for k in sorted(finished):  # every node of the run holds the same split
        info = finished[k].task
        if info.get("partition_counts"):
            task_info = {key: v for key, v in info.items() if key != "partition_size"}
            break
    if not task_info and finished:
        task_info = _client_task([finished[k].task if k in finished else {} for k in range(n)])
    diverged = any(r.status == "diverged" for r in finished.values())
    return RunResult(
        config=config.to_dict(),
        evaluations=evaluations,
        topology={
            "name": config.topology_name,
            "graphs": [topology.describe(g) for g in graphs],
        },
        versions=library_versions("grpcio"),
        task=task_info,
        engine="node",
        extra={
            "nodes": n,
            "dead": dead,
            "revived": sorted(revived),
            "parts": split_parts(graphs, gone),
            "drops": {k: e.get("drops", {}) for k, e in extras.items()},
            "rejected": {k: e.get("rejected", {}) for k, e in extras.items()},
            "finished": sorted(extras),
            "client_metrics": [
                r for k in sorted(extras) for r in extras[k].get("client_metrics", [])
            ],
        },
        models=models,
        status="diverged" if diverged else "completed",
    )
