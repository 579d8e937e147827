"""Index splits of a training set over workers: Dirichlet label skew and IID (docs/algorithm.md §4).

:func:`dirichlet` is the paper's procedure (``distribute_data_dirichlet`` followed by the even
redistribution of ``PyTorchDataset.dirichlet_split``), made robust where the original is not:
degenerate Dirichlet rows are redrawn instead of turning into NaN cut points, and the retry
loop is bounded and fails with a :class:`~relayfl.errors.PartitionError` that names the fix.
:func:`iid` is the uniform random split of the all-reduce baseline. :func:`count_matrix`,
:func:`label_concentration` and :func:`plot_counts` summarise a split.

Every function takes plain arrays and returns numpy ``int64`` index arrays; the module imports
only numpy and the standard library (matplotlib inside :func:`plot_counts`).
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relayfl.errors import PartitionError

__all__ = ["count_matrix", "dirichlet", "iid", "label_concentration", "plot_counts"]

logger = logging.getLogger(__name__)

#: Redraws of one class's Dirichlet row before falling back to the non-full buckets uniformly.
_MAX_REDRAWS = 100


def dirichlet(
    labels: Any,
    num_clients: int,
    alpha: float,
    seed: int = 0,
    *,
    even_split: bool = True,
    min_size_fraction: float = 0.5,
    workers_per_chunk: int = 10,
    max_retries: int = 10_000,
) -> list[np.ndarray]:
    """Split sample indices over clients with Dirichlet label skew, as in the RelaySum paper.

    Parameters
    ----------
    labels : array-like[N] of int
        Class label of each training sample, ``>= 0``: a numpy array, a list, or a CPU
        ``torch.Tensor`` (anything :func:`numpy.asarray` accepts).
    num_clients : int
        Number of workers ``n``, ``1 <= n <= N``.
    alpha : float
        Dirichlet concentration, finite and ``> 0``. Small values give strong label skew
        (the paper uses 1, 0.1 and 0.01).
    seed : int (default: 0)
        Seed of the ``np.random.RandomState`` that drives every random choice. Taken as
        given: the paper passes ``config.seed + 100``, so pass ``seed + 100`` to reproduce
        the split of its run with seed ``seed``.
    even_split : bool (default: True)
        Concatenate the Dirichlet buckets in worker order and cut them into ``num_clients``
        contiguous pieces of equal size (within 1), as the paper always did. With ``False``
        the Dirichlet buckets themselves are returned, with uneven sizes.
    min_size_fraction : float (default: 0.5)
        A chunk of ``m`` workers and ``S`` samples is redrawn until its smallest bucket holds
        at least ``floor(min_size_fraction * S / m)`` samples; in ``[0, 1]``.
    workers_per_chunk : int (default: 10)
        Most workers per chunk (the paper's ``num_auxiliary_workers``).
    max_retries : int (default: 10_000)
        Redraws allowed per chunk after the first attempt before giving up.

    Returns
    -------
    list[np.ndarray]
        ``num_clients`` disjoint ``int64`` index arrays that together cover ``range(N)``.
        Indices are in bucket order, not sorted: within a bucket by class, then in the
        shuffled order. The result depends only on the arguments.

    Raises
    ------
    PartitionError
        On bad input (labels not 1-D integers, negative labels, ``alpha`` not finite and
        positive, ``num_clients`` outside ``1..N``, bad options), or when a chunk misses the
        minimum bucket size after ``max_retries`` retries.

    Notes
    -----
    docs/algorithm.md §4, steps 1-5, and invariant 16 of §7:

    1. Shuffle the ``(index, label)`` pairs with ``np.random.RandomState(seed)``.
    2. Cut them into ``ceil(n / workers_per_chunk)`` consecutive chunks; each but the last
       takes ``int(workers_per_chunk / n * N)`` samples (the paper's float expression), the
       last takes the rest.
    3. Per chunk (``m`` workers, ``S`` samples), repeat until the smallest bucket reaches the
       minimum size: for each class in increasing order, draw ``p ~ Dir(alpha * 1_m)``, set
       ``p_j = 0`` for every bucket already holding ``>= S / m`` samples, renormalise, and
       split that class's indices (in shuffled order) at ``floor(cumsum(p) * |class|)``.
    4. With ``even_split``, concatenate all buckets in worker order and ``np.array_split``.

    Where this differs from the paper's code:

    - A Dirichlet row that is degenerate (NaN, or all zeros; ``RandomState.dirichlet``
      produces these at ``alpha = 0.001``), or whose mass sits only on full buckets, is
      redrawn from the same generator (after the rows of the current attempt), up to 100
      times. If every redraw is degenerate, the
      class is split uniformly over the buckets that are not full. A class always has such a
      bucket, because buckets can only all be full once every sample of the chunk is placed.
      The paper divides 0 by 0 here and its NaN cut points silently push the whole class into
      the last bucket. When no row is degenerate (always so at ``alpha >= 0.01`` in our
      checks) the random stream, and so the split, is the paper's exactly.
    - The retries are bounded by ``max_retries``; the paper loops forever.
    - Every chunk is drawn at least once, even when the minimum size rounds to 0; the
      paper's ``while`` loop then skips the chunk.
    - Classes are the distinct label values in increasing order; the paper iterates over
      ``range(number of distinct labels)`` and drops samples whose label is not in that
      range. Both agree for labels ``0..K-1``.

    Examples
    --------
    >>> labels = np.repeat(np.arange(10), 500)
    >>> parts = dirichlet(labels, num_clients=16, alpha=0.1, seed=100)
    >>> sorted(np.concatenate(parts).tolist()) == list(range(5000))
    True
    >>> {len(part) for part in parts}
    {312, 313}
    """
    y = _as_labels(labels)
    n = _check_num_clients(num_clients, len(y))
    alpha = _check_alpha(alpha)
    seed = _check_seed(seed)
    if not isinstance(min_size_fraction, numbers.Real) or not 0 <= min_size_fraction <= 1:
        raise PartitionError(
            f"min_size_fraction must be in [0, 1], got {min_size_fraction!r}; "
            "use 0.5 as in the paper, or lower it to accept smaller buckets"
        )
    if _not_int(workers_per_chunk) or workers_per_chunk < 1:
        raise PartitionError(
            f"workers_per_chunk must be an integer >= 1, got {workers_per_chunk!r}; "
            "use 10 as in the paper"
        )
    if _not_int(max_retries) or max_retries < 0:
        raise PartitionError(
            f"max_retries must be an integer >= 0, got {max_retries!r}; use e.g. 10_000"
        )

    buckets, retries = _dirichlet_buckets(
        y,
        n,
        alpha,
        seed,
        min_size_fraction=float(min_size_fraction),
        workers_per_chunk=int(workers_per_chunk),
        max_retries=int(max_retries),
    )
    logger.debug("dirichlet(alpha=%s, n=%d): retries per chunk %s", alpha, n, retries)
    if not even_split:
        return buckets
    return list(np.array_split(np.concatenate(buckets), n))


def iid(num_samples: int, num_clients: int, seed: int = 0) -> list[np.ndarray]:
    """Split ``range(num_samples)`` uniformly at random into ``num_clients`` equal parts.

    Parameters
    ----------
    num_samples : int
        Number of training samples ``N``.
    num_clients : int
        Number of workers ``n``, ``1 <= n <= N``.
    seed : int (default: 0)
        Seed of the ``np.random.RandomState`` that draws the permutation.

    Returns
    -------
    list[np.ndarray]
        ``num_clients`` disjoint ``int64`` index arrays covering ``range(N)``, with sizes
        that differ by at most 1; indices are in permutation order.

    Raises
    ------
    PartitionError
        If ``num_samples < 1`` or ``num_clients`` is outside ``1..num_samples``.

    Notes
    -----
    The all-reduce baseline's ``data_split_method="random"`` (docs/algorithm.md §4); the paper
    uses ``torch.utils.data.random_split``, so its exact indices differ.
    """
    if _not_int(num_samples) or num_samples < 1:
        raise PartitionError(
            f"num_samples must be an integer >= 1, got {num_samples!r}; pass len(dataset)"
        )
    n = _check_num_clients(num_clients, int(num_samples))
    perm = np.random.RandomState(_check_seed(seed)).permutation(int(num_samples))
    return list(np.array_split(perm.astype(np.int64, copy=False), n))


def count_matrix(
    labels: Any, parts: Sequence[np.ndarray], num_classes: int | None = None
) -> np.ndarray:
    """Count the samples of each class held by each client.

    Parameters
    ----------
    labels : array-like[N] of int
        Class label of each sample, ``>= 0``.
    parts : sequence of array-like of int
        Index arrays, one per client, into ``labels``.
    num_classes : int | None (default: None)
        Number of columns; ``max(labels) + 1`` when None.

    Returns
    -------
    np.ndarray[clients, classes]
        ``int64`` counts; row ``i`` sums to ``len(parts[i])``.

    Raises
    ------
    PartitionError
        On bad labels, an index out of range, or ``num_classes <= max(labels)``.
    """
    y = _as_labels(labels)
    k = int(y.max()) + 1 if len(y) else 0
    if num_classes is not None:
        if _not_int(num_classes) or num_classes < k:
            raise PartitionError(
                f"num_classes must be an integer >= max(labels) + 1 = {k}, "
                f"got {num_classes!r}; pass num_classes=None to infer it"
            )
        k = int(num_classes)
    matrix = np.zeros((len(parts), k), dtype=np.int64)  # [clients, classes]
    for i, part in enumerate(parts):
        idx = np.asarray(part)
        if idx.size == 0:
            continue
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise PartitionError(
                f"parts[{i}] must be a 1-D integer index array, got shape {idx.shape} and "
                f"dtype {idx.dtype}; pass the lists that dirichlet() or iid() return"
            )
        if idx.min() < 0 or idx.max() >= len(y):
            raise PartitionError(
                f"parts[{i}] holds indices in [{idx.min()}, {idx.max()}], outside "
                f"[0, {len(y) - 1}]; pass the labels the parts were made from"
            )
        matrix[i] = np.bincount(y[idx], minlength=k)
    return matrix


def label_concentration(labels: Any, parts: Sequence[np.ndarray]) -> float:
    """Mean over clients of the share of each client's samples that belong to its top class.

    Parameters
    ----------
    labels : array-like[N] of int
        Class label of each sample, ``>= 0``.
    parts : sequence of array-like of int
        Index arrays, one per client, into ``labels``.

    Returns
    -------
    float
        In ``[1/K, 1]`` for ``K`` classes: about ``1/K`` for an IID split, 1 when every client
        holds a single class. Empty clients are left out of the mean.

    Raises
    ------
    PartitionError
        If every part is empty, or on the errors of :func:`count_matrix`.

    Notes
    -----
    The "top-class share" of docs/algorithm.md §4; it grows as alpha shrinks (§7, invariant 16).
    """
    matrix = count_matrix(labels, parts)  # [clients, classes]
    sizes = matrix.sum(axis=1)  # [clients]
    held = sizes > 0
    if not held.any():
        raise PartitionError(
            f"all {len(parts)} parts are empty; pass the non-empty index arrays of a split"
        )
    return float(np.mean(matrix[held].max(axis=1) / sizes[held]))


def plot_counts(matrix: Any, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Draw a clients x classes count matrix as a heatmap PNG.

    Parameters
    ----------
    matrix : array-like[clients, classes]
        Sample counts, for example from :func:`count_matrix`.
    path : str | os.PathLike
        Where to write the PNG; missing parent folders are created.
    title : str | None (default: None)
        Figure title; none when None.

    Returns
    -------
    Path
        The path written.

    Raises
    ------
    PartitionError
        If ``matrix`` is not a 2-D array of numbers with at least one cell.

    Notes
    -----
    Renders with matplotlib's Agg backend into a standalone ``Figure``, so it works
    without a display and leaves the pyplot state and backend of the caller untouched.
    Cells are annotated with their counts when the matrix has at most 20 rows and 20 columns.
    """
    counts = np.asarray(matrix)
    if counts.ndim != 2 or counts.size == 0 or not np.issubdtype(counts.dtype, np.number):
        raise PartitionError(
            f"matrix must be a non-empty 2-D array of counts, got shape {counts.shape} and "
            f"dtype {counts.dtype}; pass count_matrix(labels, parts)"
        )
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows, cols = counts.shape
    fig = Figure(figsize=(max(4.0, 0.5 * cols + 2.5), max(3.0, min(0.3 * rows + 1.5, 14.0))))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="samples")
    ax.set_xlabel("class")
    ax.set_ylabel("client")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=min(cols, 20), integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=min(rows, 32), integer=True))
    if title is not None:
        ax.set_title(title)
    if rows <= 20 and cols <= 20:
        high = counts.max()
        for (i, j), value in np.ndenumerate(counts):
            color = "black" if high > 0 and value > 0.6 * high else "white"
            ax.text(j, i, f"{value:g}", ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=120)
    return out


