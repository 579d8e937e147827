"""Models: a small CNN for digits and MNIST-sized images, VGG-11 for CIFAR-10, and an MLP.

No model here has a normalisation layer: BatchNorm's running statistics are state outside
the parameters, which decentralized averaging would not mix (docs/algorithm.md section 5.1 uses
VGG-11 *without* batch norm for the same reason). Every model is a plain ``nn.Module`` whose
parameters ``torch.func.functional_call`` can swap.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from torch import Tensor, nn

from relayfl.errors import ConfigError

__all__ = ["MLP", "MODELS", "SmallCNN", "build", "vgg11"]

#: Names :func:`build` accepts (kebab-case, as on the CLI).
MODELS: tuple[str, ...] = ("small-cnn", "vgg11", "mlp")

#: VGG configuration "A": output channels of each 3x3 conv, "M" for a 2x2 max-pool.
_VGG11_CONFIG = "64 M 128 M 256 256 M 512 512 M 512 512 M"


class SmallCNN(nn.Module):
    """Two 3x3 convolutions, one max-pool and one hidden fully connected layer.

    ``conv(C->width) -> ReLU -> conv(width->width) -> ReLU -> maxpool 2 -> flatten ->
    FC(hidden) -> ReLU -> [Dropout] -> FC(num_classes)``. Both convolutions keep the spatial
    size (padding 1).

    Parameters
    ----------
    in_channels : int (default: 1)
        Image channels C.
    num_classes : int (default: 10)
        Number of outputs (logits).
    image_size : int (default: 8)
        Height and width H of the (square) input images.
    width : int (default: 32)
        Channels of both convolutions.
    hidden : int (default: 64)
        Units of the hidden fully connected layer.
    dropout : float (default: 0.0)
        Dropout probability before the last layer; 0 adds no dropout module.

    Raises
    ------
    ConfigError
        If a size is below 1 (``image_size`` below 2) or ``dropout`` is outside [0, 1).

    Notes
    -----
    With the defaults it has 43,050 parameters on 8x8 digits and 411,690 on 28x28 images.

    Examples
    --------
    >>> import torch
    >>> model = SmallCNN(1, 10, 8)
    >>> model(torch.zeros(4, 1, 8, 8)).shape  # [B, C, H, W] -> [B, num_classes]
    torch.Size([4, 10])
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 8,
        *,
        width: int = 32,
        hidden: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if min(in_channels, num_classes, width, hidden) < 1 or image_size < 2:
            raise ConfigError(
                f"SmallCNN needs in_channels, num_classes, width, hidden >= 1 and image_size "
                f">= 2, got {in_channels}, {num_classes}, {width}, {hidden} and {image_size}"
            )
        if not 0 <= dropout < 1:
            raise ConfigError(f"dropout must lie in [0, 1), got {dropout}; use 0 to disable it")
        pooled = image_size // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        head: list[nn.Module] = [
            nn.Flatten(),
            nn.Linear(width * pooled * pooled, hidden),
            nn.ReLU(),
        ]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(hidden, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch: Tensor[B, C, H, W] -> Tensor[B, num_classes]."""
        return self.classifier(self.features(x))


class _VGG(nn.Module):
    """VGG body: a conv stack, then a classifier on the flattened 512 features."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch: Tensor[B, 3, 32, 32] -> Tensor[B, num_classes]."""
        x = self.features(x)  # [B, 512, 1, 1]
        return self.classifier(x.flatten(1))  # [B, num_classes]


def vgg11(num_classes: int = 10, *, in_channels: int = 3) -> nn.Module:
    """VGG-11 (configuration "A") without batch norm, as in docs/algorithm.md section 5.1.

    Parameters
    ----------
    num_classes : int (default: 10)
        Number of outputs (logits).
    in_channels : int (default: 3)
        Image channels; inputs must be 32x32.

    Returns
    -------
    nn.Module
        Convs 64-M-128-M-256-256-M-512-512-M-512-512-M (3x3, padding 1, ReLU, 2x2 max-pool),
        then Dropout -> FC 512->512 -> ReLU -> Dropout -> FC 512->512 -> ReLU ->
        FC 512->num_classes. 9,750,922 parameters for 10 classes.

    Notes
    -----
    Conv weights are drawn from ``N(0, √(2/(9·C_out)))`` with zero bias; linear layers keep
    PyTorch's default initialisation. Dropout has probability 0.5.

    Examples
    --------
    >>> sum(p.numel() for p in vgg11().parameters())
    9750922
    """
    if num_classes < 1 or in_channels < 1:
        raise ConfigError(
            f"vgg11 needs num_classes >= 1 and in_channels >= 1, got {num_classes} "
            f"and {in_channels}"
        )
    layers: list[nn.Module] = []
    channels = in_channels
    for item in _VGG11_CONFIG.split():
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out_channels = int(item)
        conv = nn.Conv2d(channels, out_channels, kernel_size=3, padding=1)
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(2.0 / (9 * out_channels)))
        nn.init.zeros_(conv.bias)
        layers += [conv, nn.ReLU(inplace=True)]
        channels = out_channels
    classifier = nn.Sequential(
        nn.Dropout(),
        nn.Linear(512, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(),
        nn.Linear(512, 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, num_classes),
    )
    return _VGG(nn.Sequential(*layers), classifier)


class MLP(nn.Module):
    """A fully connected ReLU network on flattened inputs.

    Parameters
    ----------
    in_features : int
        Input size after flattening, e.g. ``C * H * W``.
    num_classes : int
        Number of outputs (logits).
    hidden : Sequence of int (default: (64,))
        Units of each hidden layer; empty for a linear model.

    Raises
    ------
    ConfigError
        If a size is below 1.

    Examples
    --------
    >>> import torch
    >>> MLP(64, 10)(torch.zeros(4, 1, 8, 8)).shape  # [B, 1, 8, 8] -> [B, 10]
    torch.Size([4, 10])
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (64,)) -> None:
        super().__init__()
        sizes = [in_features, *hidden, num_classes]
        if min(sizes) < 1:
            raise ConfigError(
                f"MLP layer sizes must all be >= 1, got {sizes} (in_features, *hidden, num_classes)"
            )
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in itertools.pairwise(sizes[:-1]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-2], sizes[-1]))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch: Tensor[B, ...] -> Tensor[B, num_classes]."""
        return self.layers(x)


def build(name: str, *, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Build a model by its kebab-case name, sized for the data.

    Parameters
    ----------
    name : str
        One of :data:`MODELS`: ``"small-cnn"``, ``"vgg11"`` or ``"mlp"``.
    in_channels : int
        Image channels C.
    num_classes : int
        Number of outputs.
    image_size : int
        Height and width H of the square images; ``"vgg11"`` needs 32.

    Returns
    -------
    nn.Module
        A fresh model with default options, initialised from torch's global RNG.

    Raises
    ------
    ConfigError
        If ``name`` is unknown or the model cannot take images of this size.

    Examples
    --------
    >>> import torch
    >>> build("small-cnn", in_channels=1, num_classes=10, image_size=8)(
    ...     torch.zeros(2, 1, 8, 8)
    ... ).shape
    torch.Size([2, 10])
    """
    if name == "small-cnn":
        return SmallCNN(in_channels, num_classes, image_size)
    if name == "vgg11":
        if image_size != 32:
            raise ConfigError(
                f"vgg11 takes 32x32 images (five 2x2 pools down to 1x1), got image_size="
                f"{image_size}; use model 'small-cnn' or 'mlp' for this data set"
            )
        return vgg11(num_classes, in_channels=in_channels)
    if name == "mlp":
        return MLP(in_channels * image_size * image_size, num_classes)
    raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
