"""Data sets and synthetic objectives: digits, (Fashion-)MNIST, CIFAR-10 and random quadratics.

Every image loader returns a :class:`Dataset` of normalised ``float32`` tensors in
``[N, C, H, W]`` layout with ``int64`` labels. Nothing here ever downloads: a missing file
raises :class:`~relayfl.errors.DataError`, whose one-line message names the folders searched,
the files expected there and how to get them.

The random quadratics of docs/algorithm.md section 5.5 live here too (:func:`random_quadratics`),
as they are the synthetic "data set" behind figure 2.
"""

from __future__ import annotations

import gzip
import math
import pickle
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from relayfl.errors import ConfigError, DataError

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "FASHION_MNIST_DEFAULT_ROOT",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "MNIST_MEAN",
    "MNIST_STD",
    "Dataset",
    "Quadratics",
    "load",
    "load_cifar10",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "random_quadratics",
]

#: Names :func:`load` accepts (kebab-case, as on the CLI).
DATASETS: tuple[str, ...] = ("digits", "fashion-mnist", "mnist", "cifar10")

#: Where Debian's ``dataset-fashion-mnist`` package is expected to put the IDX files.
FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_MEAN: tuple[float, ...] = (0.2860,)
FASHION_MNIST_STD: tuple[float, ...] = (0.3530,)
MNIST_MEAN: tuple[float, ...] = (0.1307,)
MNIST_STD: tuple[float, ...] = (0.3081,)
#: Per-channel statistics of docs/algorithm.md section 5.1.
CIFAR10_MEAN: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, ...] = (0.2023, 0.1994, 0.2010)

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
_CIFAR_FILES = (*(f"data_batch_{k}" for k in range(1, 6)), "test_batch")


