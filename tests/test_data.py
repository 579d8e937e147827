"""Tests for relayfl.data: image loaders on synthetic files, and random quadratics (§5.5)."""

from __future__ import annotations

import gzip
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from relayfl import data
from relayfl.errors import ConfigError, DataError

IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# ----------------------------------------------------------------------------- helpers


def _idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file (magic 0x0801 or 0x0803)."""
    magic = 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx_set(
    folder: Path, *, gz: bool, num_train: int = 6, num_test: int = 4, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write the four (Fashion-)MNIST IDX files with random 28x28 content into ``folder``."""
    rng = np.random.RandomState(seed)
    arrays = {
        IDX_STEMS[0]: rng.randint(0, 256, size=(num_train, 28, 28)).astype(np.uint8),
        IDX_STEMS[1]: rng.randint(0, 10, size=num_train).astype(np.uint8),
        IDX_STEMS[2]: rng.randint(0, 256, size=(num_test, 28, 28)).astype(np.uint8),
        IDX_STEMS[3]: rng.randint(0, 10, size=num_test).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        raw = _idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)
    return arrays


def _write_cifar(folder: Path, *, per_batch: int = 2, num_test: int = 3) -> dict[str, np.ndarray]:
    """Write six tiny CIFAR-10 pickle batches into ``folder``; return the raw arrays."""
    rng = np.random.RandomState(1)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    for name, count in [
        *((f"data_batch_{k}", per_batch) for k in range(1, 6)),
        ("test_batch", num_test),
    ]:
        x = rng.randint(0, 256, size=(count, 3 * 32 * 32)).astype(np.uint8)
        y = rng.randint(0, 10, size=count).tolist()
        with (folder / name).open("wb") as f:
            pickle.dump({b"data": x, b"labels": y, b"batch_label": name.encode()}, f)
        images.append(x)
        labels.append(np.asarray(y))
    return {
        "x_train": np.concatenate(images[:5]).reshape(-1, 3, 32, 32),
        "y_train": np.concatenate(labels[:5]),
        "x_test": images[5].reshape(-1, 3, 32, 32),
        "y_test": labels[5],
    }


