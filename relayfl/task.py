"""A :class:`Task`: what a simulation needs from the user.

A model factory, a loss, train and test tensors, and the labels to partition. The
built-in datasets are tasks too (:func:`builtin`), so there is one definition per
dataset for the simulator, the batched engine, the Flower clients and the nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relayfl.errors import ConfigError

__all__ = ["DATASETS", "Task", "builtin"]

#: Built-in datasets (kebab-case names, as on the CLI).
DATASETS: tuple[str, ...] = ("digits", "fashion-mnist", "mnist", "cifar10")

#: Default model per dataset.
DEFAULT_MODELS: dict[str, str] = {
    "digits": "small-cnn",
    "fashion-mnist": "small-cnn",
    "mnist": "small-cnn",
    "cifar10": "vgg11",
}


@dataclass(frozen=True, eq=False)
class Task:
    """Everything a run needs from the user's side.

    Parameters
    ----------
    name : str
        Shown in tables and results.
    model_fn : callable returning nn.Module
        Builds the model. Every worker starts from the same initial parameters, drawn
        once from ``torch.manual_seed(seed)`` before calling it.
    x_train, y_train : Tensor[N, ...], Tensor[N]
        Training inputs and integer class labels.
    x_test, y_test : Tensor[T, ...], Tensor[T]
        Held-out data; every worker evaluates on all of it.
    loss_fn : callable (logits, targets) -> scalar Tensor, default cross entropy
        Mean loss over a batch.
    num_classes : int, optional
        Inferred from the labels when omitted.
    labels : numpy array, optional
        Labels the partitioner splits on (default: ``y_train``).
    augment : callable (x: Tensor[B, ...], generator) -> Tensor[B, ...], optional
        Training-time augmentation, applied per worker with its keyed generator.

    Examples
    --------
    >>> task = Task("linear", lambda: nn.Linear(4, 3), torch.randn(90, 4),
    ...             torch.randint(0, 3, (90,)), torch.randn(30, 4), torch.randint(0, 3, (30,)))
    """

    name: str
    model_fn: Callable[[], nn.Module]
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy
    num_classes: int | None = None
    labels: np.ndarray | None = None
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for which in ("x_train", "y_train", "x_test", "y_test"):
            _check_tensor(self.name, which, getattr(self, which))
        if len(self.x_train) != len(self.y_train):
            raise ConfigError(
                f"task {self.name!r}: x_train has {len(self.x_train)} rows but "
                f"y_train has {len(self.y_train)}; pass matching tensors"
            )
        if len(self.x_test) != len(self.y_test):
            raise ConfigError(
                f"task {self.name!r}: x_test has {len(self.x_test)} rows but "
                f"y_test has {len(self.y_test)}; pass matching tensors"
            )
        if len(self.x_train) == 0:
            raise ConfigError(f"task {self.name!r} has no training samples")
        if len(self.x_test) == 0:
            raise ConfigError(
                f"task {self.name!r} has no test samples, so no accuracy can be measured; "
                "pass a held-out x_test, y_test with at least one row"
            )
        if self.num_classes is None:
            classes = int(torch.cat([self.y_train, self.y_test]).max()) + 1
            object.__setattr__(self, "num_classes", classes)

    def check_outputs(self, logits: Tensor) -> None:
        """Raise if the model's ``logits`` [B, C] have fewer than ``num_classes`` columns.

        Raises
        ------
        ConfigError
            Naming the model's output count and the number of classes in the labels.
        """
        assert self.num_classes is not None
        if logits.dim() < 2 or logits.shape[-1] < self.num_classes:
            outputs = logits.shape[-1] if logits.dim() else 1
            raise ConfigError(
                f"task {self.name!r}: the model gives {outputs} outputs per sample (logits "
                f"shape {tuple(logits.shape)}) but the labels have {self.num_classes} "
                f"classes; give the last layer {self.num_classes} outputs"
            )

    @property
    def partition_labels(self) -> np.ndarray:
        """The labels the partitioner splits on."""
        if self.labels is not None:
            return np.asarray(self.labels)
        return self.y_train.detach().cpu().numpy()

    def init_model(self, seed: int) -> nn.Module:
        """The shared initial model ``x0``: ``model_fn()`` under ``torch.manual_seed(seed)``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.model_fn()


