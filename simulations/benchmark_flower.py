"""FedAvg through Flower's simulation engine vs relayfl's simulator: the same work, on CPU.

The same model (the digits small CNN), clients (16, Dirichlet alpha 0.1), batch (32),
rounds (20) and local steps per round run twice per setting:

* ``flower``: Flower 1.42's own ``flwr.serverapp.strategy.FedAvg`` on its simulation
  engine (Ray, 1 CPU per client), with relayfl's ready digits ``ClientApp``
  (:func:`relayfl.flower.run_fedavg`);
* ``relayfl``: ``relayfl.simulate`` with ``algorithm="allreduce"`` and the same
  ``local_steps``: local SGD with an exact average every round, FedAvg with equal
  weights (the even Dirichlet split makes the partitions equal within one sample).

``wall_s`` is in-process time from the engine call to the result (Ray's start and stop
included for Flower; the final model is evaluated once in both).
``steady_samples_per_s`` counts training samples (clients x local steps x batch) per
second over rounds 2..R, from per-round timestamps (Flower: its ``evaluate_fn``, called
after every round; relayfl: the progress callback). Prints one JSON line per engine and
setting; relayfl's lines carry the end-to-end and steady-state ratios against Flower.

    python simulations/benchmark_flower.py                     # local steps 1 and 5
    python simulations/benchmark_flower.py --local-steps 1 --rounds 20 --clients 16
    python simulations/benchmark_flower.py --threads 1           # busy machine

Timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from relayfl import RunConfig, simulate
from relayfl.task import builtin


def _steady(times: list[float], rounds: int, samples_per_round: int) -> float:
    """Samples per second over rounds 2..R from ``times[r]`` = end of round r."""
    span = times[rounds] - times[1]
    return samples_per_round * (rounds - 1) / span if span > 0 else float("nan")


def run_flower(config: RunConfig, task: object) -> dict:
    from relayfl.flower import run_fedavg, task_app

    result = run_fedavg(
        task_app(config.dataset),
        config,
        task=task,  # type: ignore[arg-type]
        client_resources={"num_cpus": 1, "num_gpus": 0.0},
        quiet=True,
    )
    rounds = config.steps // config.local_steps
    samples = config.num_clients * config.local_steps * config.batch_size
    return {
        "engine": "flower",
        "wall_s": result.wall_s,
        "steady_samples_per_s": _steady(result.extra["round_times"], rounds, samples),
        "final_accuracy": result.final.mean_accuracy,
        "strategy": result.extra["strategy"],
    }


def run_relayfl(config: RunConfig, task: object) -> dict:
    cfg = config.replace(algorithm="allreduce")
    rounds = cfg.steps // cfg.local_steps
    times = [0.0] * (rounds + 1)
    started = time.perf_counter()

    def progress(step: int, total: int, latest: object) -> None:
        if step % cfg.local_steps == 0:
            times[step // cfg.local_steps] = time.perf_counter() - started

    result = simulate(task, cfg, progress=progress)  # type: ignore[arg-type]
    wall = time.perf_counter() - started
    samples = cfg.num_clients * cfg.local_steps * cfg.batch_size
    return {
        "engine": "relayfl",
        "wall_s": wall,
        "steady_samples_per_s": _steady(times, rounds, samples),
        "final_accuracy": result.final.mean_accuracy,
        "simulator_engine": result.engine,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-steps", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of relayfl's simulator (default: torch's; Flower's Ray actors "
        "always run one thread each). On a busy machine 1 avoids oversubscription",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    task = builtin(args.dataset)
    params = sum(p.numel() for p in task.init_model(0).parameters())
    for ls in args.local_steps:
        config = RunConfig(
            num_clients=args.clients,
            alpha=args.alpha,
            dataset=args.dataset,
            steps=args.rounds * ls,
            local_steps=ls,
            batch_size=args.batch_size,
            eval_every=0,  # evaluate the final model only, in both engines
            algorithm="allreduce",
        )
        flower = run_flower(config, task)
        ours = run_relayfl(config, task)
        common = {
            "clients": args.clients,
            "rounds": args.rounds,
            "local_steps": ls,
            "batch_size": args.batch_size,
            "parameters": params,
            "relayfl_torch_threads": torch.get_num_threads(),
        }
        print(json.dumps({**flower, **common}), flush=True)
        print(
            json.dumps(
                {
                    **ours,
                    **common,
                    "end_to_end_ratio_vs_flower": flower["wall_s"] / ours["wall_s"],
                    "steady_ratio_vs_flower": ours["steady_samples_per_s"]
                    / flower["steady_samples_per_s"],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
