"""relayfl.partition: Dirichlet label skew and IID splits (docs/algorithm.md §4, §7 I16)."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from relayfl import partition
from relayfl.errors import PartitionError


@cache
def _cifar_like(per_class: int = 5000, num_classes: int = 10, seed: int = 7) -> np.ndarray:
    """Shuffled labels with ``per_class`` samples of each class (CIFAR-10: 10 x 5000)."""
    labels = np.repeat(np.arange(num_classes), per_class)
    np.random.RandomState(seed).shuffle(labels)
    labels.setflags(write=False)
    return labels


def _paper_reference(
    labels: np.ndarray, n: int, alpha: float, seed: int, wpc: int = 10
) -> list[list[int]]:
    """The paper's Dirichlet buckets, transcribed from docs/algorithm.md §4 with Python lists."""
    rs = np.random.RandomState(seed)
    pairs = np.stack([np.arange(len(labels)), labels], axis=1)
    rs.shuffle(pairs)
    num_chunks = math.ceil(n / wpc)
    size = int(wpc / n * len(labels))
    out: list[list[int]] = []
    for k in range(num_chunks):
        chunk = pairs[k * size :] if k == num_chunks - 1 else pairs[k * size : (k + 1) * size]
        m, S = min(wpc, n - k * wpc), len(chunk)
        while True:
            buckets: list[list[int]] = [[] for _ in range(m)]
            for c in range(len(np.unique(labels))):
                members = chunk[chunk[:, 1] == c, 0]
                p = rs.dirichlet(np.repeat(alpha, m))
                p = np.array([pj * (len(b) < S / m) for pj, b in zip(p, buckets, strict=True)])
                cuts = (np.cumsum(p / p.sum()) * len(members)).astype(int)[:-1]
                for bucket, piece in zip(buckets, np.split(members, cuts), strict=True):
                    bucket.extend(piece.tolist())
            if min(len(b) for b in buckets) >= int(0.5 * S / m):
                break
        out += buckets
    return out


def _assert_partition(parts: list[np.ndarray], num_samples: int) -> None:
    """Check that ``parts`` are int64 arrays, pairwise disjoint, covering range(num_samples)."""
    assert all(part.dtype == np.int64 and part.ndim == 1 for part in parts)
    joined = np.concatenate(parts)
    assert len(joined) == num_samples
    np.testing.assert_array_equal(np.sort(joined), np.arange(num_samples))


@pytest.mark.parametrize("even_split", [True, False], ids=["even", "buckets"])
@pytest.mark.parametrize("alpha", [1.0, 0.1, 0.01], ids=["a1", "a0.1", "a0.01"])
@pytest.mark.parametrize("n", [1, 7, 16, 25], ids=["n1", "n7", "n16", "n25"])
def test_dirichlet_is_exact_partition_any_setting(n: int, alpha: float, even_split: bool) -> None:
    """Client index sets are disjoint and cover every sample (I16)."""
    labels = _cifar_like(per_class=500)
    parts = partition.dirichlet(labels, n, alpha, seed=3, even_split=even_split)
    assert len(parts) == n
    _assert_partition(parts, len(labels))


@pytest.mark.parametrize(
    ("n", "alpha", "seed"),
    [(5, 1.0, 0), (16, 0.1, 100), (25, 0.1, 101), (12, 1.0, 4)],
    ids=["n5-a1", "n16-a0.1", "n25-a0.1", "n12-a1"],
)
def test_dirichlet_matches_paper_procedure_without_degenerate_rows(
    n: int, alpha: float, seed: int
) -> None:
    """Buckets and the even re-split equal a list-based transcription of the paper's loop."""
    labels = _cifar_like(per_class=500)
    expected = _paper_reference(labels, n, alpha, seed)
    buckets = partition.dirichlet(labels, n, alpha, seed, even_split=False)
    assert [b.tolist() for b in buckets] == expected
    even = partition.dirichlet(labels, n, alpha, seed)
    pieces = np.array_split(np.concatenate([np.asarray(b) for b in expected]), n)
    assert [p.tolist() for p in even] == [p.tolist() for p in pieces]


