"""Console output shared by the commands (below :mod:`relayfl.cli`, :mod:`relayfl.deploy`
and :mod:`relayfl.launch`, so none of them imports another for printing)."""

from __future__ import annotations

__all__ = ["summary_table"]


def summary_table(rows: list[dict], title: str) -> None:
    """Print run summaries (:meth:`relayfl.RunResult.summary` rows) as one table.

    Used by ``relayfl simulate`` and ``relayfl launch``; each row needs ``algorithm``,
    ``topology``, ``alpha``, ``clients``, ``steps``, ``mean_accuracy``,
    ``worst_accuracy``, ``bytes_per_client`` (bytes) and ``wall_s`` (seconds).
    """
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in (
        "algorithm",
        "topology",
        "alpha",
        "clients",
        "steps",
        "mean acc",
        "worst acc",
        "MB/client",
        "wall s",
    ):
        table.add_column(col, justify="right" if col not in ("algorithm", "topology") else "left")
    for r in rows:
        table.add_row(
            str(r["algorithm"]),
            str(r["topology"]),
            str(r["alpha"]),
            str(r["clients"]),
            str(r["steps"]),
            f"{r['mean_accuracy']:.4f}",
            f"{r['worst_accuracy']:.4f}",
            f"{r['bytes_per_client'] / 1e6:.2f}",
            f"{r['wall_s']:.1f}",
        )
    Console(width=max(Console().width, 110)).print(table)