def _expected(raw: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Reference normalisation ``(raw / 255 - mean) / std`` for uint8 [N, C, H, W]."""
    x = torch.from_numpy(raw.astype(np.float32)) / 255.0
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s


# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    """The default digits split, loaded once for the module."""
    return data.load_digits()


def test_load_digits_shapes_default_split(digits: data.Dataset) -> None:
    """Digits gives [1437, 1, 8, 8] float32 train and [360, 1, 8, 8] test with int64 labels."""
    assert digits.x_train.shape == (1437, 1, 8, 8)
    assert digits.x_test.shape == (360, 1, 8, 8)
    assert digits.y_train.shape == (1437,) and digits.y_test.shape == (360,)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert digits.num_classes == 10 and digits.name == "digits"
    assert digits.in_channels == 1 and digits.image_size == 8


def test_load_digits_classes_stratified(digits: data.Dataset) -> None:
    """Every class appears on both sides, in proportions close to the whole set's."""
    test_counts = torch.bincount(digits.y_test, minlength=10)
    assert set(digits.y_train.tolist()) == set(range(10))
    assert int(test_counts.min()) >= 34 and int(test_counts.max()) <= 38


def test_load_digits_standardised_with_train_stats(digits: data.Dataset) -> None:
    """Train pixels have mean 0 and std 1; mean/std record the /16-scaled statistics."""
    assert abs(float(digits.x_train.mean())) < 1e-5
    assert abs(float(digits.x_train.std(unbiased=False)) - 1.0) < 1e-5
    assert digits.mean is not None and digits.std is not None
    assert 0.0 < digits.mean[0] < 1.0 and 0.0 < digits.std[0] < 1.0
    raw = digits.x_test * digits.std[0] + digits.mean[0]  # back to pixels / 16
    assert float(raw.min()) > -1e-5 and float(raw.max()) < 1 + 1e-5


def test_load_digits_deterministic_per_seed(digits: data.Dataset) -> None:
    """The same seed gives the same split; another seed gives another one."""
    again = data.load_digits()
    other = data.load_digits(seed=1)
    assert torch.equal(again.x_train, digits.x_train) and torch.equal(again.y_test, digits.y_test)
    assert not torch.equal(other.y_test, digits.y_test)


def test_load_digits_rejects_tiny_test_size() -> None:
    """A test split smaller than the number of classes is a ConfigError naming the value."""
    with pytest.raises(ConfigError, match=r"test_size.*got 5"):
        data.load_digits(test_size=5)


# ----------------------------------------------------------------------------- IDX loaders


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_load_fashion_mnist_reads_values_from_root(tmp_path: Path, gz: bool) -> None:
    """IDX files in root, gzipped or plain, load with the exact normalised values and labels."""
    arrays = _write_idx_set(tmp_path, gz=gz)
    ds = data.load_fashion_mnist(tmp_path)
    assert ds.name == "fashion-mnist" and ds.num_classes == 10
    assert ds.x_train.shape == (6, 1, 28, 28) and ds.x_test.shape == (4, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    mean, std = (0.2860,), (0.3530,)
    assert ds.mean == mean and ds.std == std
    torch.testing.assert_close(ds.x_train, _expected(arrays[IDX_STEMS[0]][:, None], mean, std))
    torch.testing.assert_close(ds.x_test, _expected(arrays[IDX_STEMS[2]][:, None], mean, std))
    assert ds.y_train.tolist() == arrays[IDX_STEMS[1]].tolist()
    assert ds.y_test.tolist() == arrays[IDX_STEMS[3]].tolist()


def test_load_fashion_mnist_reads_torchvision_layout(tmp_path: Path) -> None:
    """Files in torchvision's root/FashionMNIST/raw/ are found from root."""
    arrays = _write_idx_set(tmp_path / "FashionMNIST" / "raw", gz=True)
    ds = data.load_fashion_mnist(str(tmp_path))
    assert ds.y_train.tolist() == arrays[IDX_STEMS[1]].tolist()


def test_load_mnist_reads_torchvision_layout_with_mnist_stats(tmp_path: Path) -> None:
    """MNIST in root/MNIST/raw/ loads, normalised with mean 0.1307 and std 0.3081."""
    arrays = _write_idx_set(tmp_path / "MNIST" / "raw", gz=False)
    ds = data.load_mnist(tmp_path)
    assert ds.name == "mnist" and ds.mean == (0.1307,) and ds.std == (0.3081,)
    torch.testing.assert_close(
        ds.x_train, _expected(arrays[IDX_STEMS[0]][:, None], (0.1307,), (0.3081,))
    )


def test_load_fashion_mnist_missing_folder_names_folder_and_package(tmp_path: Path) -> None:
    """A folder without the files raises DataError naming it, the files and the apt package."""
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=re.escape(str(missing))) as info:
        data.load_fashion_mnist(missing)
    message = str(info.value)
    assert "dataset-fashion-mnist" in message and "apt-get install" in message
    assert "train-images-idx3-ubyte" in message and "\n" not in message
    assert isinstance(info.value, FileNotFoundError)


def test_load_fashion_mnist_incomplete_folder_raises(tmp_path: Path) -> None:
    """Three of the four files are not enough: DataError, not a KeyError."""
    _write_idx_set(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        data.load_fashion_mnist(tmp_path)


def test_load_mnist_missing_folder_says_never_downloads(tmp_path: Path) -> None:
    """Missing MNIST files raise DataError naming the folder and telling the user to download."""
    with pytest.raises(DataError, match=r"download MNIST into .*relayfl never downloads"):
        data.load_mnist(tmp_path)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_load_fashion_mnist_truncated_file_names_file(tmp_path: Path, gz: bool) -> None:
    """A truncated image file (gzip stream or payload) raises DataError naming that file."""
    _write_idx_set(tmp_path, gz=gz)
    path = tmp_path / (f"{IDX_STEMS[0]}.gz" if gz else IDX_STEMS[0])
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(DataError, match=re.escape(str(path))):
        data.load_fashion_mnist(tmp_path)


def test_load_fashion_mnist_bad_magic_raises(tmp_path: Path) -> None:
    """A labels file with an images magic number is rejected with the magic in the message."""
    _write_idx_set(tmp_path, gz=False)
    path = tmp_path / IDX_STEMS[1]
    raw = bytearray(path.read_bytes())
    raw[3] = 0x03
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="magic number 0x00000803"):
        data.load_fashion_mnist(tmp_path)


def test_load_fashion_mnist_mismatched_counts_raises(tmp_path: Path) -> None:
    """Images and labels of different lengths are a DataError, not a shape error later."""
    _write_idx_set(tmp_path, gz=False)
    (tmp_path / IDX_STEMS[1]).write_bytes(_idx_bytes(np.zeros(5, dtype=np.uint8)))
    with pytest.raises(DataError, match=r"6 images but .* 5 labels"):
        data.load_fashion_mnist(tmp_path)


def test_load_fashion_mnist_limit_takes_seeded_subset(tmp_path: Path) -> None:
    """limit_train/limit_test keep a deterministic subset of the rows, changing with the seed."""
    arrays = _write_idx_set(tmp_path, gz=True, num_train=20, num_test=10)
    full = data.load_fashion_mnist(tmp_path)
    a = data.load_fashion_mnist(tmp_path, limit_train=5, limit_test=3)
    b = data.load_fashion_mnist(tmp_path, limit_train=5, limit_test=3)
    c = data.load_fashion_mnist(tmp_path, limit_train=5, limit_test=3, seed=1)
    assert a.x_train.shape == (5, 1, 28, 28) and a.y_test.shape == (3,)
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    index = np.random.RandomState(0).permutation(20)[:5]
    assert torch.equal(a.x_train, full.x_train[index])
    assert a.y_train.tolist() == arrays[IDX_STEMS[1]][index].tolist()


def test_load_fashion_mnist_limit_above_size_warns(tmp_path: Path) -> None:
    """A limit larger than the split warns and keeps everything."""
    _write_idx_set(tmp_path, gz=True)
    with pytest.warns(UserWarning, match="limit_train=100 exceeds"):
        ds = data.load_fashion_mnist(tmp_path, limit_train=100)
    assert len(ds.x_train) == 6


# ----------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("nested", [True, False], ids=["cifar-10-batches-py", "flat"])
def test_load_cifar10_reads_pickle_batches(tmp_path: Path, nested: bool) -> None:
    """Six pickled batches load as normalised [N, 3, 32, 32] with section 5.1's statistics."""
    folder = tmp_path / "cifar-10-batches-py" if nested else tmp_path
    arrays = _write_cifar(folder)
    ds = data.load_cifar10(tmp_path)
    assert ds.name == "cifar10" and ds.num_classes == 10
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    assert ds.mean == mean and ds.std == std
    torch.testing.assert_close(ds.x_train, _expected(arrays["x_train"], mean, std))
    torch.testing.assert_close(ds.x_test, _expected(arrays["x_test"], mean, std))
    assert ds.y_train.tolist() == arrays["y_train"].tolist()
    assert ds.y_test.dtype == torch.int64 and ds.y_test.tolist() == arrays["y_test"].tolist()


def test_load_cifar10_missing_names_folder_and_files(tmp_path: Path) -> None:
    """A folder without batches raises DataError naming the folder and data_batch_1."""
    with pytest.raises(DataError, match=re.escape(str(tmp_path)) + ".*data_batch_1"):
        data.load_cifar10(tmp_path)


def test_load_cifar10_corrupt_batch_names_file(tmp_path: Path) -> None:
    """A truncated pickle raises DataError naming the batch."""
    _write_cifar(tmp_path)
    path = tmp_path / "data_batch_3"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="data_batch_3"):
        data.load_cifar10(tmp_path)