def test_dirichlet_is_deterministic_per_seed() -> None:
    """The same seed gives the same split; other seeds give other splits (I16)."""
    labels = _cifar_like(per_class=500)
    first = partition.dirichlet(labels, 16, 0.1, seed=100)
    again = partition.dirichlet(labels, 16, 0.1, seed=100)
    other = partition.dirichlet(labels, 16, 0.1, seed=101)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("n", [3, 16, 30], ids=["n3", "n16", "n30"])
def test_dirichlet_even_split_sizes_differ_by_at_most_one(n: int) -> None:
    """With even_split every client holds floor(N/n) or ceil(N/n) samples (I16)."""
    labels = _cifar_like(per_class=500)[:4999]
    sizes = [len(p) for p in partition.dirichlet(labels, n, 0.1, seed=1)]
    assert set(sizes) <= {len(labels) // n, -(-len(labels) // n)}


def test_dirichlet_uneven_split_meets_paper_minimum_per_chunk() -> None:
    """Without even_split each chunk's buckets hold >= floor(0.5 S/m) of that chunk's samples."""
    labels = _cifar_like()  # CIFAR-10: 50,000 labels, n = 16 -> chunks of 31,250 and 18,750
    buckets = partition.dirichlet(labels, 16, 0.1, seed=100, even_split=False)
    order = np.random.RandomState(100).permutation(len(labels))
    for chunk, workers, samples in [
        (order[:31250], range(10), 31250),
        (order[31250:], range(10, 16), 18750),
    ]:
        sizes = [len(buckets[w]) for w in workers]
        assert sum(sizes) == samples
        assert min(sizes) >= int(0.5 * samples / len(workers))
        held = np.concatenate([buckets[w] for w in workers])
        np.testing.assert_array_equal(np.sort(held), np.sort(chunk))


def test_label_concentration_grows_as_alpha_shrinks() -> None:
    """Mean top-class share rises from alpha 1 to 0.1 to 0.01 on CIFAR-like labels (I16)."""
    labels = _cifar_like()
    shares = [
        np.mean(
            [
                partition.label_concentration(labels, partition.dirichlet(labels, 16, a, seed))
                for seed in (100, 101, 102)
            ]
        )
        for a in (1.0, 0.1, 0.01)
    ]
    assert shares[0] < shares[1] < shares[2]
    assert 0.1 < shares[0] < 0.5 and shares[2] > 0.6


@pytest.mark.timeout(30)
@pytest.mark.parametrize("n", [16, 100], ids=["n16", "n100"])
def test_dirichlet_succeeds_at_alpha_0_01_on_60k_labels(n: int) -> None:
    """alpha = 0.01 (the paper's strongest skew) splits 60,000 labels over 16 or 100 clients."""
    labels = _cifar_like(per_class=6000)
    parts = partition.dirichlet(labels, n, 0.01, seed=100)
    _assert_partition(parts, len(labels))
    assert {len(p) for p in parts} == {60000 // n, -(-60000 // n)}


@pytest.mark.timeout(30)
def test_dirichlet_alpha_0_001_gives_valid_split_or_error_with_100_clients() -> None:
    """alpha = 0.001 either splits exactly (no NaN cut points) or raises PartitionError."""
    labels = _cifar_like(per_class=6000)
    with np.errstate(all="raise"):
        try:
            buckets = partition.dirichlet(labels, 100, 0.001, seed=100, even_split=False)
        except PartitionError as err:
            assert "larger alpha" in str(err)
            return
    _assert_partition(buckets, len(labels))
    # NaN cut points would dump whole classes into the last bucket of a chunk.
    sizes = np.array([len(b) for b in buckets]).reshape(10, 10)  # [chunks, workers]
    assert (sizes >= 300).all()


def test_dirichlet_redraws_degenerate_rows_and_falls_back_to_open_buckets() -> None:
    """NaN or fully balanced-away rows are redrawn; endless ones share the open buckets."""

    class _NanDirichlet:
        def dirichlet(self, concentration: np.ndarray) -> np.ndarray:
            return np.full(len(concentration), np.nan)

    conc = np.repeat(0.001, 4)
    rs = np.random.RandomState(0)
    bounds = partition._class_bounds([np.nan] * 4, [True] * 4, 100, rs, conc)
    assert bounds[0] == 0 and bounds[-1] == 100 and bounds == sorted(bounds)
    fallback = partition._class_bounds(
        [1.0, 0.0, 0.0, 0.0], [False, True, False, True], 10, _NanDirichlet(), conc
    )
    assert fallback == [0, 0, 5, 5, 10]


def test_dirichlet_raises_when_minimum_size_is_never_met() -> None:
    """Exhausted retries raise one line naming alpha, the client count, the minimum and the fix."""
    labels = _cifar_like(per_class=500)
    with pytest.raises(PartitionError, match="larger alpha, fewer clients") as info:
        partition.dirichlet(labels, 8, 0.01, min_size_fraction=1.0, max_retries=3)
    message = str(info.value)
    assert "\n" not in message
    assert "alpha=0.01" in message and "8 clients" in message and "625" in message


def test_dirichlet_accepts_lists_and_array_likes() -> None:
    """Labels may be a list or any object numpy can convert, like a CPU tensor."""

    class _TensorLike:
        def __init__(self, values: np.ndarray) -> None:
            self._values = values

        def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
            return self._values

    labels = _cifar_like(per_class=100)
    expected = partition.dirichlet(labels, 4, 0.5)
    for given in (labels.tolist(), _TensorLike(labels)):
        got = partition.dirichlet(given, 4, 0.5)
        assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))


