"""Running Flower from a library: offline environment, checked runs, counted traffic.

Everything relayfl launches on Flower's runtime goes through here:

* :func:`offline_env` sets the variables an offline run needs (no telemetry, no update
  check, no Ray usage stats, no ``uv sync`` of app dependencies) and a temporary
  ``FLWR_HOME``, and restores the environment afterwards;
* :func:`run_simulation` calls Flower's in-process ``run_simulation`` (deprecated in
  1.42, but the practical way to run Flower's simulation engine from a library) and
  turns every failure into a :class:`FlowerRunError`; Ray is always shut down;
* :class:`CountingGrid` wraps the ``Grid`` a ``ServerApp`` receives and counts the
  bytes of the arrays that pass through the server, per node and both ways.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from flwr.app import ArrayRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from relayfl.errors import RelayflError

__all__ = [
    "OFFLINE_ENV",
    "CountingGrid",
    "FlowerRunError",
    "check_replies",
    "descendant_processes",
    "last_line",
    "offline_env",
    "process_alive",
    "reply_error",
    "run_simulation",
]

#: Variables every Flower process relayfl starts gets (FLOWER-1.42-NOTES section 0).
OFFLINE_ENV: dict[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
}

#: Per-client resources relayfl gives Ray by default (Flower's default is 2 CPUs, which
#: allows a single concurrent client on a 2-core machine).
DEFAULT_CLIENT_RESOURCES: dict[str, float] = {"num_cpus": 1, "num_gpus": 0.0}


class FlowerRunError(RelayflError, RuntimeError):
    """A run on Flower's runtime failed (an error reply, a missing node, a crash)."""


@contextlib.contextmanager
def offline_env(flwr_home: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """Set the offline variables and a ``FLWR_HOME`` for the duration of the block.

    Parameters
    ----------
    flwr_home : path, optional
        Use this folder as ``FLWR_HOME``; default: a fresh temporary folder that is
        removed afterwards.

    Yields
    ------
    str
        The ``FLWR_HOME`` in use.
    """
    made = flwr_home is None
    home = tempfile.mkdtemp(prefix="relayfl-flwr-home-") if made else os.fspath(flwr_home)
    changes = {**OFFLINE_ENV, "FLWR_HOME": home}
    saved = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield home
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if made:
            shutil.rmtree(home, ignore_errors=True)


def descendant_processes(root: int) -> dict[int, str]:
    """``{pid: command line}`` of every process below ``root`` (Linux ``/proc``)."""
    parent: dict[int, int] = {}
    cmd: dict[int, str] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd[int(entry)] = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = {}, [root]
    while todo:
        p = todo.pop()
        for child, par in parent.items():
            if par == p and child not in out:
                out[child] = cmd.get(child, "")
                todo.append(child)
    return out


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class _RayWatch:
    """Remembers every Ray process started below this one while a simulation runs.

    Flower's backend calls ``ray.shutdown()`` itself, after which Ray's workers are
    re-parented and no longer found below this process; so their PIDs are collected
    while the run is going (a ``/proc`` scan every ``interval`` seconds).
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(interval,), daemon=True)

    def _scan(self) -> None:
        for pid, cmd in descendant_processes(os.getpid()).items():
            if "ray" in cmd or "gcs_server" in cmd:
                self.pids.add(pid)

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._scan()

    def __enter__(self) -> _RayWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._scan()
        _shutdown_ray(self.pids)


def _shutdown_ray(pids: set[int], timeout: float = 15.0) -> None:
    """Stop Ray if it is still up, wait (bounded) until the Ray processes ``pids`` have
    exited, and kill the stragglers by PID."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    end = time.time() + timeout
    while any(process_alive(p) for p in pids) and time.time() < end:
        time.sleep(0.1)
    for pid in pids:
        if process_alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


#: Flower log lines about how relayfl calls Flower, not about the user's run.
_FLOWER_NOISE = ("DEPRECATED FEATURE", "fraction_evaluate is set to 0.0")


def _not_noise(record: logging.LogRecord) -> bool:
    return not any(text in str(record.msg) for text in _FLOWER_NOISE)


@contextlib.contextmanager
def _flower_log_level(quiet: bool) -> Iterator[None]:
    """Flower's console log for a run relayfl starts: warnings only while ``quiet``
    (Flower logs at INFO), no ANSI colours unless the stream is a terminal, and none of
    the notices about relayfl's own calls (the deprecation of ``run_simulation``, the
    skipped federated evaluation) nor Ray's ``FutureWarning`` about accelerator
    variables."""
    from flwr.common.logger import console_handler

    logger = logging.getLogger("flwr")
    level, colored = logger.level, console_handler.colored
    if quiet:
        logger.setLevel(logging.WARNING)
    stream = getattr(console_handler, "stream", None)
    console_handler.colored = bool(getattr(stream, "isatty", lambda: False)())
    logger.addFilter(_not_noise)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"ray(\.|$)")
            yield
    finally:
        logger.removeFilter(_not_noise)
        logger.setLevel(level)
        console_handler.colored = colored