# ----------------------------------------------------------------------------- dispatch


def test_load_dispatches_kebab_case_names(tmp_path: Path) -> None:
    """load() reaches each loader by its kebab-case name and forwards options."""
    _write_idx_set(tmp_path / "fm", gz=True)
    _write_idx_set(tmp_path / "mn" / "MNIST" / "raw", gz=True)
    _write_cifar(tmp_path / "cf")
    assert data.load("digits", test_size=100).x_test.shape == (100, 1, 8, 8)
    assert data.load("fashion-mnist", root=tmp_path / "fm", limit_train=2).x_train.shape[0] == 2
    assert data.load("mnist", root=tmp_path / "mn").name == "mnist"
    assert data.load("cifar10", root=tmp_path / "cf").name == "cifar10"


def test_load_unknown_name_lists_choices() -> None:
    """An unknown data set name is a ConfigError listing the valid names."""
    with pytest.raises(ConfigError, match=r"'cifar'.*digits, fashion-mnist, mnist, cifar10"):
        data.load("cifar")


def test_load_mnist_without_root_asks_for_root() -> None:
    """MNIST has no default folder, so load() without root says to pass one."""
    with pytest.raises(ConfigError, match="root=FOLDER"):
        data.load("mnist")


# ----------------------------------------------------------------------------- quadratics


@pytest.mark.parametrize("heterogeneity", [0.01, 0.1, 1.0])
def test_random_quadratics_reach_target_heterogeneity(heterogeneity: float) -> None:
    """ζ² at the optimum equals the target to a relative 1e-5 (section 5.5)."""
    q = data.random_quadratics(8, dim=6, heterogeneity=heterogeneity, seed=3)
    assert abs(float(q.zeta2()) - heterogeneity) <= 1e-5 * heterogeneity


