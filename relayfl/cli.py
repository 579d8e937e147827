"""``relayfl`` command line: ``relayfl simulate ...``.

The only place an error becomes an exit code: a :class:`RelayflError` prints one line
(``relayfl: error: ...``) and exits 2.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time

from relayfl.algorithms import ALGORITHMS
from relayfl.cliwords import HelpFormatter, command_parser, one_line_warnings, speak_cli
from relayfl.config import ENGINES, PRECISIONS, SPANNING, RunConfig
from relayfl.console import summary_table
from relayfl.errors import DivergenceError, RelayflError, RunInterrupted
from relayfl.optim import OPTIMIZERS
from relayfl.relay import FILLS, NORMALIZATIONS
from relayfl.results import RunResult
from relayfl.task import DATASETS
from relayfl.threads import AUTO, parse_threads, set_threads

__all__ = ["build_parser", "main"]


def _alpha(text: str) -> float:
    if text.lower() in ("iid", "inf"):
        return math.inf
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"alpha must be a number or 'iid', got {text!r}") from None


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"milestones must be comma-separated fractions such as 0.75,0.9, got {text!r}"
        ) from None


def _add_run_options(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    g = p.add_argument_group("algorithm and topology")
    g.add_argument("--algorithm", choices=ALGORITHMS, default=d.algorithm)
    g.add_argument(
        "--topology",
        default=None,
        help="chain, ring, star, binary-tree, tree, double-binary-trees, "
        "fully-connected, social-network, exponential, or an edge-list file "
        "(default: binary-tree for relays, ring for the gossip family "
        "dpsgd/d2/gradient-tracking/qgm, exponential for sgp)",
    )
    g.add_argument(
        "--spanning-tree",
        dest="spanning_tree",
        choices=SPANNING,
        default=None,
        help="reduce the graph to a spanning tree (BFS from --root, or the minimum-diameter tree)",
    )
    g.add_argument("--root", type=int, default=d.root)
    g.add_argument(
        "--fill",
        choices=FILLS,
        default=d.fill,
        help="RelaySum/Model fill for missing workers; 'latest' for lossy links",
    )
    g.add_argument(
        "--normalization",
        choices=NORMALIZATIONS,
        default=None,
        help="override the relay's normalization (default: the algorithm's own)",
    )
    g.add_argument(
        "--drop-probability",
        dest="drop_probability",
        type=float,
        default=d.drop_probability,
        help="simulated message drops (0..1)",
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default=d.dataset)
    g.add_argument(
        "--data-root",
        dest="data_root",
        default=None,
        help="folder holding the data set files (fashion-mnist, mnist, cifar10; "
        "default: the data set's standard folder)",
    )
    g.add_argument(
        "--model", default=None, help="small-cnn, vgg11 or mlp (default: the data set's model)"
    )
    g.add_argument("--clients", dest="num_clients", type=int, default=d.num_clients)
    g.add_argument(
        "--alpha",
        type=_alpha,
        default=d.alpha,
        help="Dirichlet label skew (smaller = more skewed), or 'iid'",
    )
    g.add_argument(
        "--no-even-split",
        dest="even_split",
        action="store_false",
        default=None,
        help="keep the Dirichlet bucket sizes (no even re-split)",
    )
    g.add_argument(
        "--eval-limit",
        dest="eval_limit",
        type=int,
        default=None,
        help="evaluate on the first K test samples (default: the whole test set)",
    )
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=d.steps)
    g.add_argument("--local-steps", dest="local_steps", type=int, default=d.local_steps)
    g.add_argument("--batch-size", dest="batch_size", type=int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument(
        "--lr-correction",
        dest="lr_correction",
        action=argparse.BooleanOptionalAction,
        default=d.lr_correction,
        help="relaysgd: multiply the learning rate by 1 + mean delay of the tree",
    )
    g.add_argument(
        "--no-schedule",
        dest="schedule",
        action="store_false",
        default=None,
        help="constant learning rate (no warm-up, no decay)",
    )
    g.add_argument(
        "--warmup-epochs",
        dest="warmup_epochs",
        type=float,
        default=None,
        help="epochs of linear learning-rate warm-up (default: 5, capped at 2.5%% of the run)",
    )
    g.add_argument(
        "--milestones",
        type=_fractions,
        default=None,
        help="decay points as fractions of the run (default 0.75,0.9)",
    )
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    g.add_argument("--momentum", type=float, default=d.momentum)
    g.add_argument("--weight-decay", dest="weight_decay", type=float, default=d.weight_decay)
    g.add_argument("--dropout", type=float, default=d.dropout)
    g = p.add_argument_group("run")
    g.add_argument("--eval-every", dest="eval_every", type=int, default=d.eval_every)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default=d.device)
    g.add_argument(
        "--engine",
        choices=ENGINES,
        default=d.engine,
        help="batched: all workers as one network; loop: one after another",
    )
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=d.precision,
        help="bf16: bfloat16 autocast for forward/backward (sums stay fp32)",
    )
    g.add_argument("--channels-last", dest="channels_last", action="store_true", default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relayfl", description="Serverless decentralized learning with RelaySum."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser(
        "simulate",
        help="simulate N workers in one process",
        formatter_class=HelpFormatter,
    )
    _add_run_options(sim)
    sim.add_argument(
        "--out",
        default="results/simulate",
        help="folder for results.json, evaluations.csv and the PNGs",
    )
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.add_argument(
        "--threads",
        type=parse_threads,
        default=AUTO,
        help="torch CPU threads: a count, or 'auto' for the cores other work leaves idle",
    )
    from relayfl.runs import add_long_run_options  # checkpoints, torchrun, TensorBoard

    add_long_run_options(sim)
    from relayfl.deploy import add_commands  # node, launch, certs (deployment)

    add_commands(sub, _add_run_options)
    from relayfl.compare import add_compare_parser  # compare, FedAvg through Flower

    add_compare_parser(sub)
    return parser


def run_simulate(args: argparse.Namespace) -> RunResult:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from relayfl import partition, plots, runs
    from relayfl.outdir import check_out, written
    from relayfl.simulation import simulate

    started = time.time()
    config = RunConfig.from_args(args)
    out = check_out(args.out, resume=args.resume)
    set_threads(args.threads)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="relayfl: %(message)s")
    run = runs.LongRun.from_args(args, config)  # torchrun ranks, Ctrl-C, TensorBoard
    with (
        run,
        Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps"),
            TextColumn("{task.fields[acc]}"),
            TimeRemainingColumn(),
            disable=args.quiet or not run.leader,
            transient=False,
        ) as bar,
    ):
        jobs: list = []  # the bar appears with the first step, after every check passed

        def progress(step: int, total: int, latest: object) -> None:
            if not jobs:
                name = f"{config.algorithm} on {config.topology_name}"
                jobs.append(bar.add_task(name, total=config.steps, acc=""))
            job = jobs[0]
            acc = getattr(latest, "worst_accuracy", None)
            if acc is not None:
                bar.update(job, acc=f"worst acc {acc:.3f}")
            bar.update(job, completed=step)

        try:
            result = simulate(
                config=config, progress=run.progress(progress), **run.simulate_kwargs()
            )
        except DivergenceError as err:  # keep the evaluations so far, status "diverged"
            if err.result is not None and run.leader:
                err.result.save(out)
            raise
    if not run.leader:  # rank 0 alone prints and writes the results
        return result
    result.save(out)
    plots.learning_curves(
        result,
        out / "learning_curve.png",
        title=f"{config.dataset}, {config.num_clients} clients, alpha={config.to_dict()['alpha']}",
    )
    partition.plot_counts(
        result.task["partition_counts"],
        out / "partition.png",
        title=f"label counts per client (alpha={config.to_dict()['alpha']})",
    )
    summary = result.summary()
    summary["topology"] = config.topology_name
    summary_table([summary], title=f"relayfl simulate ({result.engine} engine)")
    names = ("results.json", "evaluations.csv", "learning_curve.png", "partition.png")
    print(written(out, names, since=started))
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``relayfl`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    one_line_warnings()
    try:
        if args.command == "simulate":
            run_simulate(args)
        elif hasattr(args, "handler"):  # relayfl.deploy: node, launch, certs
            return args.handler(args)
    except RunInterrupted as err:  # Ctrl-C / SIGTERM: results so far and the checkpoint
        from relayfl.runs import report_interrupted

        return report_interrupted(err, args)
    except RelayflError as err:  # the one place an error becomes an exit code
        from relayfl.runs import error_line

        words = speak_cli(str(err), command_parser(parser, args.command))
        print(error_line(err, words), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("relayfl: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    from relayfl.runs import recorded  # under torchrun: its summary names any failure

    sys.exit(recorded(main)())
