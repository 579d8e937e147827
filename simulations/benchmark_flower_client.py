"""A Flower user's own client against relayfl's built-in client: worst-client accuracy.

Issue 12's target: a quickstart-style ``NumPyClient`` that reads the relay's
``round-lr`` trains as well as relayfl's own digits client (within 2 points of its
worst-client accuracy). The user client here is written as a Flower user writes one:
its own ``DataLoader(shuffle=True)`` loop, ``torch.optim.SGD`` built in ``fit``, the
model and partition it loads itself (the same digits CNN and Dirichlet split as the
built-in client, so the comparison is of the client path, not of two models). Rows:

* ``builtin``: :func:`relayfl.flower.task_client_fn` (the simulator's worker);
* ``user-round-lr``: the user's client, ``lr = config["round-lr"]``;
* ``user-plain-lr``: the same client with the base ``lr`` (what a client that ignores
  ``round-lr`` trains with: no warm-up, decay or relay correction).

Each line is JSON: ``row``, ``seed``, ``mean_accuracy``, ``worst_accuracy``; then one
``summary`` line per row with the means over seeds. Run (about 5 minutes on 2 cores)::

    OMP_NUM_THREADS=1 python simulations/benchmark_flower_client.py --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flwr.client import NumPyClient

from relayfl import RunConfig
from relayfl.flower import simulate_clients
from relayfl.flower.task_client import task_client_fn
from relayfl.simulation import make_partitions
from relayfl.task import builtin

TASK = builtin("digits")


class UserClient(NumPyClient):
    """quickstart-pytorch's client shape, on the digits CNN and its Dirichlet partition."""

    def __init__(self, partition: np.ndarray, lr_key: str) -> None:
        self.net = TASK.model_fn()
        idx = torch.as_tensor(partition)
        data = TensorDataset(TASK.x_train[idx], TASK.y_train[idx])
        self.loader = DataLoader(data, batch_size=32, shuffle=True)
        self.lr_key = lr_key

    def get_parameters(self, config):
        return [v.cpu().numpy() for v in self.net.state_dict().values()]

    def set_parameters(self, parameters) -> None:
        keys = self.net.state_dict().keys()
        self.net.load_state_dict(
            OrderedDict((k, torch.tensor(v)) for k, v in zip(keys, parameters, strict=True))
        )

    def fit(self, parameters, config):
        self.set_parameters(parameters)
        self.net.train()
        opt = torch.optim.SGD(self.net.parameters(), lr=float(config[self.lr_key]))
        batches = itertools.islice(itertools.cycle(self.loader), int(config["local-steps"]))
        losses = []
        for x, y in batches:
            opt.zero_grad()
            loss = F.cross_entropy(self.net(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        metrics = {"train_loss": float(np.mean(losses))}
        return self.get_parameters(config), len(self.loader.dataset), metrics

    def evaluate(self, parameters, config):
        self.set_parameters(parameters)
        self.net.eval()
        with torch.no_grad():
            out = self.net(TASK.x_test)
        acc = (out.argmax(1) == TASK.y_test).float().mean().item()
        return F.cross_entropy(out, TASK.y_test).item(), len(TASK.y_test), {"accuracy": acc}


def user_client_fn(config: RunConfig, lr_key: str):
    parts = make_partitions(TASK, config)

    def client_fn(context):
        return UserClient(parts[int(context.node_config["partition-id"])], lr_key).to_client()

    return client_fn


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--topology", default="binary-tree")
    p.add_argument("--alpha", type=float, default=0.1)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)  # one JSON line per run
    rows: dict[str, list[tuple[float, float]]] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        cfg = RunConfig(
            topology=args.topology,
            num_clients=args.clients,
            steps=args.steps,
            alpha=args.alpha,
            seed=seed,
            eval_every=0,
        )
        runs = {
            "builtin": task_client_fn("digits"),
            "user-round-lr": user_client_fn(cfg, "round-lr"),
            "user-plain-lr": user_client_fn(cfg, "lr"),
        }
        for row, fn in runs.items():
            final = simulate_clients(fn, cfg).final
            rows.setdefault(row, []).append((final.mean_accuracy, final.worst_accuracy))
            line = {"row": row, "seed": seed, "mean_accuracy": round(final.mean_accuracy, 4)}
            line["worst_accuracy"] = round(final.worst_accuracy, 4)
            print(json.dumps(line), flush=True)
    for row, values in rows.items():
        mean, worst = np.mean(values, axis=0)
        print(
            json.dumps(
                {
                    "summary": row,
                    "seeds": len(values),
                    "mean_accuracy": round(float(mean), 4),
                    "worst_accuracy": round(float(worst), 4),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
