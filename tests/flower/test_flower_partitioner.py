"""relayfl's Dirichlet split as a flwr_datasets Partitioner (needs the optional extra)."""

from __future__ import annotations

import numpy as np
import pytest

from relayfl import partition

datasets = pytest.importorskip("datasets", reason="pip install 'relayfl[flower-datasets]'")
pytest.importorskip("flwr_datasets", reason="pip install 'relayfl[flower-datasets]'")


def test_partitioner_gives_relayfl_partitions_on_a_hugging_face_dataset() -> None:
    """DirichletPartitioner.load_partition(i) holds exactly partition.dirichlet's rows i."""
    from relayfl.flower import DirichletPartitioner

    labels = np.repeat(np.arange(10), 50)
    ds = datasets.Dataset.from_dict({"x": np.arange(500).tolist(), "label": labels.tolist()})
    part = DirichletPartitioner(num_partitions=5, partition_by="label", alpha=0.5, seed=3)
    part.dataset = ds
    expected = partition.dirichlet(labels, 5, 0.5, seed=3)
    assert part.num_partitions == 5
    for i in range(5):
        assert sorted(part.load_partition(i)["x"]) == sorted(expected[i].tolist())