def test_dirichlet_accepts_torch_tensor_labels() -> None:
    """A CPU torch tensor of labels gives the same split as its numpy array."""
    torch = pytest.importorskip("torch")
    labels = _cifar_like(per_class=100)
    got = partition.dirichlet(torch.from_numpy(labels.copy()), 4, 0.5)
    expected = partition.dirichlet(labels, 4, 0.5)
    assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 0.0}, "alpha must be a finite number > 0.*use e.g. 0.1"),
        ({"alpha": -1.0}, "alpha must be a finite number > 0.*use e.g. 0.1"),
        ({"alpha": float("nan")}, "alpha must be a finite number > 0.*use e.g. 0.1"),
        ({"alpha": float("inf")}, "alpha must be a finite number > 0.*use e.g. 0.1"),
        ({"num_clients": 0}, "num_clients must be an integer >= 1.*pass the number of workers"),
        ({"num_clients": 2.5}, "num_clients must be an integer >= 1.*pass the number of workers"),
        (
            {"num_clients": 100},
            r"^cannot split 50 samples over 100 clients; use at most 50 clients$",
        ),
        ({"labels": np.zeros((5, 10), dtype=int)}, "labels must be 1-D.*reshape"),
        ({"labels": np.arange(50) - 1}, "labels must be >= 0.*map the classes to 0..K-1"),
        ({"labels": np.arange(50) * 0.5}, "labels must be integer class ids.*np.unique"),
        ({"labels": np.arange(50) * 1.0}, "labels must be integer class ids.*astype"),
        ({"labels": np.array(["cat", "dog"] * 25)}, "integer class ids, got dtype <U3.*np.unique"),
        ({"labels": []}, "cannot split 0 samples"),
        ({"min_size_fraction": 1.5}, "min_size_fraction must be in.*use 0.5"),
        ({"workers_per_chunk": 0}, "workers_per_chunk must be.*use 10"),
        ({"max_retries": -1}, "max_retries must be.*use e.g. 10_000"),
        ({"seed": -1}, "seed must be an integer.*seed \\+ 100"),
    ],
    ids=[
        "alpha-zero",
        "alpha-negative",
        "alpha-nan",
        "alpha-inf",
        "clients-zero",
        "clients-float",
        "clients-over-samples",
        "labels-2d",
        "labels-negative",
        "labels-float",
        "labels-float-integral",
        "labels-strings",
        "labels-empty",
        "min-size-fraction",
        "workers-per-chunk",
        "max-retries",
        "seed-negative",
    ],
)
def test_dirichlet_rejects_bad_input_with_fix(kwargs: dict[str, object], match: str) -> None:
    """Each bad argument raises PartitionError whose one-line message names the fix."""
    args: dict[str, object] = {"labels": np.arange(50) % 10, "num_clients": 4, "alpha": 0.1}
    args.update(kwargs)
    with pytest.raises(PartitionError, match=match):
        partition.dirichlet(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("num_samples", "n"), [(10, 1), (10, 10), (1001, 16)], ids=["one", "all", "uneven"]
)
def test_iid_sizes_differ_by_at_most_one(num_samples: int, n: int) -> None:
    """iid gives an exact partition with sizes within 1, deterministic per seed."""
    parts = partition.iid(num_samples, n, seed=5)
    _assert_partition(parts, num_samples)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    again = partition.iid(num_samples, n, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


@pytest.mark.parametrize(
    ("num_samples", "n", "match"),
    [(0, 1, "num_samples must be.*len\\(dataset\\)"), (5, 6, "use at most 5 clients")],
    ids=["no-samples", "too-many-clients"],
)
def test_iid_rejects_bad_input_with_fix(num_samples: int, n: int, match: str) -> None:
    """iid checks its sizes before drawing."""
    with pytest.raises(PartitionError, match=match):
        partition.iid(num_samples, n)


def test_count_matrix_rows_and_columns_sum_to_sizes() -> None:
    """Rows sum to client sizes and columns to class totals when the parts cover the labels."""
    labels = _cifar_like(per_class=300)
    parts = partition.dirichlet(labels, 7, 0.1, seed=2)
    matrix = partition.count_matrix(labels, parts)
    assert matrix.shape == (7, 10) and matrix.dtype == np.int64
    np.testing.assert_array_equal(matrix.sum(axis=1), [len(p) for p in parts])
    np.testing.assert_array_equal(matrix.sum(axis=0), np.full(10, 300))
    assert partition.count_matrix(labels, parts, num_classes=12).shape == (7, 12)


@pytest.mark.parametrize(
    ("parts", "num_classes", "match"),
    [
        ([np.array([0, 10])], None, "outside \\[0, 9\\].*pass the labels"),
        ([np.array([0, 1])], 2, "num_classes must be.*num_classes=None"),
    ],
    ids=["index-out-of-range", "too-few-classes"],
)
def test_count_matrix_rejects_bad_input_with_fix(
    parts: list[np.ndarray], num_classes: int | None, match: str
) -> None:
    """count_matrix names the bad index or class count and the fix."""
    with pytest.raises(PartitionError, match=match):
        partition.count_matrix(np.arange(10) % 5, parts, num_classes)


def test_label_concentration_is_one_for_single_class_clients() -> None:
    """One class per client gives 1.0; an IID split of 10 balanced classes stays near 0.1."""
    labels = np.repeat(np.arange(4), 25)
    by_class = [np.flatnonzero(labels == c) for c in range(4)]
    assert partition.label_concentration(labels, by_class) == 1.0
    balanced = _cifar_like(per_class=500)
    assert partition.label_concentration(balanced, partition.iid(len(balanced), 4)) < 0.12


def test_plot_counts_writes_png_into_new_folder(tmp_path: Path) -> None:
    """plot_counts creates the parent folder and writes a non-empty PNG."""
    labels = _cifar_like(per_class=200)
    matrix = partition.count_matrix(labels, partition.dirichlet(labels, 16, 0.1))
    out = partition.plot_counts(matrix, tmp_path / "figs" / "counts.png", title="alpha = 0.1")
    assert out == tmp_path / "figs" / "counts.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(PartitionError, match="count_matrix"):
        partition.plot_counts(np.arange(3), tmp_path / "bad.png")
