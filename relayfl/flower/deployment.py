"""A real Flower deployment on 127.0.0.1, started and ended by relayfl.

:class:`LocalDeployment` starts ``flower-superlink`` on free ports with a temporary
``FLWR_HOME`` and the offline variables, then ``N`` ``flower-supernode`` processes with
``--node-config 'partition-id=i num-partitions=N'``, and ends every one of them by its
PID (each in its own process group, so the ``flwr-serverapp`` / ``flwr-clientapp``
processes they spawn end too). It never relies on ``flwr run``'s auto-started local
SuperLink, which reuses any stale one on port 39091 and has no stop command.

:func:`run_relay_deployment` runs relayfl's Flower app (:func:`relayfl.flower.app_dir`)
on it with ``flwr run`` and reads the ``results.json`` the ServerApp writes. A failed run
is reported as a :class:`FlowerRunError` (``flwr run`` itself exits 0 then).

Real SuperNodes start a ``flwr-clientapp`` process per message, about 10 s per relay
round on loopback: this mode exists to show the relay on Flower's own runtime, and
``relayfl node`` is the serverless one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from relayfl.config import RunConfig
from relayfl.errors import ConfigError
from relayfl.flower.runtime import OFFLINE_ENV, FlowerRunError, descendant_processes, process_alive
from relayfl.results import RunResult

__all__ = ["LocalDeployment", "run_relay_deployment"]

_CONNECTION = "relayfl"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _executable(name: str) -> str:
    """A Flower console script of this interpreter's environment (then ``PATH``)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise FlowerRunError(
            f"{name} not found beside {sys.executable} or on PATH; install Flower with "
            'pip install "flwr[simulation]>=1.42,<1.43"'
        )
    return found


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string


