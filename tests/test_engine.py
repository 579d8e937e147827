"""Engines: the grouped layout and vmap equal the per-client loop; fallbacks are automatic."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from relayfl import models
from relayfl.engine import BatchedEngine, FunctionalModel, LoopEngine, VmapEngine, make_engine
from relayfl.grouped import GroupedForward, Unsupported


def _masks(fm: FunctionalModel, xb: torch.Tensor, n: int) -> dict[str, torch.Tensor] | None:
    shapes = fm.dropout_shapes(xb[0])
    if not shapes:
        return None
    per = [fm.dropout_masks(shapes, torch.Generator().manual_seed(i), "cpu") for i in range(n)]
    return {k: torch.stack([m[k] for m in per]) for k in shapes}


class _Residual(nn.Module):
    """Functional ops, a residual add, x.view(x.size(0), -1) and pooling by function."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = h + torch.relu(self.conv2(h))
        h = F.max_pool2d(h, 2)
        return self.fc(self.drop(h.view(h.size(0), -1)))


MODELS = {
    "small-cnn-dropout": (lambda: models.SmallCNN(1, 10, 8, dropout=0.3), (1, 8, 8)),
    "residual-functional": (_Residual, (2, 6, 6)),
    "mlp": (lambda: models.MLP(12, 3, hidden=(16, 8)), (12,)),
    "vgg11": (lambda: models.vgg11(), (3, 32, 32)),
}


@pytest.mark.parametrize(("make", "shape"), MODELS.values(), ids=MODELS.keys())
def test_grouped_and_vmap_gradients_equal_the_loop(make, shape: tuple[int, ...]) -> None:
    """Same per-worker gradients, losses and test accuracies from all three engines."""
    torch.manual_seed(0)
    fm = FunctionalModel(make(), F.cross_entropy)
    n, B = 3, 2 if shape == (3, 32, 32) else 5
    x = fm.x0.unsqueeze(0).repeat(n, 1) + 0.01 * torch.randn(n, fm.numel)  # distinct models
    xb, yb = torch.randn(n, B, *shape), torch.randint(0, 3, (n, B))
    masks = _masks(fm, xb, n)
    ref_g, ref_l = LoopEngine(fm).grads(x, xb, yb, masks)
    for engine in (BatchedEngine(fm), VmapEngine(fm)):
        g, loss = engine.grads(x, xb, yb, masks)
        torch.testing.assert_close(g, ref_g, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(loss, ref_l, rtol=1e-5, atol=1e-6)
        acc, _ = engine.evaluate(x, xb[0], yb[0])
        assert torch.equal(acc, LoopEngine(fm).evaluate(x, xb[0], yb[0])[0])


def test_unsupported_layer_falls_back_to_vmap_then_loop() -> None:
    """GroupNorm is outside the grouped layout: 'batched' and 'auto' fall back to vmap."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(16, 2))
    with pytest.raises(Unsupported, match="GroupNorm"):
        GroupedForward(model)
    fm = FunctionalModel(model, F.cross_entropy)
    sample = torch.randn(4, 1, 4, 4)
    assert make_engine(fm, "batched", sample).name == "vmap"
    assert make_engine(fm, "auto", sample).name == "vmap"
    assert make_engine(fm, "loop", sample).name == "loop"
    assert (
        make_engine(
            FunctionalModel(models.SmallCNN(), F.cross_entropy), "auto", torch.randn(4, 1, 8, 8)
        ).name
        == "batched"
    )


def test_bf16_autocast_keeps_parameters_and_gradients_fp32() -> None:
    """bf16 autocast changes the compute, not the stored dtype; values stay close."""
    fm = FunctionalModel(models.SmallCNN(1, 10, 8), F.cross_entropy)
    x = fm.x0.unsqueeze(0).repeat(2, 1)
    xb, yb = torch.randn(2, 8, 1, 8, 8), torch.randint(0, 10, (2, 8))
    g32, _ = BatchedEngine(fm).grads(x, xb, yb, None)
    g16, loss = BatchedEngine(fm, autocast=torch.bfloat16, channels_last=True).grads(
        x, xb, yb, None
    )
    assert g16.dtype == torch.float32 and loss.dtype == torch.float32
    assert torch.isfinite(g16).all()
    cos = F.cosine_similarity(g16.flatten(), g32.flatten(), dim=0)
    assert cos > 0.99  # bf16 rounding only


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batched_engine_on_cuda_equals_loop() -> None:
    """On a GPU the grouped layout gives the loop's gradients (tf32 off)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    fm = FunctionalModel(models.SmallCNN(3, 10, 32, dropout=0.2), F.cross_entropy).to("cuda")
    n, B = 4, 8
    x = fm.x0.unsqueeze(0).repeat(n, 1)
    xb = torch.randn(n, B, 3, 32, 32, device="cuda")
    yb = torch.randint(0, 10, (n, B), device="cuda")
    ref, _ = LoopEngine(fm).grads(x, xb, yb, None)
    got, _ = BatchedEngine(fm).grads(x, xb, yb, None)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