def test_random_quadratics_optimum_has_zero_mean_gradient() -> None:
    """At x*, the workers' gradients average to 0 in float64."""
    q = data.random_quadratics(12, dim=8, heterogeneity=0.1, seed=0)
    g = q.grad(q.x_star.expand(12, 8))  # [n, d]
    assert q.A.dtype == torch.float64
    assert float(g.mean(0).abs().max()) < 1e-8


@pytest.mark.parametrize("r0", [10.0, 100.0])
def test_random_quadratics_optimum_at_distance_r0(r0: float) -> None:
    """The optimum sits at distance r0 from 0, where the workers start."""
    q = data.random_quadratics(6, dim=8, heterogeneity=0.1, r0=r0, seed=1)
    assert abs(float(q.x_star.norm()) - r0) < 1e-8 * r0


def test_random_quadratics_deterministic_per_seed() -> None:
    """The same seed gives identical tensors; another seed a different problem."""
    a = data.random_quadratics(4, dim=5, seed=7)
    b = data.random_quadratics(4, dim=5, seed=7)
    c = data.random_quadratics(4, dim=5, seed=8)
    assert torch.equal(a.A, b.A) and torch.equal(a.b, b.b) and torch.equal(a.x_star, b.x_star)
    assert not torch.allclose(a.A, c.A)


def test_random_quadratics_worker_gradients_nonzero_when_heterogeneous() -> None:
    """With ζ² > 0 every worker's noise-free gradient at x* is nonzero; with ζ² = 0 all vanish."""
    het = data.random_quadratics(8, dim=6, heterogeneity=0.1, seed=2)
    hom = data.random_quadratics(8, dim=6, heterogeneity=0.0, seed=2)
    assert bool((het.grad(het.x_star.expand(8, 6)).norm(dim=1) > 1e-3).all())
    assert float(hom.grad(hom.x_star.expand(8, 6)).abs().max()) < 1e-10
    assert abs(float(hom.x_star.norm()) - 10.0) < 1e-8


def test_random_quadratics_singular_values_span_mu_to_l() -> None:
    """Each A_i has singular values linspace(mu, L, d)."""
    q = data.random_quadratics(3, dim=5, mu=0.25, L=2.0, seed=0)
    s = torch.linalg.svdvals(q.A)  # [n, d], descending
    expected = torch.linspace(0.25, 2.0, 5, dtype=torch.float64).flip(0).expand(3, 5)
    torch.testing.assert_close(s, expected)


def test_random_quadratics_loss_matches_gradient_convention() -> None:
    """The gradient of loss() is the mean of the workers' gradients (the ½ convention)."""
    q = data.random_quadratics(5, dim=4, heterogeneity=0.1, seed=4)
    x = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    q.loss(x).backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, q.grad(x.detach().expand(5, 4)).mean(0))


def test_random_quadratics_suboptimality_zero_at_optimum() -> None:
    """suboptimality is 0 when every worker sits at x* and positive at the start x = 0."""
    q = data.random_quadratics(4, dim=5, heterogeneity=0.1, seed=5)
    assert abs(float(q.suboptimality(q.x_star.expand(4, 5)))) < 1e-10
    assert float(q.suboptimality(torch.zeros(4, 5, dtype=torch.float64))) > 1.0


def test_random_quadratics_noise_seeded_with_std_sigma_over_sqrt_d() -> None:
    """Gradient noise is reproducible from a generator and has per-entry std σ/√d."""
    q = data.random_quadratics(64, dim=16, heterogeneity=0.1, noise=2.0, seed=0)
    x = torch.zeros(64, 16, dtype=torch.float64)
    g1 = q.grad(x, torch.Generator().manual_seed(3))
    g2 = q.grad(x, torch.Generator().manual_seed(3))
    clean = data.Quadratics(q.A, q.b, q.x_star).grad(x)
    assert torch.equal(g1, g2)
    assert abs(float((g1 - clean).std()) - 2.0 / 4.0) < 0.05


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"heterogeneity": -1.0}, "heterogeneity"),
        ({"mu": 2.0}, "mu must lie"),
        ({"r0": -1.0}, "r0"),
    ],
    ids=["negative-zeta2", "mu-above-L", "negative-r0"],
)
def test_random_quadratics_rejects_bad_parameters(kwargs: dict[str, float], match: str) -> None:
    """Out-of-range parameters raise ConfigError naming the parameter."""
    with pytest.raises(ConfigError, match=match):
        data.random_quadratics(4, **kwargs)


def test_random_quadratics_single_worker_needs_zero_heterogeneity() -> None:
    """One worker cannot be heterogeneous: ConfigError suggesting more workers."""
    with pytest.raises(ConfigError, match="num_workers >= 2"):
        data.random_quadratics(1, heterogeneity=0.1)
