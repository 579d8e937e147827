"""A Flower user's own clients, written as Flower's quickstarts write them.

Imported by the tests in process, by Ray's actors and by ``relayfl launch --client
user_clients:...`` (run from this folder). A small MLP on 4 Gaussian blobs (fast on 2
cores). Full-batch gradient steps by default; with ``batch-size`` in the run config,
random minibatches drawn with ``torch.randint`` as a user's loop draws them (relayfl keys
the process's generators per partition and round, so every path draws the same ones).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from torch import nn

_g = torch.Generator().manual_seed(0)
_CENTRES = torch.randn(4, 8, generator=_g) * 3
_Y = torch.randint(0, 4, (400,), generator=_g)
_X = _CENTRES[_Y] + torch.randn(400, 8, generator=_g)
_YT = torch.randint(0, 4, (200,), generator=_g)
_XT = _CENTRES[_YT] + torch.randn(200, 8, generator=_g)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def new_net() -> Net:
    torch.manual_seed(0)
    return Net()


def load_data(partition_id: int, num_partitions: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _X[partition_id::num_partitions], _Y[partition_id::num_partitions]


def train(
    net: Net, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, batch: int | None = None
) -> float:
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        b = torch.randint(0, len(y), (batch,)) if batch else slice(None)  # None: full batch
        opt.zero_grad()
        loss = F.cross_entropy(net(x[b]), y[b])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def test(net: Net) -> tuple[float, float]:
    net.eval()
    with torch.no_grad():
        out = net(_XT)
    return F.cross_entropy(out, _YT).item(), (out.argmax(1) == _YT).float().mean().item()


def steps_of(config: dict, run_config: dict) -> int:
    """Local steps this round: relayfl's ``local-steps`` times the user's epochs."""
    return int(config.get("local-steps", 1)) * int(run_config.get("local-epochs", 1))


class FlowerClient(NumPyClient):
    """quickstart-pytorch's NumPyClient; uses the relay's ``round-lr`` when sent."""

    def __init__(self, context: Context) -> None:
        pid = context.node_config["partition-id"]
        self.data = load_data(pid, context.node_config["num-partitions"])
        self.local_epochs = context.run_config["local-epochs"]  # as quickstart-pytorch
        self.run_config = dict(context.run_config)
        self.net = new_net()

    def get_parameters(self, config):
        return [v.cpu().numpy() for v in self.net.state_dict().values()]

    def set_parameters(self, parameters):
        keys = self.net.state_dict().keys()
        self.net.load_state_dict(
            OrderedDict((k, torch.tensor(v)) for k, v in zip(keys, parameters, strict=True))
        )

    def fit(self, parameters, config):
        self.set_parameters(parameters)
        lr = float(config.get("round-lr", 0.1))
        steps, batch = steps_of(config, self.run_config), self.run_config.get("batch-size")
        loss = train(self.net, *self.data, steps, lr, batch)
        return self.get_parameters(config), len(self.data[1]), {"train_loss": loss}

    def evaluate(self, parameters, config):
        self.set_parameters(parameters)
        loss, acc = test(self.net)
        return loss, len(_YT), {"accuracy": acc}


def client_fn(context: Context):
    return FlowerClient(context).to_client()


# ------------------------------------------------------------- Message API (Flower 1.42)
app = ClientApp()


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    net = Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = load_data(context.node_config["partition-id"], context.node_config["num-partitions"])
    config = msg.content["config"]
    steps, batch = steps_of(config, context.run_config), context.run_config.get("batch-size")
    loss = train(net, x, y, steps, float(config["round-lr"]), batch)
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(y)})
    return Message(
        RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics}), reply_to=msg
    )


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    net = Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loss, acc = test(net)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": acc, "num-examples": len(_YT)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


legacy_app = ClientApp(client_fn=client_fn)  # the pre-1.13 way to wrap a NumPyClient


def initial_arrays() -> ArrayRecord:
    """The model every Message-API path starts from (what new_net() gives)."""
    return ArrayRecord(new_net().state_dict())


# ------------------------------------------------------------- clients Flower allows
class NoFitMetrics(FlowerClient):
    def fit(self, parameters, config):
        params, n, _ = super().fit(parameters, config)
        return params, n, {}


class LossOnly(FlowerClient):
    def evaluate(self, parameters, config):
        loss, n, _ = super().evaluate(parameters, config)
        return loss, n, {}


class Extra(FlowerClient):
    def fit(self, parameters, config):
        params, n, m = super().fit(parameters, config)
        return (
            params,
            n,
            {**m, "grad_norm": 1.25, "note": "ok", "blob": b"\x00\x01", "per_step": [1.0, 2.0]},
        )

    def evaluate(self, parameters, config):
        loss, n, m = super().evaluate(parameters, config)
        return loss, n, {**m, "f1": 0.5}


class StepsReported(FlowerClient):
    """Reports the optimizer steps it took (local-epochs full-batch steps a round)."""

    def fit(self, parameters, config):
        params, n, m = super().fit(parameters, config)
        return params, n, {**m, "num-steps": steps_of(config, self.run_config)}


class Top1(FlowerClient):
    """Reports accuracy under a name of its own."""

    def evaluate(self, parameters, config):
        loss, n, m = super().evaluate(parameters, config)
        return loss, n, {"top1": m["accuracy"]}


class Reordered(FlowerClient):
    def fit(self, parameters, config):
        params, n, m = super().fit(parameters, config)
        return [params[1], params[0], *params[2:]], n, m


def no_fit_metrics_client_fn(context: Context):
    return NoFitMetrics(context).to_client()


def loss_only_client_fn(context: Context):
    return LossOnly(context).to_client()


def extra_client_fn(context: Context):
    return Extra(context).to_client()


def steps_client_fn(context: Context):
    return StepsReported(context).to_client()


def top1_client_fn(context: Context):
    return Top1(context).to_client()


def reordered_client_fn(context: Context):
    return Reordered(context).to_client()
