"""Tests for relayfl.models: parameter counts, output shapes, initialisation, no BatchNorm."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from relayfl import models
from relayfl.errors import ConfigError


def _num_params(model: nn.Module) -> int:
    """Total number of parameters."""
    return sum(p.numel() for p in model.parameters())


def _has_norm_layer(model: nn.Module) -> bool:
    """Whether any submodule is a batch/group/layer/instance normalisation."""
    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    return any(isinstance(m, norms) for m in model.modules())


@pytest.fixture(scope="module")
def vgg() -> nn.Module:
    """One VGG-11, built once for the module (it is 37 MiB)."""
    torch.manual_seed(0)
    return models.vgg11()


def test_vgg11_parameter_count_matches_paper(vgg: nn.Module) -> None:
    """VGG-11 without BN has exactly 9,750,922 parameters (section 5.1)."""
    assert _num_params(vgg) == 9_750_922


def test_vgg11_output_shape_cifar_batch(vgg: nn.Module) -> None:
    """A batch of two 3x32x32 images gives [2, 10] logits."""
    vgg.eval()
    with torch.no_grad():
        out = vgg(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and bool(torch.isfinite(out).all())


def test_vgg11_layers_follow_config_a(vgg: nn.Module) -> None:
    """Conv widths are 64-128-256-256-512-512-512-512 with 5 pools; FCs are 512-512-10."""
    convs = [m for m in vgg.modules() if isinstance(m, nn.Conv2d)]
    pools = [m for m in vgg.modules() if isinstance(m, nn.MaxPool2d)]
    linears = [m for m in vgg.modules() if isinstance(m, nn.Linear)]
    dropouts = [m for m in vgg.modules() if isinstance(m, nn.Dropout)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert len(pools) == 5 and len(dropouts) == 2
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 512), (512, 512), (512, 10)]


def test_vgg11_conv_init_scaled_normal_zero_bias(vgg: nn.Module) -> None:
    """Conv weights have std √(2/(9·C_out)) and zero bias."""
    for conv in (m for m in vgg.modules() if isinstance(m, nn.Conv2d)):
        weight, bias = conv.weight.detach(), conv.bias.detach()
        expected = math.sqrt(2.0 / (9 * conv.out_channels))
        assert abs(float(weight.std()) / expected - 1.0) < 0.1
        assert abs(float(weight.mean())) < 0.1 * expected
        assert float(bias.abs().max()) == 0.0


def test_vgg11_has_no_normalisation(vgg: nn.Module) -> None:
    """VGG-11 carries no BatchNorm (nor any other normalisation layer) and no buffers."""
    assert not _has_norm_layer(vgg)
    assert list(vgg.buffers()) == []


@pytest.mark.parametrize(
    ("image_size", "expected"), [(8, 43_050), (28, 411_690)], ids=["digits-8x8", "mnist-28x28"]
)
def test_small_cnn_parameter_count_by_image_size(image_size: int, expected: int) -> None:
    """SmallCNN has 43,050 parameters on 8x8 digits and 411,690 on 28x28 images."""
    assert _num_params(models.SmallCNN(1, 10, image_size)) == expected


@pytest.mark.parametrize(
    ("shape", "num_classes"),
    [((5, 1, 8, 8), 10), ((3, 1, 28, 28), 10), ((2, 3, 32, 32), 7), ((2, 1, 9, 9), 4)],
    ids=["digits", "mnist", "cifar", "odd-size"],
)
def test_small_cnn_output_shape_per_input(shape: tuple[int, ...], num_classes: int) -> None:
    """SmallCNN maps [B, C, H, W] to [B, num_classes] at 8x8, 28x28, 32x32 and odd sizes."""
    model = models.SmallCNN(shape[1], num_classes, shape[2], dropout=0.1)
    assert model(torch.randn(*shape)).shape == (shape[0], num_classes)
    assert not _has_norm_layer(model)


def test_small_cnn_dropout_only_when_requested() -> None:
    """dropout=0 adds no Dropout module; dropout>0 adds exactly one with that probability."""
    plain = models.SmallCNN()
    dropped = models.SmallCNN(dropout=0.25)
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    found = [m for m in dropped.modules() if isinstance(m, nn.Dropout)]
    assert len(found) == 1 and found[0].p == 0.25
    assert _num_params(plain) == _num_params(dropped)


def test_small_cnn_rejects_bad_dropout() -> None:
    """A dropout outside [0, 1) is a ConfigError naming the value."""
    with pytest.raises(ConfigError, match=r"dropout must lie in \[0, 1\), got 1\.5"):
        models.SmallCNN(dropout=1.5)


def test_mlp_parameter_count_and_shape() -> None:
    """MLP(64, 10) has 64·64+64 + 64·10+10 parameters and flattens image batches."""
    model = models.MLP(64, 10)
    assert _num_params(model) == 64 * 64 + 64 + 64 * 10 + 10
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    deep = models.MLP(784, 10, hidden=(32, 16))
    assert deep(torch.randn(2, 784)).shape == (2, 10)
    assert _num_params(models.MLP(5, 3, hidden=())) == 5 * 3 + 3


@pytest.mark.parametrize(
    ("name", "in_channels", "image_size", "expected_type"),
    [
        ("small-cnn", 1, 8, models.SmallCNN),
        ("small-cnn", 1, 28, models.SmallCNN),
        ("mlp", 1, 8, models.MLP),
        ("mlp", 3, 32, models.MLP),
    ],
    ids=["small-cnn-8", "small-cnn-28", "mlp-8", "mlp-32"],
)
def test_build_returns_model_sized_for_data(
    name: str, in_channels: int, image_size: int, expected_type: type
) -> None:
    """build() picks the model by name and sizes its input layer from the data."""
    model = models.build(name, in_channels=in_channels, num_classes=10, image_size=image_size)
    assert isinstance(model, expected_type)
    out = model(torch.randn(2, in_channels, image_size, image_size))
    assert out.shape == (2, 10) and not _has_norm_layer(model)


def test_build_vgg11_has_paper_parameter_count() -> None:
    """build('vgg11') on CIFAR-sized data is the 9,750,922-parameter VGG-11."""
    model = models.build("vgg11", in_channels=3, num_classes=10, image_size=32)
    assert _num_params(model) == 9_750_922


def test_build_vgg11_rejects_non_cifar_size() -> None:
    """vgg11 needs 32x32 images; other sizes are a ConfigError suggesting small-cnn."""
    with pytest.raises(ConfigError, match=r"image_size=28.*small-cnn"):
        models.build("vgg11", in_channels=1, num_classes=10, image_size=28)


def test_build_unknown_name_lists_choices() -> None:
    """An unknown model name is a ConfigError listing the valid names."""
    with pytest.raises(ConfigError, match=r"'resnet20'.*small-cnn, vgg11, mlp"):
        models.build("resnet20", in_channels=3, num_classes=10, image_size=32)