def _dirichlet_buckets(
    y: np.ndarray,
    n: int,
    alpha: float,
    seed: int,
    *,
    min_size_fraction: float,
    workers_per_chunk: int,
    max_retries: int,
) -> tuple[list[np.ndarray], list[int]]:
    """Run steps 1-3 of docs/algorithm.md §4 on validated input.

    Returns
    -------
    buckets, retries : list[np.ndarray], list[int]
        The ``n`` Dirichlet buckets in worker order, and the retries each chunk needed.
    """
    rs = np.random.RandomState(seed)
    N = len(y)
    order = np.arange(N, dtype=np.int64)  # [N]
    rs.shuffle(order)  # same draws as shuffling the paper's (index, label) pairs
    classes = np.unique(y)
    num_chunks = math.ceil(n / workers_per_chunk)
    chunk_len = int(workers_per_chunk / n * N)  # the paper's float expression

    buckets: list[np.ndarray] = []
    retries: list[int] = []
    for k in range(num_chunks):
        lo = k * chunk_len
        idx = order[lo:] if k == num_chunks - 1 else order[lo : lo + chunk_len]  # [S]
        m = min(workers_per_chunk, n - k * workers_per_chunk)
        grouped = np.argsort(y[idx], kind="stable")  # [S]; keeps the shuffled order in a class
        idx, chunk_labels = idx[grouped], y[idx][grouped]
        starts = np.searchsorted(chunk_labels, classes, side="left")  # [classes]
        ends = np.searchsorted(chunk_labels, classes, side="right")  # [classes]
        by_class = [idx[a:b] for a, b in zip(starts, ends, strict=True)]
        first = k * workers_per_chunk
        chunk_buckets, tries = _split_chunk(
            by_class,
            m,
            alpha,
            rs,
            min_size_fraction=min_size_fraction,
            max_retries=max_retries,
            context=f"alpha={alpha} over {n} clients: chunk {k} (workers {first}-{first + m - 1})",
        )
        buckets += chunk_buckets
        retries.append(tries)
    return buckets, retries


