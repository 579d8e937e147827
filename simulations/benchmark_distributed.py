"""Sharded simulation throughput: samples/s and the cross-rank exchange's share of a step.

Run plainly, it launches itself with ``torch.distributed.run --standalone`` for each
rank count in ``--ranks`` (default ``1,2``) and prints one JSON line per count; started
by ``torchrun`` it measures that one job. On CPU the ranks use gloo, on GPUs
(``--device cuda``) NCCL with one GPU per rank::

    PYTHONPATH=. python simulations/benchmark_distributed.py                 # 1 and 2 ranks, CPU
    PYTHONPATH=. python simulations/benchmark_distributed.py --device cuda --ranks 1,2,4 \\
        --model vgg11 --dataset cifar10 --clients 64

Each line: ``ranks``, ``samples_per_s`` (all workers' samples over the timed steps),
``step_ms``, ``exchange_ms`` and ``exchange_share`` (time in cross-rank
``batch_isend_irecv`` / ``all_reduce`` / ``all_gather`` per step, the slowest rank),
``exchange_bytes_per_step`` (all ranks' cross-rank payload), ``cut_edges``. The timing
wraps relayfl's own collectives (:mod:`relayfl.distributed`); the run is the real
:func:`relayfl.simulate`. It never imports flwr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", default="1,2", help="rank counts to launch (plain run)")
    p.add_argument("--algorithm", default="relaysgd")
    p.add_argument("--topology", default="double-binary-trees")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default=None)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    p.add_argument("--engine", default="auto")
    p.add_argument("--device", default="cpu")
    p.add_argument("--timeout", type=float, default=600, help="seconds per launch")
    return p.parse_args(argv)


def _launch(args: argparse.Namespace) -> int:
    rc = 0
    for k in [int(v) for v in args.ranks.split(",")]:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(k), __file__, *sys.argv[1:]]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RELAYFL_BENCH_RANKS": str(k)}
        done = subprocess.run(cmd, env=env, timeout=args.timeout, capture_output=True, text=True)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        print("\n".join(lines) if lines else done.stderr[-2000:], flush=True)
        rc = rc or done.returncode
    return rc


def _measure(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from relayfl import RunConfig, distributed, simulate

    backend, device = distributed.init_from_env(args.device)
    spent = {"s": 0.0, "bytes": 0}

    def timed(fn):
        def call(*a, **kw):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            out = fn(*a, **kw)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            spent["s"] += time.perf_counter() - t
            sent = a[0].values() if isinstance(a[0], dict) else [a[0]]  # payload of this rank
            spent["bytes"] += sum(v.numel() * v.element_size() for v in sent)
            return out

        return call

    distributed.exchange = timed(distributed.exchange)
    distributed._all_reduce = timed(distributed._all_reduce)
    gather_rows = distributed._gather_rows
    distributed._gather_rows = lambda *a: timed(gather_rows(*a))

    config = RunConfig(
        algorithm=args.algorithm,
        topology=args.topology,
        dataset=args.dataset,
        model=args.model,
        num_clients=args.clients,
        batch_size=args.batch_size,
        steps=args.steps,
        eval_every=0,
        eval_limit=100,
        engine=args.engine,
        device=args.device,
        schedule=False,
    )
    marks: dict[int, tuple[float, float, int]] = {}

    def progress(step: int, total: int, latest: object) -> None:
        if step in (args.warmup, args.steps - 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            marks[step] = (time.perf_counter(), spent["s"], spent["bytes"])

    result = simulate(config=config, progress=progress)
    (t0, e0, b0), (t1, e1, b1) = marks[args.warmup], marks[args.steps - 1]
    steps = args.steps - 1 - args.warmup
    mine = {"step_s": (t1 - t0) / steps, "exch_s": (e1 - e0) / steps, "bytes": (b1 - b0) / steps}
    world = dist.get_world_size() if dist.is_initialized() else 1
    every = [mine] * world
    if world > 1:
        every = [None] * world
        dist.all_gather_object(every, mine)
    if not dist.is_initialized() or dist.get_rank() == 0:
        step_s = max(r["step_s"] for r in every)
        exch_s = max(r["exch_s"] for r in every)
        info = result.extra.get("distributed", {})
        print(json.dumps({
            "ranks": world, "backend": backend if world > 1 else "none",
            "device": str(device.type), "algorithm": args.algorithm, "topology": args.topology,
            "clients": args.clients, "batch_size": args.batch_size, "engine": result.engine,
            "parameters": result.task["parameters"],
            "samples_per_s": round(args.clients * args.batch_size / step_s, 1),
            "step_ms": round(1e3 * step_s, 2), "exchange_ms": round(1e3 * exch_s, 2),
            "exchange_share": round(exch_s / step_s, 4),
            "exchange_bytes_per_step": int(sum(r["bytes"] for r in every)),
            "cut_edges": info.get("cut_edges", 0),
        }), flush=True)  # fmt: skip
    distributed.shutdown()


def main() -> int:
    args = _parse()
    if "RELAYFL_BENCH_RANKS" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ:
        _measure(args)
        return 0
    return _launch(args)


if __name__ == "__main__":
    sys.exit(main())
