"""Training throughput: one big model (the ceiling) vs the per-client loop vs batched engines.

For a model and N clients with batch B each, prints one JSON line per configuration:

* ``ceiling``: one plain ``nn.Module`` at batch N*B with ``torch.optim.SGD`` (same
  threads, dtype and data): what the hardware does for this much work;
* ``loop``: relayfl's per-client engine (one worker after another);
* ``vmap``: ``torch.func.vmap`` over workers;
* ``batched``: relayfl's grouped layout (workers as channel groups).

Each relayfl mode runs the simulator's real step: keyed batches from device-resident
partitions, gradients, functional SGD on the stacked ``[n, d]`` parameters and the
RelaySum exchange on a binary tree. Samples/s is the median of 3 timed repeats after a
warm-up. ``batched`` also reports the relay's time per step, its share of the step and
the peak memory (CUDA allocator peak, or the process's peak RSS on CPU).

Run with no arguments on a machine without a GPU for the CPU case (small CNN on digits,
N = 16, B = 32, under two minutes). On a GPU, e.g.::

    PYTHONPATH=. python3 simulations/benchmark_throughput.py --device cuda --model vgg11 \\
        --clients 16 --dtype bf16 --channels-last

It never imports flwr.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relayfl import models, partition, topology
from relayfl.algorithms import make_mixer
from relayfl.engine import FunctionalModel, make_engine
from relayfl.optim import SGD
from relayfl.simulation import ClientData, dropout_masks


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _data(name: str, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "digits":
        from relayfl.data import load_digits

        ds = load_digits()
        return ds.x_train.to(device), ds.y_train.to(device)
    # CIFAR-shaped synthetic data: throughput does not depend on pixel values
    g = torch.Generator().manual_seed(0)
    count = max(n * 32 * 8, 4096)
    return (
        torch.randn(count, 3, 32, 32, generator=g).to(device),
        torch.randint(0, 10, (count,), generator=g).to(device),
    )


def _model(name: str, x: torch.Tensor, dropout: float) -> torch.nn.Module:
    if name == "vgg11":
        return models.vgg11()
    if name == "small-cnn":
        return models.SmallCNN(x.shape[1], 10, x.shape[-1], dropout=dropout)
    return models.build(name, in_channels=x.shape[1], num_classes=10, image_size=x.shape[-1])


def _time(
    step: Callable[[int], None], device: torch.device, warmup: int, steps: int, repeats: int = 3
) -> list[float]:
    for s in range(warmup):
        step(s)
    _sync(device)
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        for s in range(steps):
            step(warmup + r * steps + s)
        _sync(device)
        times.append((time.perf_counter() - start) / steps)
    return times


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def ceiling(
    args: argparse.Namespace,
    device: torch.device,
    x: torch.Tensor,
    y: torch.Tensor,
    amp: torch.dtype | None,
) -> dict:
    """One plain model at batch N*B: the throughput ceiling for this much work."""
    torch.manual_seed(0)
    model = _model(args.model, x, args.dropout).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    big = args.clients * args.batch_size
    gen = torch.Generator(device=device).manual_seed(0)

    def step(s: int) -> None:
        idx = torch.randint(0, len(x), (big,), generator=gen, device=device)
        xb = x[idx]
        if args.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = _time(step, device, args.warmup, args.steps)
    return {"mode": "ceiling", "samples_per_s": big / statistics.median(times)}


def relayfl_mode(
    mode: str,
    args: argparse.Namespace,
    device: torch.device,
    x: torch.Tensor,
    y: torch.Tensor,
    amp: torch.dtype | None,
) -> dict:
    """The simulator's step with engine ``mode`` (loop, vmap or batched)."""
    n, B = args.clients, args.batch_size
    torch.manual_seed(0)
    fm = FunctionalModel(_model(args.model, x, args.dropout), F.cross_entropy).to(device)
    parts = partition.iid(len(x), n, seed=0)
    data = ClientData(x, y, [torch.as_tensor(p, device=device) for p in parts], B, seed=0)
    sample, _ = data.client_batch(0, 0)
    engine = make_engine(
        fm,
        mode,
        sample,
        autocast=amp,  # type: ignore[arg-type]
        channels_last=args.channels_last,
    )
    shapes = fm.dropout_shapes(sample)
    tree = topology.binary_tree(n)
    mixer = make_mixer("relaysgd", (tree,), fm.x0)
    opt = SGD(momentum=0.9, weight_decay=1e-4)
    state = {"x": fm.x0.unsqueeze(0).repeat(n, 1)}  # [n, d]
    relay_times: list[float] = []

    def step(s: int) -> None:
        xb, yb = data.batch(s)
        masks = dropout_masks(fm, shapes, 0, range(n), s, device)
        g, _ = engine.grads(state["x"], xb, yb, masks)
        x_half = state["x"] + opt.update(state["x"], g, 0.01)
        _sync(device)
        t = time.perf_counter()
        state["x"] = mixer.mix(state["x"], x_half)
        _sync(device)
        relay_times.append(time.perf_counter() - t)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = _time(step, device, args.warmup, args.steps)
    step_s = statistics.median(times)
    out = {
        "mode": mode if engine.name == mode or mode == "loop" else f"{mode}->{engine.name}",
        "engine": engine.name,
        "samples_per_s": n * B / step_s,
    }
    if mode == "batched":
        relay_s = statistics.median(relay_times[args.warmup :])
        x = state["x"]
        copy_s = statistics.median(_time(lambda s: x.clone(), device, 3, 20))
        out.update(
            relay_ms=relay_s * 1e3,
            relay_share=relay_s / step_s,
            # one copy of the [n, d] parameter matrix: the unit of the relay's memory traffic
            # (its floor is ~3 such passes: read x and the edge messages, write the result)
            param_copy_ms=copy_s * 1e3,
            relay_in_param_copies=relay_s / copy_s,
            peak_memory_bytes=_peak_memory(device),
        )
    return out