def _check_tensor(name: str, which: str, value: object) -> None:
    """One-line errors for inputs that are not tensors and labels that are not class ids."""
    if not isinstance(value, Tensor):
        if which.startswith("y") and np.asarray(value).dtype.kind in "USO":
            fix = (
                "map the classes to ids 0..K-1: classes, ids = np.unique(labels, "
                "return_inverse=True), then pass torch.as_tensor(ids)"
            )
        else:
            fix = f"pass torch.as_tensor({which})" + (".long()" if which[0] == "y" else "")
        raise ConfigError(
            f"task {name!r}: {which} is a {type(value).__name__}, not a torch.Tensor; {fix}"
        )
    if which.startswith("y"):
        if value.dim() != 1:
            raise ConfigError(
                f"task {name!r}: {which} has shape {tuple(value.shape)}; pass one integer "
                f"class id per sample ({which}.reshape(-1), or argmax of one-hot labels)"
            )
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            integral = value.dtype == torch.bool or (
                value.is_floating_point() and bool((value == value.round()).all())
            )
            fix = (
                f"pass {which}.long()"
                if integral
                else "map the classes to ids 0..K-1 and pass a torch.long tensor"
            )
            raise ConfigError(
                f"task {name!r}: {which} has dtype {value.dtype}, but labels are integer "
                f"class ids for cross entropy and accuracy; {fix}"
            )
        if len(value) and int(value.min()) < 0:
            raise ConfigError(
                f"task {name!r}: {which} has a negative label {int(value.min())}; "
                "map the classes to ids 0..K-1"
            )


def _flip_crop(pad: int) -> Callable[[Tensor, torch.Generator], Tensor]:
    """Random crop with zero padding and random horizontal flip (CIFAR, docs/algorithm.md 5.1)."""

    def augment(x: Tensor, gen: torch.Generator) -> Tensor:
        B, _, H, W = x.shape
        dev = gen.device
        flips = torch.rand(B, generator=gen, device=dev) < 0.5
        dx = torch.randint(0, 2 * pad + 1, (B,), generator=gen, device=dev)
        dy = torch.randint(0, 2 * pad + 1, (B,), generator=gen, device=dev)
        padded = F.pad(x, (pad, pad, pad, pad))  # [B, C, H+2p, W+2p]
        rows = dy.to(x.device)[:, None] + torch.arange(H, device=x.device)  # [B, H]
        cols = dx.to(x.device)[:, None] + torch.arange(W, device=x.device)  # [B, W]
        out = padded[
            torch.arange(B, device=x.device)[:, None, None, None],
            torch.arange(x.shape[1], device=x.device)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]  # [B, C, H, W]
        return torch.where(flips.to(x.device)[:, None, None, None], out.flip(-1), out)

    return augment


def builtin(
    name: str,
    *,
    root: str | Path | None = None,
    model: str | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    dropout: float = 0.0,
) -> Task:
    """A built-in dataset as a :class:`Task`.

    Parameters
    ----------
    name : {"digits", "fashion-mnist", "mnist", "cifar10"}
        ``digits`` is scikit-learn's bundled 8x8 digits (no download). The others load
        from ``root`` (Fashion-MNIST defaults to Debian's ``dataset-fashion-mnist``).
    model : str, optional
        ``"small-cnn"``, ``"vgg11"`` or ``"mlp"``; default per dataset.
    limit_train, limit_test : int, optional
        Take a fixed, seeded subset (for CPU-sized runs).
    dropout : float, default 0
        Dropout rate of the small CNN.
    """
    from relayfl import data, models

    if name not in DATASETS:
        raise ConfigError(
            f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}, "
            "or build a relayfl.Task from your own tensors"
        )
    kwargs: dict = {}
    if name != "digits":
        kwargs = {"limit_train": limit_train, "limit_test": limit_test}
    ds = data.load(name, root=root, **kwargs)
    x_train, y_train, x_test, y_test = ds.x_train, ds.y_train, ds.x_test, ds.y_test
    if name == "digits":
        gen = torch.Generator().manual_seed(0)
        if limit_train is not None and limit_train < len(x_train):
            keep = torch.randperm(len(x_train), generator=gen)[:limit_train]
            x_train, y_train = x_train[keep], y_train[keep]
        if limit_test is not None and limit_test < len(x_test):
            keep = torch.randperm(len(x_test), generator=gen)[:limit_test]
            x_test, y_test = x_test[keep], y_test[keep]
    model_name = model or DEFAULT_MODELS[name]
    channels, size = int(x_train.shape[1]), int(x_train.shape[-1])
    num_classes = ds.num_classes

    def model_fn() -> nn.Module:
        if model_name == "small-cnn":
            return models.SmallCNN(channels, num_classes, size, dropout=dropout)
        return models.build(
            model_name, in_channels=channels, num_classes=num_classes, image_size=size
        )

    augment = _flip_crop(4) if name == "cifar10" else None
    return Task(
        name,
        model_fn,
        x_train,
        y_train,
        x_test,
        y_test,
        num_classes=num_classes,
        augment=augment,
        info={"model": model_name, "dataset": name},
    )