@dataclass(frozen=True, slots=True, eq=False)
class Dataset:
    """A normalised image classification data set, held in memory.

    Parameters
    ----------
    x_train, y_train : Tensor[N, C, H, W], Tensor[N]
        Training images (``float32``, normalised) and labels (``int64``, in
        ``0..num_classes-1``).
    x_test, y_test : Tensor[M, C, H, W], Tensor[M]
        Test images and labels, normalised with the same statistics.
    num_classes : int
        Number of classes.
    name : str
        Kebab-case name, as :func:`load` takes it (``"digits"``, ``"fashion-mnist"``, ...).
    mean, std : tuple of float or None (default: None)
        Per-channel statistics the images were normalised with: ``x = (raw - mean) / std``,
        where ``raw`` lies in [0, 1].
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    name: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
                raise DataError(
                    f"{self.name}: {split} images {tuple(x.shape)} and labels {tuple(y.shape)} "
                    "do not match; expected images [N, C, H, W] and labels [N]"
                )

    @property
    def in_channels(self) -> int:
        """Number of image channels C."""
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        """Image height H (all loaders here give square images)."""
        return int(self.x_train.shape[2])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, x_train={list(self.x_train.shape)}, "
            f"x_test={list(self.x_test.shape)}, num_classes={self.num_classes})"
        )


# ----------------------------------------------------------------------------- digits


def load_digits(*, test_size: int = 360, seed: int = 0) -> Dataset:
    """Load scikit-learn's bundled 8x8 handwritten digits (1,797 images; no download).

    Parameters
    ----------
    test_size : int (default: 360)
        Number of test images; the split is stratified by class.
    seed : int (default: 0)
        Seed of the split; the same seed always gives the same split.

    Returns
    -------
    Dataset
        ``x_train`` is Tensor[1797 - test_size, 1, 8, 8]. Pixels are scaled to [0, 1]
        (divided by 16), then standardised with the mean and std of the training pixels,
        which ``mean`` and ``std`` record.

    Raises
    ------
    ConfigError
        If ``test_size`` leaves fewer than 10 images (one per class) on either side.
    """
    from sklearn.datasets import load_digits as _sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = _sklearn_digits()
    x = np.asarray(bunch.data, dtype=np.float64) / 16.0  # [1797, 64]
    y = np.asarray(bunch.target, dtype=np.int64)
    num_classes = 10
    if not num_classes <= test_size <= len(x) - num_classes:
        raise ConfigError(
            f"digits test_size must be in [{num_classes}, {len(x) - num_classes}] so that each "
            f"side holds every class, got {test_size}; use the default 360"
        )
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=seed
    )
    mean, std = float(x_train.mean()), float(x_train.std())

    def to_tensor(a: np.ndarray) -> Tensor:
        return torch.from_numpy(((a - mean) / std).astype(np.float32)).reshape(-1, 1, 8, 8)

    return Dataset(
        x_train=to_tensor(x_train),  # [N, 1, 8, 8]
        y_train=torch.from_numpy(y_train),
        x_test=to_tensor(x_test),
        y_test=torch.from_numpy(y_test),
        num_classes=num_classes,
        name="digits",
        mean=(mean,),
        std=(std,),
    )


# ----------------------------------------------------------------------------- helpers


def _subset(num: int, limit: int | None, seed: int, what: str) -> np.ndarray | None:
    """Indices of the first ``limit`` items of a seeded permutation of ``range(num)``."""
    if limit is None:
        return None
    if limit < 1:
        raise ConfigError(f"{what} must be >= 1 or None, got {limit}; pass None to keep all")
    if limit >= num:
        if limit > num:
            warnings.warn(
                f"{what}={limit} exceeds the {num} available examples; keeping all {num}",
                stacklevel=3,
            )
        return None
    return np.random.RandomState(seed).permutation(num)[:limit]


def _normalise(raw: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 [N, C, H, W] -> float32 ``(raw / 255 - mean) / std`` per channel."""
    x = torch.from_numpy(np.array(raw, dtype=np.uint8)).to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def _find_folder(
    candidates: Sequence[Path], stems: Sequence[str], *, allow_gz: bool
) -> tuple[Path, dict[str, Path]] | None:
    """The first candidate folder holding every stem (plain, or ``.gz`` when allowed)."""
    for folder in candidates:
        found: dict[str, Path] = {}
        for stem in stems:
            names = (stem, f"{stem}.gz") if allow_gz else (stem,)
            hit = next((folder / n for n in names if (folder / n).is_file()), None)
            if hit is None:
                break
            found[stem] = hit
        else:
            return folder, found
    return None


# ----------------------------------------------------------------------------- IDX (MNIST)


def _read_bytes(path: Path) -> bytes:
    """File contents, gunzipped when the name ends in ``.gz``."""
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"cannot read {path}: {err}; the file is corrupt or truncated, replace it"
        ) from None