def relay_only(args: argparse.Namespace, device: torch.device, x: torch.Tensor) -> dict:
    """The RelaySum exchange alone (binary tree, fp32) on ``[n, d]`` random models, with
    ``d`` the model's parameter count (or ``--dim``): no training in between."""
    n = args.clients
    d = args.dim or FunctionalModel(_model(args.model, x, 0.0), F.cross_entropy).x0.numel()
    gen = torch.Generator(device=device).manual_seed(0)
    v = torch.randn(n, d, device=device, generator=gen)
    mixer = make_mixer("relaysgd", (topology.binary_tree(n),), torch.zeros(d, device=device))
    state = {"x": v}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    relay_s = statistics.median(_time(lambda s: state.update(x=mixer.mix(v, v)), device, 2, 5))
    copy_s = statistics.median(_time(lambda s: v.clone(), device, 3, 20))
    return {
        "mode": "relay",
        "dim": d,
        "relay_ms": relay_s * 1e3,
        "param_copy_ms": copy_s * 1e3,
        "relay_in_param_copies": relay_s / copy_s,
        "peak_memory_bytes": _peak_memory(device),
        "peak_in_param_copies": _peak_memory(device) / (n * d * 4),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default=None, help="small-cnn (default on CPU), vgg11, mlp")
    p.add_argument("--data", default=None, help="digits or cifar-shaped (default per model)")
    p.add_argument("--clients", type=int, nargs="+", default=[16])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", choices=["fp32", "bf16", "tf32"], default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument(
        "--modes",
        default="ceiling,loop,vmap,batched",
        help="comma-separated; 'relay' times the RelaySum exchange alone",
    )
    p.add_argument("--dim", type=int, default=None, help="model size for --modes relay")
    p.add_argument("--steps", type=int, default=None, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.model = args.model or ("vgg11" if device.type == "cuda" else "small-cnn")
    args.data = args.data or ("digits" if args.model != "vgg11" else "cifar-shaped")
    args.steps = args.steps or (20 if device.type == "cuda" else 10)
    args.warmup = args.warmup if args.warmup is not None else 5
    if args.dtype == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp = torch.bfloat16 if args.dtype == "bf16" else None
    results = []
    for n in args.clients:
        args.clients = n
        x, y = _data(args.data, n, device)
        for mode in args.modes.split(","):
            if mode == "ceiling":
                row = ceiling(args, device, x, y, amp)
            elif mode == "relay":
                row = relay_only(args, device, x)
            else:
                row = relayfl_mode(mode, args, device, x, y, amp)
            row.update(
                model=args.model,
                clients=n,
                batch_size=args.batch_size,
                device=torch.cuda.get_device_name(device)
                if device.type == "cuda"
                else f"cpu ({torch.get_num_threads()} threads)",
                dtype=args.dtype,
                channels_last=args.channels_last,
                torch=torch.__version__,
            )
            results.append(row)
            line = json.dumps(row)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(line + "\n")
        ceil = next(
            (r["samples_per_s"] for r in results if r["mode"] == "ceiling" and r["clients"] == n),
            None,
        )
        if ceil:
            for r in results:
                if r["clients"] == n and r["mode"] not in ("ceiling", "relay"):
                    print(
                        f"# N={n} {r['mode']}: {r['samples_per_s'] / ceil:.2f}x of the "
                        "one-model ceiling",
                        file=sys.stderr,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