def run_simulation(
    server_app: ServerApp,
    client_app: ClientApp,
    num_supernodes: int,
    *,
    client_resources: Mapping[str, float] | None = None,
    init_args: Mapping[str, Any] | None = None,
    quiet: bool = False,
) -> None:
    """Run a ``ServerApp`` and a ``ClientApp`` on Flower's simulation engine, checked.

    A thin wrapper around :func:`flwr.simulation.run_simulation` with the offline
    environment, relayfl's default of 1 CPU per client, failures raised as
    :class:`FlowerRunError`, and every Ray process ended afterwards in every case
    (waited for, at most 15 s, then killed by PID).

    Parameters
    ----------
    server_app, client_app : ServerApp, ClientApp
    num_supernodes : int
        Simulated SuperNodes; node ``i`` gets ``node_config["partition-id"] = i``.
    client_resources : mapping, optional
        Ray resources per ClientApp (default ``{"num_cpus": 1, "num_gpus": 0.0}``).
    init_args : mapping, optional
        Extra ``ray.init`` arguments.
    quiet : bool (default: False)
        Show only Flower's warnings and errors, and not the Ray actors' log lines
        (``log_to_driver=False``; a failing client is still reported by the
        :class:`FlowerRunError`).

    Raises
    ------
    FlowerRunError
        When the ServerApp raised (for relayfl's apps: any error reply from a node)
        or the simulation engine crashed or exited.
    """
    from flwr.simulation import run_simulation as _flwr_run_simulation

    if num_supernodes < 1:
        raise FlowerRunError(f"num_supernodes must be >= 1, got {num_supernodes}")
    backend_config: dict[str, Any] = {
        "client_resources": dict(client_resources or DEFAULT_CLIENT_RESOURCES),
        "init_args": dict(init_args or {}),
    }
    if quiet:  # the actors' own log lines (ANSI-coloured, "Manually terminating ...")
        backend_config["init_args"].setdefault("log_to_driver", False)
    with offline_env(), _flower_log_level(quiet), _RayWatch():
        try:
            _flwr_run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=num_supernodes,
                backend_config=backend_config,  # type: ignore[arg-type]
            )
        except RelayflError:  # a node's ConfigError / DivergenceError keeps its type
            raise
        except SystemExit as err:  # flwr_exit() on a fatal runtime error
            raise FlowerRunError(
                f"Flower's simulation exited with code {err.code}; see the Flower log above"
            ) from None
        except Exception as err:
            raise FlowerRunError(
                f"Flower's simulation failed: {type(err).__name__}: {err}"
            ) from err


def last_line(text: str) -> str:
    """The last non-empty line of a (traceback-like) message, at most 300 characters."""
    lines = [ln.strip() for ln in str(text).replace("\\n", "\n").splitlines() if ln.strip()]
    return (lines[-1] if lines else "")[:300]


_REASON = re.compile(r"<class '([\w.]+)'>:<['\"](.*)['\"]>", re.DOTALL)


