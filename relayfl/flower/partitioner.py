"""relayfl's Dirichlet partitioner as a ``flwr_datasets`` ``Partitioner``.

Needs ``flwr-datasets`` (``pip install "relayfl[flower-datasets]"``, about 400 MB, so
never a core dependency). The split is :func:`relayfl.partition.dirichlet`, the same the
simulator, the relay workers and the ready clients use, so a Flower pipeline built on
Hugging Face datasets sees the identical partitions.

Examples
--------
>>> from datasets import Dataset  # doctest: +SKIP
>>> from relayfl.flower import DirichletPartitioner  # doctest: +SKIP
>>> part = DirichletPartitioner(num_partitions=16, partition_by="label", alpha=0.1)
>>> part.dataset = Dataset.from_dict({"x": xs, "label": ys})  # doctest: +SKIP
>>> client_3 = part.load_partition(3)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from relayfl import partition
from relayfl.errors import ConfigError

try:
    from flwr_datasets.partitioner import Partitioner
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ConfigError(
        "relayfl.flower.DirichletPartitioner needs flwr-datasets; install it with "
        'pip install "relayfl[flower-datasets]" (about 400 MB), or use '
        "relayfl.partition.dirichlet on your labels directly"
    ) from None

__all__ = ["DirichletPartitioner"]


class DirichletPartitioner(Partitioner):
    """Dirichlet label-skew partitions, as in the RelaySum paper (docs/algorithm.md section 4).

    Parameters
    ----------
    num_partitions : int
    partition_by : str (default: "label")
        Column holding the integer class labels.
    alpha : float (default: 0.1)
        Dirichlet concentration; ``math.inf`` (or ``"iid"``) gives an IID split.
    seed : int (default: 0)
    even_split : bool (default: True)
        The paper's even re-split (every partition within one sample of the others).

    Notes
    -----
    Unlike ``flwr_datasets.partitioner.DirichletPartitioner`` (per-class proportions,
    ``self_balancing`` off by default), this is the paper's procedure, with its bounded
    redraws; the same arguments give the same indices as
    :func:`relayfl.partition.dirichlet` and ``relayfl simulate``.
    """

    def __init__(
        self,
        num_partitions: int,
        partition_by: str = "label",
        alpha: float | str = 0.1,
        seed: int = 0,
        *,
        even_split: bool = True,
    ) -> None:
        super().__init__()
        if num_partitions < 1:
            raise ConfigError(f"num_partitions must be >= 1, got {num_partitions}")
        self._num_partitions = int(num_partitions)
        self.partition_by = partition_by
        self.alpha = math.inf if alpha in ("iid", "inf") else float(alpha)
        self.seed = int(seed)
        self.even_split = even_split
        self._indices: list[np.ndarray] | None = None

    @property
    def num_partitions(self) -> int:
        """Total number of partitions."""
        return self._num_partitions

    def partition_indices(self) -> list[np.ndarray]:
        """Row indices of every partition (computed once)."""
        if self._indices is None:
            labels = np.asarray(self.dataset[self.partition_by])
            if math.isinf(self.alpha):
                self._indices = partition.iid(len(labels), self._num_partitions, seed=self.seed)
            else:
                self._indices = partition.dirichlet(
                    labels,
                    self._num_partitions,
                    self.alpha,
                    seed=self.seed,
                    even_split=self.even_split,
                )
        return self._indices

    def load_partition(self, partition_id: int) -> Any:
        """Partition ``partition_id`` as a ``datasets.Dataset``."""
        if not 0 <= partition_id < self._num_partitions:
            raise ConfigError(
                f"partition_id {partition_id} is outside 0..{self._num_partitions - 1}"
            )
        return self.dataset.select(self.partition_indices()[partition_id].tolist())