def _split_chunk(
    by_class: list[np.ndarray],
    m: int,
    alpha: float,
    rs: np.random.RandomState,
    *,
    min_size_fraction: float,
    max_retries: int,
    context: str,
) -> tuple[list[np.ndarray], int]:
    """Step 3 of docs/algorithm.md §4 for one chunk of ``m`` workers; returns buckets and retries.

    Each attempt draws the rows of all classes at once (the same random stream as one draw
    per class) and then places the classes in order with Python floats, which repeat numpy's
    elementwise arithmetic exactly; only the row sum goes through numpy, for its summation
    order.
    """
    counts = [len(idx) for idx in by_class]
    S = sum(counts)
    full_at = S / m
    min_size = int(min_size_fraction * S / m)
    concentration = np.repeat(alpha, m)  # [m]
    best = -1
    for attempt in range(max_retries + 1):
        try:
            rows = rs.dirichlet(concentration, size=len(counts)).tolist()  # [classes, m]
        except ZeroDivisionError:  # numpy versions that raise on an all-zero row
            rows = [[math.nan] * m for _ in counts]  # redraw every class one by one
        sizes = [0] * m
        bounds_per_class = []
        for row, count in zip(rows, counts, strict=True):
            open_ = [size < full_at for size in sizes]
            bounds = _class_bounds(row, open_, count, rs, concentration)
            for j in range(m):
                sizes[j] += bounds[j + 1] - bounds[j]
            bounds_per_class.append(bounds)
        smallest = min(sizes)
        if smallest >= min_size:
            buckets = [
                np.concatenate(
                    [
                        idx[bounds[j] : bounds[j + 1]]
                        for idx, bounds in zip(by_class, bounds_per_class, strict=True)
                    ]
                ).astype(np.int64, copy=False)
                for j in range(m)
            ]
            return buckets, attempt
        best = max(best, smallest)
    raise PartitionError(
        f"dirichlet split with {context} never reached the minimum bucket size "
        f"{min_size} (= {min_size_fraction} * {S} samples / {m} workers; best {best}) "
        f"in {max_retries} retries; use a larger alpha, fewer clients, a lower "
        "min_size_fraction, or a larger max_retries"
    )