def _read_idx(path: Path, *, magic: int, ndim: int) -> np.ndarray:
    """Parse one IDX file of unsigned bytes into an array of shape ``dims``."""
    data = _read_bytes(path)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{path} holds {len(data)} bytes, fewer than the {header}-byte IDX header; "
            "the file is truncated, replace it"
        )
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(
            f"{path} starts with magic number {found:#010x}, expected {magic:#010x}; "
            "it is not an IDX file of this kind, replace it"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise DataError(
            f"{path} holds {len(data)} bytes but its header {list(dims)} needs {expected}; "
            "the file is truncated or corrupt, replace it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx_dataset(
    *,
    name: str,
    title: str,
    candidates: Sequence[Path],
    fix: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    limit_train: int | None,
    limit_test: int | None,
    seed: int,
) -> Dataset:
    """Shared body of :func:`load_fashion_mnist` and :func:`load_mnist`."""
    hit = _find_folder(candidates, _IDX_FILES, allow_gz=True)
    if hit is None:
        searched = ", ".join(str(c) for c in candidates)
        expected = ", ".join(f"{s}[.gz]" for s in _IDX_FILES)
        raise DataError(f"{title} not found: no folder among {searched} holds {expected}; {fix}")
    _, files = hit
    splits = []
    for images_stem, labels_stem, limit in (
        (_IDX_FILES[0], _IDX_FILES[1], limit_train),
        (_IDX_FILES[2], _IDX_FILES[3], limit_test),
    ):
        images = _read_idx(files[images_stem], magic=_IDX_IMAGES_MAGIC, ndim=3)  # [N, H, W]
        labels = _read_idx(files[labels_stem], magic=_IDX_LABELS_MAGIC, ndim=1)  # [N]
        if len(images) != len(labels):
            raise DataError(
                f"{files[images_stem]} holds {len(images)} images but {files[labels_stem]} "
                f"holds {len(labels)} labels; the files do not belong together, replace them"
            )
        if labels.size and int(labels.max()) >= 10:
            raise DataError(
                f"{files[labels_stem]} holds label {int(labels.max())}, expected 0..9; "
                "the file is corrupt, replace it"
            )
        index = _subset(len(images), limit, seed, "limit_" + images_stem.split("-")[0])
        if index is not None:
            images, labels = images[index], labels[index]
        x = _normalise(images[:, None], mean, std)  # [N, 1, H, W]
        splits.append((x, torch.from_numpy(labels.astype(np.int64))))
    (x_train, y_train), (x_test, y_test) = splits
    return Dataset(x_train, y_train, x_test, y_test, num_classes=10, name=name, mean=mean, std=std)


def load_fashion_mnist(
    root: str | Path | None = None,
    *,
    limit_train: int | None = None,
    limit_test: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load Fashion-MNIST from IDX files on disk (never downloads).

    Parameters
    ----------
    root : str or Path or None (default: None)
        Folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each gzipped (``.gz``) or
        plain, either directly or in torchvision's ``root/FashionMNIST/raw/``. None means
        ``/usr/share/datasets/fashion-mnist``, where Debian's ``dataset-fashion-mnist``
        package puts them.
    limit_train, limit_test : int or None (default: None)
        Keep only this many examples: the first ones of a permutation seeded by ``seed``.
        Useful for CPU-sized experiments.
    seed : int (default: 0)
        Seed of the subset permutation; unused without a limit.

    Returns
    -------
    Dataset
        ``x_train`` is Tensor[60000, 1, 28, 28]: pixels scaled to [0, 1], then normalised
        with mean 0.2860 and std 0.3530.

    Raises
    ------
    DataError
        If no searched folder holds the four files, or one of them is corrupt or truncated.
    """
    folder = FASHION_MNIST_DEFAULT_ROOT if root is None else Path(root)
    return _load_idx_dataset(
        name="fashion-mnist",
        title="Fashion-MNIST",
        candidates=(folder, folder / "FashionMNIST" / "raw"),
        fix=(
            "install it with `apt-get install -y dataset-fashion-mnist` (files land in "
            f"{FASHION_MNIST_DEFAULT_ROOT}), or copy the four files into {folder}"
        ),
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
        limit_train=limit_train,
        limit_test=limit_test,
        seed=seed,
    )


def load_mnist(
    root: str | Path,
    *,
    limit_train: int | None = None,
    limit_test: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load MNIST from IDX files on disk (never downloads).

    Parameters
    ----------
    root : str or Path
        Folder holding the four IDX files (the names of :func:`load_fashion_mnist`), each
        gzipped or plain, directly or in torchvision's ``root/MNIST/raw/``.
    limit_train, limit_test : int or None (default: None)
        Keep only this many examples: the first ones of a permutation seeded by ``seed``.
    seed : int (default: 0)
        Seed of the subset permutation; unused without a limit.

    Returns
    -------
    Dataset
        ``x_train`` is Tensor[60000, 1, 28, 28]: pixels scaled to [0, 1], then normalised
        with mean 0.1307 and std 0.3081.

    Raises
    ------
    DataError
        If no searched folder holds the four files, or one of them is corrupt or truncated.
    """
    folder = Path(root)
    return _load_idx_dataset(
        name="mnist",
        title="MNIST",
        candidates=(folder, folder / "MNIST" / "raw"),
        fix=f"download MNIST into {folder} yourself; relayfl never downloads",
        mean=MNIST_MEAN,
        std=MNIST_STD,
        limit_train=limit_train,
        limit_test=limit_test,
        seed=seed,
    )


# ----------------------------------------------------------------------------- CIFAR-10


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR-10 batch -> (uint8 [N, 3, 32, 32], int64 [N])."""
    try:
        with path.open("rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = batch[b"data"] if b"data" in batch else batch["data"]
        labels = batch[b"labels"] if b"labels" in batch else batch["labels"]
        images = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
        targets = np.asarray(labels, dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as err:
        raise DataError(
            f"cannot read CIFAR-10 batch {path}: {type(err).__name__}: {err}; "
            "the file is corrupt or truncated, replace it"
        ) from None
    if len(images) != len(targets) or (
        targets.size and not 0 <= targets.min() <= targets.max() < 10
    ):
        raise DataError(
            f"CIFAR-10 batch {path} holds {len(images)} images and {len(targets)} labels "
            "(expected equal counts, labels 0..9); the file is corrupt, replace it"
        )
    return images, targets


def load_cifar10(
    root: str | Path,
    *,
    limit_train: int | None = None,
    limit_test: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load CIFAR-10 from its python pickle batches on disk (never downloads).

    Parameters
    ----------
    root : str or Path
        Folder holding ``cifar-10-batches-py/`` (as torchvision leaves it), or that folder
        itself, with ``data_batch_1`` ... ``data_batch_5`` and ``test_batch``.
    limit_train, limit_test : int or None (default: None)
        Keep only this many examples: the first ones of a permutation seeded by ``seed``.
    seed : int (default: 0)
        Seed of the subset permutation; unused without a limit.

    Returns
    -------
    Dataset
        ``x_train`` is Tensor[50000, 3, 32, 32], normalised per channel with the mean
        (0.4914, 0.4822, 0.4465) and std (0.2023, 0.1994, 0.2010) of docs/algorithm.md section 5.1.

    Raises
    ------
    DataError
        If neither folder holds the six batches, or one of them cannot be unpickled.

    Notes
    -----
    The training augmentation of section 5.1 (random crop with padding 4, horizontal flip)
    is applied per batch by the trainer, not here. The batches are pickles: only load
    files from a source you trust.
    """
    folder = Path(root)
    candidates = (folder / "cifar-10-batches-py", folder)
    hit = _find_folder(candidates, _CIFAR_FILES, allow_gz=False)
    if hit is None:
        searched = ", ".join(str(c) for c in candidates)
        raise DataError(
            f"CIFAR-10 not found: no folder among {searched} holds {', '.join(_CIFAR_FILES)}; "
            f"download and extract cifar-10-python.tar.gz into {folder} yourself; "
            "relayfl never downloads"
        )
    _, files = hit
    train = [_read_cifar_batch(files[f"data_batch_{k}"]) for k in range(1, 6)]
    test = [_read_cifar_batch(files["test_batch"])]
    splits = []
    for parts, limit, what in (
        (train, limit_train, "limit_train"),
        (test, limit_test, "limit_test"),
    ):
        images = np.concatenate([p[0] for p in parts])  # [N, 3, 32, 32]
        labels = np.concatenate([p[1] for p in parts])  # [N]
        index = _subset(len(images), limit, seed, what)
        if index is not None:
            images, labels = images[index], labels[index]
        splits.append((_normalise(images, CIFAR10_MEAN, CIFAR10_STD), torch.from_numpy(labels)))
    (x_train, y_train), (x_test, y_test) = splits
    return Dataset(
        x_train, y_train, x_test, y_test, 10, "cifar10", mean=CIFAR10_MEAN, std=CIFAR10_STD
    )


# ----------------------------------------------------------------------------- dispatch


def load(name: str, *, root: str | Path | None = None, **options: Any) -> Dataset:
    """Load a data set by its kebab-case name.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`: ``"digits"``, ``"fashion-mnist"``, ``"mnist"``, ``"cifar10"``.
    root : str or Path or None (default: None)
        Folder to read from. Ignored by ``"digits"`` (bundled with scikit-learn); optional
        for ``"fashion-mnist"`` (see :func:`load_fashion_mnist`); required otherwise.
    **options
        Passed on to the loader, e.g. ``limit_train=5000`` or, for digits, ``test_size``.

    Returns
    -------
    Dataset

    Raises
    ------
    ConfigError
        If ``name`` is unknown, or ``root`` is missing for a data set that needs it.
    DataError
        If the files are missing or corrupt.

    Examples
    --------
    >>> ds = load("digits")
    >>> ds.x_train.shape, ds.num_classes
    (torch.Size([1437, 1, 8, 8]), 10)
    """
    if name == "digits":
        return load_digits(**options)
    if name == "fashion-mnist":
        return load_fashion_mnist(root, **options)
    if name in ("mnist", "cifar10"):
        if root is None:
            raise ConfigError(
                f"data set {name!r} has no default folder; pass --data-root FOLDER (Python: "
                "root=FOLDER), the folder that holds its files; relayfl never downloads"
            )
        loader = load_mnist if name == "mnist" else load_cifar10
        return loader(root, **options)
    raise ConfigError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")


# ----------------------------------------------------------------------------- quadratics


@dataclass(frozen=True, slots=True, eq=False)
class Quadratics:
    """Random distributed quadratics of docs/algorithm.md section 5.5 (paper appendix B.4).

    Worker ``i`` holds ``f_i(x) = ½ ||A_i x - b_i||²``, so its gradient is
    ``A_iᵀ(A_i x - b_i)``, and the global objective is ``f(x) = (1/n) Σ_i f_i(x)``.

    Parameters
    ----------
    A : Tensor[n, d, d]
        Per-worker matrices.
    b : Tensor[n, d]
        Per-worker targets.
    x_star : Tensor[d]
        The global optimum: ``Σ_i A_iᵀ(A_i x_star - b_i) = 0``.
    noise : float (default: 0.0)
        σ: :meth:`grad` adds ``(σ/√d)·N(0, I)`` to each worker's gradient.

    Notes
    -----
    The reference script writes ``f(x) = (1/n) Σ_i ||A_i x - b_i||²`` but uses the gradient
    ``A_iᵀ(A_i x - b_i)``, which is the gradient of half that. Here the loss and the gradient
    agree (``f`` carries the ½), so :meth:`suboptimality` is **half** the error the paper
    plots: the paper's threshold ``f(x̄) - f* ≤ 1e-6`` reads ``suboptimality ≤ 5e-7`` here.
    """

    A: Tensor
    b: Tensor
    x_star: Tensor
    noise: float = 0.0

    @property
    def num_workers(self) -> int:
        """Number of workers n."""
        return int(self.A.shape[0])

    @property
    def dim(self) -> int:
        """Dimension d."""
        return int(self.A.shape[-1])

    def grad(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Each worker's (stochastic) gradient at its own point.

        Parameters
        ----------
        x : Tensor[n, d]
            Worker ``i``'s model in row ``i``.
        generator : torch.Generator or None (default: None)
            Source of the gradient noise (the global RNG when None); unused when
            ``noise == 0``.

        Returns
        -------
        Tensor[n, d]
            ``A_iᵀ(A_i x_i - b_i) + (σ/√d)·ξ_i`` with ``ξ_i ~ N(0, I)``.
        """
        residual = torch.einsum("nij,nj->ni", self.A, x) - self.b  # [n, d]
        g = torch.einsum("nij,ni->nj", self.A, residual)  # [n, d]
        if self.noise > 0:
            xi = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            g = g + (self.noise / math.sqrt(self.dim)) * xi
        return g

    def loss(self, x_bar: Tensor) -> Tensor:
        """Global objective ``f(x) = (1/(2n)) Σ_i ||A_i x - b_i||²`` at one point.

        Parameters
        ----------
        x_bar : Tensor[d]
            The point, usually the mean of the workers' models.

        Returns
        -------
        Tensor
            A scalar.
        """
        residual = torch.einsum("nij,j->ni", self.A, x_bar) - self.b  # [n, d]
        return residual.pow(2).sum() / (2 * self.num_workers)

    def suboptimality(self, x: Tensor) -> Tensor:
        """``f(x̄) - f(x*)`` with ``x̄`` the mean of the workers' models (section 5.5).

        Parameters
        ----------
        x : Tensor[n, d]
            Worker ``i``'s model in row ``i``.

        Returns
        -------
        Tensor
            A non-negative scalar (up to rounding).
        """
        return self.loss(x.mean(0)) - self.loss(self.x_star)

    def zeta2(self) -> Tensor:
        """Heterogeneity ``ζ² = (1/n) Σ_i ||∇f_i(x*)||²`` (noise-free gradients).

        Returns
        -------
        Tensor
            A scalar.
        """
        residual = torch.einsum("nij,j->ni", self.A, self.x_star) - self.b  # [n, d]
        g = torch.einsum("nij,ni->nj", self.A, residual)  # [n, d]
        return g.pow(2).sum(1).mean()

    def __repr__(self) -> str:
        return (
            f"Quadratics(num_workers={self.num_workers}, dim={self.dim}, "
            f"zeta2={float(self.zeta2()):.4g}, r0={float(self.x_star.norm()):.4g}, "
            f"noise={self.noise})"
        )


def _optimum(A: Tensor, b: Tensor) -> Tensor:
    """Minimiser of ``Σ_i ||A_i x - b_i||²``: solves ``(Σ A_iᵀA_i) x = Σ A_iᵀ b_i``."""
    AtA = torch.einsum("nki,nkj->ij", A, A)  # [d, d]
    Atb = torch.einsum("nki,nk->i", A, b)  # [d]
    return torch.linalg.solve(AtA, Atb)


def random_quadratics(
    num_workers: int,
    dim: int = 10,
    heterogeneity: float = 0.1,
    *,
    mu: float | None = 0.5,
    L: float = 1.0,
    r0: float = 10.0,
    noise: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> Quadratics:
    """Generate the random quadratics of docs/algorithm.md section 5.5.

    Parameters
    ----------
    num_workers : int
        Number of workers n.
    dim : int (default: 10)
        Dimension d.
    heterogeneity : float (default: 0.1)
        Target ``ζ² = (1/n) Σ_i ||A_iᵀ(A_i x* - b_i)||²``, reached to a relative 1e-5.
    mu : float or None (default: 0.5)
        Smallest singular value of each ``A_i``: the singular values become
        ``linspace(mu, L, d)``. None keeps the Gaussian spectrum and divides by the top
        singular value, then multiplies by ``L``.
    L : float (default: 1.0)
        Largest singular value of each ``A_i``.
    r0 : float (default: 10.0)
        Distance of the global optimum from 0, where all workers start.
    noise : float (default: 0.0)
        Gradient noise σ of :meth:`Quadratics.grad`.
    seed : int (default: 0)
        Seed of a private ``torch.Generator``; the same seed always gives the same problem.
    dtype : torch.dtype (default: torch.float64)
        Dtype of the returned tensors.

    Returns
    -------
    Quadratics

    Raises
    ------
    ConfigError
        If a parameter is out of range, or ``heterogeneity > 0`` with a single worker.

    Notes
    -----
    Steps, as in the reference ``paper-figures/random_quadratics.py``: draw ``A_i ~ N(0, 1)``
    and reset its singular values; give each worker its own optimum ``s·o_i`` with
    ``o_i ~ N(0, I)`` through ``b_i = A_i (s·o_i)``; shift every ``b_i`` by ``A_i x_c`` so
    the global optimum is 0; choose ``s`` so that ``ζ²`` equals ``heterogeneity``; finally add
    ``A_i x_0`` to ``b_i`` with ``||x_0|| = r0``, which moves the optimum to ``x_0`` and leaves
    ``ζ²`` unchanged. The random draws are made in float32, in the reference's order, so a
    seed gives the reference's problem for that seed up to rounding.

    The reference finds ``s`` by binary search. Every ``b_i`` is linear in ``s``, so
    ``ζ²(s) = s²·ζ²(1)`` and the search converges to ``s = √(heterogeneity / ζ²(1))``,
    which is computed directly here and then checked against the tolerance.

    Examples
    --------
    >>> q = random_quadratics(8, dim=10, heterogeneity=0.1, seed=1)
    >>> round(float(q.zeta2()), 6), round(float(q.x_star.norm()), 6)
    (0.1, 10.0)
    """
    n, d = num_workers, dim
    if n < 1 or d < 1:
        raise ConfigError(f"random_quadratics needs num_workers >= 1 and dim >= 1, got {n} and {d}")
    if not heterogeneity >= 0:
        raise ConfigError(
            f"heterogeneity (zeta^2) must be >= 0, got {heterogeneity}; use 0 for identical "
            "optima, e.g. 0.1 for the paper's figure 2"
        )
    if n == 1 and heterogeneity > 0:
        raise ConfigError(
            f"heterogeneity must be 0 with a single worker, got {heterogeneity}; "
            "use num_workers >= 2"
        )
    if not L > 0:
        raise ConfigError(f"L must be > 0, got {L}; use the default 1.0")
    if mu is not None and not 0 < mu <= L:
        raise ConfigError(f"mu must lie in (0, L={L}], got {mu}; use e.g. 0.5, or None")
    if not r0 >= 0 or not noise >= 0:
        raise ConfigError(f"r0 and noise must be >= 0, got r0={r0} and noise={noise}")

    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, d, generator=gen).to(torch.float64)  # [n, d, d]
    U, S, Vh = torch.linalg.svd(A)  # [n, d, d], [n, d], [n, d, d]
    if mu is None:
        S = S * (L / S[:, :1])
    else:
        S = torch.linspace(mu, L, d, dtype=torch.float64).expand(n, d)
    A = U @ torch.diag_embed(S) @ Vh  # [n, d, d]

    directions = torch.randn(n, d, generator=gen).to(torch.float64)  # [n, d]
    b = torch.einsum("nij,nj->ni", A, directions)  # [n, d]; scale s = 1
    b = b - torch.einsum("nij,j->ni", A, _optimum(A, b))  # global optimum at 0
    unit_zeta2 = float(torch.einsum("nij,ni->nj", A, b).pow(2).sum(1).mean())
    if heterogeneity == 0:
        b = torch.zeros_like(b)
    elif unit_zeta2 > 0:
        b = b * math.sqrt(heterogeneity / unit_zeta2)
    else:  # pragma: no cover - needs identical A_i and directions
        raise ConfigError(
            f"these {n} quadratics cannot be made heterogeneous (zeta^2 is 0 at every scale); "
            "change the seed or use heterogeneity=0"
        )

    x0 = torch.randn(d, generator=gen).to(torch.float64)  # [d]
    x0 = x0 * (r0 / x0.norm())
    b = b + torch.einsum("nij,j->ni", A, x0)
    q = Quadratics(A=A, b=b, x_star=_optimum(A, b), noise=float(noise))
    reached = float(q.zeta2())
    if abs(reached - heterogeneity) > 1e-5 * max(heterogeneity, 1e-12):
        raise ConfigError(  # pragma: no cover - only on extreme ill-conditioning
            f"random_quadratics reached zeta^2={reached:.6g} instead of {heterogeneity}; "
            "the problem is too ill-conditioned, raise mu or use float64"
        )
    return Quadratics(A=A.to(dtype), b=b.to(dtype), x_star=q.x_star.to(dtype), noise=float(noise))
