"""PNG figures from results (matplotlib is imported inside the functions, Agg canvas)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from relayfl.results import RunResult

__all__ = ["learning_curves"]


def _figure(size: tuple[float, float] = (6.4, 4.2)):
    """A standalone Agg figure: works headless and leaves pyplot's backend alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _label(result: RunResult) -> str:
    c = result.config
    return f"{c.get('algorithm')} / {c.get('topology') or result.topology.get('name')}"


def learning_curves(
    results: RunResult | Sequence[RunResult], path: str | Path, *, title: str | None = None
) -> Path:
    """Mean (solid) and worst-client (dashed) test accuracy against steps.

    Parameters
    ----------
    results : RunResult or sequence of RunResult
        One curve pair per run.
    path : str or Path
        The PNG to write (parent folders are created).
    """
    runs = [results] if isinstance(results, RunResult) else list(results)
    fig = _figure()
    ax = fig.add_subplot()
    for k, res in enumerate(runs):
        steps = [e.step for e in res.evaluations]
        color = f"C{k % 10}"
        ax.plot(
            steps,
            [e.mean_accuracy for e in res.evaluations],
            color=color,
            label=f"{_label(res)} (mean)",
        )
        ax.plot(
            steps,
            [e.worst_accuracy for e in res.evaluations],
            color=color,
            linestyle="--",
            label=f"{_label(res)} (worst client)",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