def _class_bounds(
    row: list[float],
    open_: list[bool],
    count: int,
    rs: np.random.RandomState,
    concentration: np.ndarray,
) -> list[int]:
    """Balance one class's Dirichlet row and return its ``m + 1`` bucket boundaries.

    ``open_`` marks the buckets that are not full yet; bucket ``j`` gets the class's indices
    ``bounds[j]:bounds[j + 1]``. For a usable row the arithmetic is the paper's,
    ``floor(cumsum(p / p.sum()) * count)``, bit for bit. A degenerate row (NaN, all zero, or
    all its mass on full buckets) is redrawn from ``rs`` up to ``_MAX_REDRAWS`` times; after
    that the class is shared uniformly among the open buckets, which exist while samples
    remain (all buckets full means all samples placed).
    """
    m = len(row)
    if count == 0:
        return [0] * (m + 1)
    p, total = _balance(row, open_)
    for _ in range(_MAX_REDRAWS):
        if total > 0:
            break
        try:
            redrawn = rs.dirichlet(concentration).tolist()  # [m]
        except ZeroDivisionError:  # numpy versions that raise on an all-zero row
            continue
        p, total = _balance(redrawn, open_)
    else:
        if not total > 0:
            p = [1.0 if is_open else 0.0 for is_open in open_] if any(open_) else [1.0] * m
            total = float(sum(p))
    bounds = [0]
    acc = 0.0
    for x in p[:-1]:
        acc += x / total  # np.cumsum(p / total), one term at a time
        bounds.append(min(int(acc * count), count))  # .astype(int), inside [0, count]
    bounds.append(count)
    return bounds