def reply_error(msg: Message, what: str) -> Exception:
    """The error a node's error reply stands for, keeping the exception's type and message.

    Flower reports an exception in a ClientApp as ``<class 'mod.Type'>:<'message'>``; a
    relayfl error (``ConfigError``, ``DivergenceError``, ...) is raised again as its own
    type, anything else as :class:`FlowerRunError` naming the type. Both say which node.
    """
    from relayfl import errors

    src = msg.metadata.src_node_id
    reason = str(msg.error.reason)
    match = _REASON.search(reason)
    if match is None:
        return FlowerRunError(
            f"{what}: node {src} replied with error {msg.error.code}: {last_line(reason)}"
            " (see the node's log)"
        )
    path, text = match.group(1), last_line(match.group(2))
    module, _, name = path.rpartition(".")
    kind = getattr(errors, name, None) if module == "relayfl.errors" else None
    if isinstance(kind, type) and issubclass(kind, errors.RelayflError):
        return kind(f"{what}, node {src}: {text}")
    return FlowerRunError(f"{what}: node {src} raised {name}: {text}")


def _array_bytes(content: RecordDict) -> int:
    return sum(r.count_bytes() for r in content.values() if isinstance(r, ArrayRecord))


def check_replies(replies: Iterable[Message], expected: Iterable[int], what: str) -> list[Message]:
    """The replies, in the order of ``expected`` node ids; raise on errors or gaps.

    Raises
    ------
    FlowerRunError
        Naming the node and Flower's error reason, or the nodes that did not answer.
    """
    by_node = {}
    for msg in replies:
        src = msg.metadata.src_node_id
        if msg.has_error():
            raise reply_error(msg, what)
        by_node[src] = msg
    expected = list(expected)
    missing = [n for n in expected if n not in by_node]
    if missing:
        raise FlowerRunError(
            f"{what}: {len(missing)} of {len(expected)} nodes did not reply in time "
            f"({missing[:4]}); raise the timeout or check that every SuperNode is running"
        )
    return [by_node[n] for n in expected]


class CountingGrid(Grid):
    """A ``Grid`` that forwards to another and counts the array bytes per node.

    ``received[node]`` counts the arrays the server pushed to ``node``,
    ``sent[node]`` those ``node`` replied with: the server's traffic both ways.
    ``send_and_receive`` polls through this wrapper (so replies are counted), every
    ``poll_interval`` seconds (default: the wrapped grid's ``pull_interval``, Flower's
    0.1 s in simulation, else 3 s like Flower's ``HttpGrid``).

    Parameters
    ----------
    grid : Grid
    poll_interval : float, optional
    """

    def __init__(self, grid: Grid, *, poll_interval: float | None = None) -> None:
        self.grid = grid
        if poll_interval is None:
            poll_interval = float(getattr(grid, "pull_interval", 3.0))
        self.poll_interval = poll_interval
        self.sent: dict[int, int] = {}
        self.received: dict[int, int] = {}

    # ------------------------------------------------------------------ delegation
    def set_run(self, run: Any) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        return self.grid.run

    def create_message(  # deprecated in Flower; kept for the interface
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:
        return self.grid.get_nodes()

    # ------------------------------------------------------------------ counted I/O
    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for msg in messages:
            dst = msg.metadata.dst_node_id
            self.received[dst] = self.received.get(dst, 0) + _array_bytes(msg.content)
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.grid.pull_messages(message_ids))
        for msg in replies:
            if msg.has_content():
                src = msg.metadata.src_node_id
                self.sent[src] = self.sent.get(src, 0) + _array_bytes(msg.content)
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        ids = set(self.push_messages(messages))
        end = time.time() + (timeout if timeout is not None else 0.0)
        out: list[Message] = []
        while timeout is None or time.time() < end:
            got = list(self.pull_messages(ids))
            out.extend(got)
            ids.difference_update(m.metadata.reply_to_message_id for m in got)
            if not ids:
                break
            time.sleep(self.poll_interval)
        return out

    def wait_for_nodes(self, num_nodes: int, *, timeout: float) -> list[int]:
        """Poll until ``num_nodes`` nodes are connected; their ids, sorted.

        Raises
        ------
        FlowerRunError
            When fewer nodes connect within ``timeout`` seconds.
        """
        end = time.time() + timeout
        while True:
            ids = sorted(self.get_node_ids())
            if len(ids) >= num_nodes:
                return ids
            if time.time() >= end:
                raise FlowerRunError(
                    f"only {len(ids)} of {num_nodes} SuperNodes connected within "
                    f"{timeout:.0f} s; start {num_nodes} SuperNodes (simulation: "
                    f"num_supernodes={num_nodes}) or lower num_clients"
                )
            time.sleep(0.05)