class LocalDeployment:
    """A SuperLink and ``num_supernodes`` SuperNodes on 127.0.0.1.

    Parameters
    ----------
    num_supernodes : int
    flwr_home : path, optional
        Default: a temporary folder, removed on :meth:`stop`.
    startup_timeout : float (default: 60)
        Seconds to wait for the SuperLink to accept connections.
    log_dir : path, optional
        Where the processes' logs go (default: inside ``flwr_home``).

    Examples
    --------
    >>> with LocalDeployment(2) as dep:  # doctest: +SKIP
    ...     result = dep.run_app(app_dir(), {"num-clients": 2, "steps": 2})
    """

    def __init__(
        self,
        num_supernodes: int,
        *,
        flwr_home: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
        log_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if num_supernodes < 1:
            raise FlowerRunError(f"num_supernodes must be >= 1, got {num_supernodes}")
        self.num_supernodes = num_supernodes
        self._own_home = flwr_home is None
        self.home = Path(flwr_home or tempfile.mkdtemp(prefix="relayfl-flwr-home-"))
        self.log_dir = Path(log_dir) if log_dir else self.home / "logs"
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.processes: list[subprocess.Popen] = []
        bin_dir = str(Path(sys.executable).parent)  # flower-superexec, flwr-clientapp, ...
        path = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
        self.env = {**os.environ, **OFFLINE_ENV, "FLWR_HOME": str(self.home), "PATH": path}

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalDeployment:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, args: Sequence[str], log_name: str) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / log_name, "wb")  # noqa: SIM115 (closed in stop)
        proc = subprocess.Popen(
            list(args),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.home,
            start_new_session=True,  # its own process group: ended with its children
        )
        proc.log = log  # type: ignore[attr-defined]
        self.processes.append(proc)
        return proc

    def start(self) -> None:
        """Start the SuperLink, wait until it listens, then start the SuperNodes."""
        try:
            self.port = free_port()
            link = self._spawn(
                [
                    _executable("flower-superlink"),
                    "--insecure",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--disable-runtime-dependency-installation",
                ],
                "superlink.log",
            )
            self._wait_listening(link)
            n = self.num_supernodes
            for i in range(n):
                self._spawn(
                    [
                        _executable("flower-supernode"),
                        "--insecure",
                        "--superlink",
                        f"127.0.0.1:{self.port}",
                        "--port",
                        str(free_port()),
                        "--node-config",
                        f"partition-id={i} num-partitions={n}",
                        "--max-wait-time",
                        str(int(self.startup_timeout)),
                    ],
                    f"supernode-{i}.log",
                )
            self._write_connection()
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self, proc: subprocess.Popen) -> None:
        end = time.time() + self.startup_timeout
        while time.time() < end:
            if proc.poll() is not None:
                raise FlowerRunError(
                    f"flower-superlink exited with code {proc.returncode}; see "
                    f"{self.log_dir / 'superlink.log'}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.2)
        raise FlowerRunError(
            f"flower-superlink did not listen on 127.0.0.1:{self.port} within "
            f"{self.startup_timeout:.0f} s; see {self.log_dir / 'superlink.log'}"
        )

    def _write_connection(self) -> None:
        (self.home / "config.toml").write_text(
            "[superlink]\n"
            f'default = "{_CONNECTION}"\n\n'
            f"[superlink.{_CONNECTION}]\n"
            f'address = "127.0.0.1:{self.port}"\n'
            "insecure = true\n"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """End every process this deployment started (and their children), by PID."""
        own = {p.pid for p in self.processes}
        children = {
            pid for p in self.processes if p.poll() is None for pid in descendant_processes(p.pid)
        }
        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)  # the group led by this PID
        end = time.time() + timeout
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(end - time.time(), 0.1))
        for pid in own | children:
            if process_alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            proc.log.close()  # type: ignore[attr-defined]
        self.started_pids = own | children
        self.processes = []
        if self._own_home:
            shutil.rmtree(self.home, ignore_errors=True)

    # ------------------------------------------------------------------ runs
    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run a ``flwr`` CLI command against this deployment."""
        try:
            return subprocess.run(
                [_executable("flwr"), *args],
                env=self.env,
                cwd=self.home,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise FlowerRunError(
                f"flwr {' '.join(args[:2])} did not finish within {timeout:.0f} s"
            ) from None

    def run_app(
        self,
        app: str | os.PathLike[str],
        run_config: Mapping[str, Any],
        *,
        timeout: float = 600.0,
    ) -> subprocess.CompletedProcess:
        """``flwr run APP relayfl --stream --run-config ...``, then check the run's
        status with ``flwr ls`` (``flwr run`` exits 0 even when the run failed).

        Raises
        ------
        FlowerRunError
            When the run did not finish as ``completed``; the message holds the
            status and the end of the streamed log.
        """
        overrides = " ".join(f"{k}={_toml_value(v)}" for k, v in run_config.items())
        done = self.flwr(
            "run", str(app), _CONNECTION, "--stream", "--run-config", overrides, timeout=timeout
        )
        status = self.run_status()
        if done.returncode != 0 or "completed" not in status:
            tail = (done.stdout + done.stderr).strip().splitlines()[-8:]
            raise FlowerRunError(
                f"flwr run ended with code {done.returncode} and status {status!r}; "
                f"last log lines: {' | '.join(tail)}"
            )
        return done

    def run_status(self) -> str:
        """Status of the latest run (``finished:completed``, ``finished:failed``, ...)."""
        out = self.flwr("ls", _CONNECTION, "--format", "json", timeout=60.0)
        try:
            runs = json.loads(out.stdout).get("runs", [])
        except json.JSONDecodeError:
            return f"unknown ({out.stdout.strip()[:200]}{out.stderr.strip()[:200]})"
        if not runs:
            return "no run"
        latest = max(runs, key=lambda r: str(r.get("pending-at", r.get("run-id", ""))))
        return str(latest.get("status", "unknown"))


def run_relay_deployment(
    config: RunConfig,
    *,
    clients: str = "clients.digits:app",
    initial: str | os.PathLike[str] | Any = "node-0",
    run_config: Mapping[str, Any] | None = None,
    timeout: float = 600.0,
    app: str | os.PathLike[str] | None = None,
) -> RunResult:
    """RelaySGD through the forwarding ServerApp on a real SuperLink and SuperNodes.

    Starts a :class:`LocalDeployment` of ``config.num_clients`` SuperNodes, runs relayfl's
    Flower app with ``flwr run``, reads the result the ServerApp saved, and ends every
    process it started. Expect about 10 s per relay round (a process per message).

    Parameters
    ----------
    config : RunConfig
    clients : str
        The client, ``"module:attribute"`` importable on the SuperNodes: a
        ``RelayClientApp``, any Flower ``ClientApp``, or a ``client_fn``.
    initial : {"node-0", "own"}, path or ArrayRecord
        The initial model, with the meaning it has on every path: ``"node-0"`` (node
        0's ``get_parameters``, the default), ``"own"`` (each node's own, checked), a
        file (``.pt`` state_dict or ``.npz``) or an ``ArrayRecord`` (needed for a
        Message-API ``ClientApp``).
    run_config : mapping, optional
        The clients' ``context.run_config`` entries.
    timeout : float
        Seconds for the whole ``flwr run``.
    app : path, optional
        The app folder (default :func:`relayfl.flower.app_dir`).

    Returns
    -------
    RunResult
        ``engine="flower-deployment"``; ``wall_s`` includes starting the processes.

    Raises
    ------
    ConfigError
        Before any process starts, for an ``initial`` of another kind or a missing file.
    FlowerRunError
        When the run fails (the end of the Flower log in the message).
    """
    from relayfl.flower import app_dir

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="relayfl-deploy-") as tmp:
        out = Path(tmp) / "results"
        run_config_app: dict[str, Any] = {
            **{k: v for k, v in config.to_flower().items() if k in _APP_KEYS},
            "clients": clients,
            "out": str(out),
            "client-run-config": json.dumps(dict(run_config)) if run_config else "",
        }
        run_config_app.update(_initial_keys(initial, Path(tmp)))
        with LocalDeployment(config.num_clients, flwr_home=Path(tmp) / "home") as dep:
            dep.run_app(app or app_dir(), run_config_app, timeout=timeout)
        if not (out / "results.json").exists():
            raise FlowerRunError(
                f"the run completed but wrote no {out / 'results.json'}; see the ServerApp log"
            )
        result = RunResult.load(out)
    result.engine = "flower-deployment"
    result.extra["runtime"] = "flower-deployment"
    result.wall_s = time.perf_counter() - started
    return result


def _initial_keys(initial: Any, tmp: Path) -> dict[str, str]:
    """The app's ``initial`` / ``initial-file`` keys for ``initial`` (an ArrayRecord is
    saved to ``tmp`` as a state_dict)."""
    if isinstance(initial, str) and initial in ("node-0", "own"):
        return {"initial": initial}
    if isinstance(initial, str | os.PathLike):
        path = Path(initial).resolve()
        if not path.is_file():
            raise ConfigError(f"initial file {path} does not exist")
        return {"initial-file": str(path)}
    if hasattr(initial, "to_torch_state_dict"):
        import torch

        path = tmp / "initial.pt"
        torch.save(dict(initial.to_torch_state_dict()), path)
        return {"initial-file": str(path)}
    raise ConfigError(f"initial must be 'node-0', 'own', a file or an ArrayRecord, got {initial!r}")


#: Keys relayfl's app declares in ``[tool.flwr.app.config]`` (only those can be set).
_APP_KEYS = (
    "algorithm",
    "topology",
    "spanning-tree",
    "num-clients",
    "alpha",
    "dataset",
    "data-root",
    "steps",
    "local-steps",
    "batch-size",
    "lr",
    "eval-every",
    "eval-limit",
    "seed",
)