def _balance(row: list[float], open_: list[bool]) -> tuple[list[float], float]:
    """Zero the mass of full buckets; return the row and its sum (0.0 when unusable)."""
    if not all(math.isfinite(x) for x in row):
        return row, 0.0
    p = [x if is_open else 0.0 for x, is_open in zip(row, open_, strict=True)]
    total = float(np.array(p).sum())  # numpy's summation order, as in the paper
    if not (math.isfinite(total) and total > 0):
        return p, 0.0
    return p, total


def _as_labels(labels: Any) -> np.ndarray:
    """Return ``labels`` as a 1-D ``int64`` numpy array of non-negative values."""
    try:
        y = np.asarray(labels)
    except (TypeError, ValueError, RuntimeError):
        raise PartitionError(
            f"labels of type {type(labels).__name__} cannot be read as an array; "
            "pass a numpy array, a list, or a CPU tensor (tensor.cpu())"
        ) from None
    if y.ndim != 1:
        raise PartitionError(
            f"labels must be 1-D, got shape {y.shape}; pass one class id per sample, "
            "e.g. labels.reshape(-1) or dataset.targets"
        )
    if y.size and not np.issubdtype(y.dtype, np.integer):
        fix = (
            "pass labels.astype(np.int64)"
            if np.issubdtype(y.dtype, np.number) and np.all(np.mod(y, 1) == 0)
            else "map the classes to ids 0..K-1 with "
            "classes, ids = np.unique(labels, return_inverse=True) and pass ids"
        )
        raise PartitionError(f"labels must be integer class ids, got dtype {y.dtype}; {fix}")
    y = y.astype(np.int64, copy=False)
    if y.size and y.min() < 0:
        raise PartitionError(
            f"labels must be >= 0, got minimum {y.min()}; map the classes to 0..K-1 first"
        )
    return y


def _check_num_clients(num_clients: Any, num_samples: int) -> int:
    """Return ``num_clients`` as an int in ``1..num_samples``."""
    if _not_int(num_clients) or num_clients < 1:
        raise PartitionError(
            f"num_clients must be an integer >= 1, got {num_clients!r}; "
            "pass the number of workers, e.g. 16"
        )
    if num_clients > num_samples:
        raise PartitionError(
            f"cannot split {num_samples} samples over {num_clients} clients; "
            f"use at most {num_samples} clients"
        )
    return int(num_clients)


def _check_alpha(alpha: Any) -> float:
    """Return ``alpha`` as a finite float > 0."""
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, numbers.Real)
        or not math.isfinite(alpha)
        or alpha <= 0
    ):
        raise PartitionError(
            f"alpha must be a finite number > 0, got {alpha!r}; "
            "use e.g. 0.1 for strong label skew, 100 for nearly IID"
        )
    return float(alpha)


def _check_seed(seed: Any) -> int:
    """Return ``seed`` as an int that ``np.random.RandomState`` accepts."""
    if _not_int(seed) or not 0 <= seed < 2**32:
        raise PartitionError(
            f"seed must be an integer in [0, 2**32 - 1], got {seed!r}; pass e.g. seed + 100"
        )
    return int(seed)


def _not_int(value: Any) -> bool:
    """True unless ``value`` is an integer (``bool`` excluded)."""
    return isinstance(value, bool) or not isinstance(value, numbers.Integral)
