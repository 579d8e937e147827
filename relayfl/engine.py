"""Execution engines: gradients and evaluation for all workers' models at once.

All workers' parameters live in one flat ``Tensor[n, d]`` (one row per worker, the
relayed vector). A :class:`FunctionalModel` turns the user's ``nn.Module`` into a pure
function of one row, in the style of ``torch.func``. Three engines compute with it:

* :class:`LoopEngine` calls it worker after worker (the reference, and the fallback);
* :class:`VmapEngine` runs one ``torch.func.vmap`` over the worker dimension (any model);
* :class:`BatchedEngine` runs all workers as one network with workers as channel groups
  (:mod:`relayfl.grouped`), the fastest layout for the models it covers.

Randomness (dropout masks) is an explicit input drawn from each worker's keyed
generator (:mod:`relayfl.rng`), so both engines give the same models.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from relayfl.errors import ConfigError
from relayfl.grouped import GroupedForward
from relayfl.relay import pack

__all__ = [
    "BatchedEngine",
    "Engine",
    "FunctionalModel",
    "LoopEngine",
    "VmapEngine",
    "make_engine",
]

EngineName = Literal["auto", "batched", "vmap", "loop"]


class _KeyedDropout(nn.Module):
    """Dropout whose mask is set from outside (drawn from a keyed generator).

    ``mask`` is ``None`` in evaluation (identity); in training it is ``keep / (1 - p)``.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.mask: Tensor | None = None
        self.record: list | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.record is not None:
            self.record.append(tuple(x.shape))
        return x if self.mask is None else x * self.mask


class FunctionalModel:
    """A model as a pure function of its flat parameter vector.

    Parameters
    ----------
    model : nn.Module
        Template; deep-copied, its dropout layers replaced by keyed ones.
    loss_fn : callable (logits, y) -> scalar Tensor

    Raises
    ------
    ConfigError
        For BatchNorm with running statistics (state the relay cannot average per step;
        use GroupNorm, or BatchNorm with ``track_running_stats=False``).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        model = copy.deepcopy(model)
        for name, mod in model.named_modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats:
                raise ConfigError(
                    f"module {name!r} is {type(mod).__name__} with running statistics, which "
                    "the simulator does not relay; use nn.GroupNorm (as the paper's "
                    "ResNet-EvoNorm does) or BatchNorm with track_running_stats=False"
                )
        self.dropout_names: list[str] = []
        self._swap_dropout(model, "")
        self.model = model
        named = [(k, p.detach()) for k, p in model.named_parameters()]
        x0, self.layout = pack(named)
        self.x0: Tensor = x0  # [d]
        self.sizes = [math.prod(s) for s in self.layout.shapes]
        frozen = [not p.requires_grad for _, p in model.named_parameters()]
        self.frozen: Tensor | None = (  # [d] bool: requires_grad=False entries, or None
            torch.repeat_interleave(torch.tensor(frozen), torch.tensor(self.sizes))
            if any(frozen)
            else None
        )
        self.buffers = {k: b.detach() for k, b in model.named_buffers()}
        self.loss_fn = loss_fn
        self._drop = {n: m for n, m in model.named_modules() if isinstance(m, _KeyedDropout)}

    def _swap_dropout(self, module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if isinstance(child, nn.Dropout | nn.Dropout1d | nn.Dropout2d | nn.AlphaDropout):
                if type(child) is not nn.Dropout:
                    raise ConfigError(
                        f"module {full!r} is {type(child).__name__}; only "
                        "nn.Dropout is supported, replace it"
                    )
                setattr(module, name, _KeyedDropout(child.p))
                self.dropout_names.append(full)
            else:
                self._swap_dropout(child, full + ".")

    @property
    def numel(self) -> int:
        return self.layout.numel

    def params(self, x: Tensor) -> dict[str, Tensor]:
        """Named parameter views of one flat row ``x`` [d] (a split, so backward is one cat)."""
        parts = torch.split(x, self.sizes)
        return {
            k: p.view(s)
            for k, p, s in zip(self.layout.names, parts, self.layout.shapes, strict=True)
        }

    def to(self, device: torch.device | str) -> FunctionalModel:
        self.model.to(device)
        self.buffers = {k: b.to(device) for k, b in self.buffers.items()}
        self.x0 = self.x0.to(device)
        if self.frozen is not None:
            self.frozen = self.frozen.to(device)
        return self

    def freeze(self, x: Tensor) -> Tensor:
        """``x`` [n, d] or [d] with its ``requires_grad=False`` entries reset to ``x0``.

        Called after every optimizer step and every mixing step, so frozen parameters
        are not stepped, not weight-decayed and not averaged: they keep their initial
        value bit for bit on every worker, as ``torch.optim`` leaves them.
        """
        if self.frozen is None:
            return x
        return torch.where(self.frozen, self.x0, x)

    def logits(self, x: Tensor, inputs: Tensor, masks: dict[str, Tensor] | None = None) -> Tensor:
        """Forward pass of one worker's model ``x`` [d] on ``inputs`` [B, ...]."""
        for name, mod in self._drop.items():
            mod.mask = None if masks is None else masks[name]
        try:
            return functional_call(self.model, (self.params(x), self.buffers), (inputs,))
        finally:
            for mod in self._drop.values():
                mod.mask = None

    def loss(
        self, x: Tensor, inputs: Tensor, targets: Tensor, masks: dict[str, Tensor] | None = None
    ) -> Tensor:
        return self.loss_fn(self.logits(x, inputs, masks), targets)

    def dropout_shapes(self, inputs: Tensor) -> dict[str, tuple[int, ...]]:
        """Input shape of each dropout layer for a batch ``inputs`` [B, ...]."""
        if not self._drop:
            return {}
        for mod in self._drop.values():
            mod.record = []
        try:
            with torch.no_grad():
                self.logits(self.x0, inputs)
            return {n: m.record[0] for n, m in self._drop.items()}
        finally:
            for mod in self._drop.values():
                mod.record = None

    def dropout_masks(
        self, shapes: dict[str, tuple[int, ...]], gen: torch.Generator, device: torch.device | str
    ) -> dict[str, Tensor]:
        """One worker's dropout masks for one step, from its keyed generator."""
        masks = {}
        for name in self.dropout_names:
            p = self._drop[name].p
            keep = torch.rand(shapes[name], generator=gen, device=gen.device) >= p
            masks[name] = keep.to(device=device, dtype=self.x0.dtype) / (1.0 - p)
        return masks


class Engine:
    """Gradients and evaluation for stacked models ``x`` [n, d]; see the subclasses.

    Parameters
    ----------
    fm : FunctionalModel
    autocast : torch.dtype, optional
        Mixed precision for the forward/backward (e.g. ``torch.bfloat16``); parameters,
        optimizer state and relay sums stay in their own (fp32) dtype.
    """

    name = "engine"

    def __init__(self, fm: FunctionalModel, *, autocast: torch.dtype | None = None) -> None:
        self.fm = fm
        self.autocast = autocast

    def _amp(self, device: torch.device) -> torch.autocast:
        return torch.autocast(
            device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None
        )

    def grads(
        self, x: Tensor, inputs: Tensor, targets: Tensor, masks: dict[str, Tensor] | None
    ) -> tuple[Tensor, Tensor]:
        """Per-worker gradients and losses.

        Parameters
        ----------
        x : Tensor[n, d]
        inputs, targets : Tensor[n, B, ...], Tensor[n, B]
            Each worker's batch.
        masks : dict of Tensor[n, B, ...], optional
            Each worker's dropout masks.

        Returns
        -------
        g, loss : Tensor[n, d], Tensor[n]
        """
        raise NotImplementedError

    def evaluate(
        self, x: Tensor, inputs: Tensor, targets: Tensor, *, chunk: int = 1024
    ) -> tuple[Tensor, Tensor]:
        """Accuracy and mean loss of every worker's model on one shared test set.

        Returns
        -------
        accuracy, loss : Tensor[n], Tensor[n]
        """
        n = x.shape[0]
        self.fm.model.eval()  # as model.eval(): dropout off, self.training False
        correct = torch.zeros(n, device=x.device)
        total_loss = torch.zeros(n, device=x.device, dtype=torch.float64)
        with torch.no_grad():
            for start in range(0, len(inputs), chunk):
                xb, yb = inputs[start : start + chunk], targets[start : start + chunk]
                logits = self._logits_all(x, xb)  # [n, b, classes]
                correct += (logits.argmax(-1) == yb).sum(-1)
                losses = torch.stack([self.fm.loss_fn(lg, yb) for lg in logits])  # [n]
                total_loss += losses.double() * len(yb)
        self.fm.model.train()
        return correct / len(inputs), (total_loss / len(inputs)).float()

    def _logits_all(self, x: Tensor, xb: Tensor) -> Tensor:
        raise NotImplementedError


class LoopEngine(Engine):
    """One worker after another: the reference engine (and the fallback)."""

    name = "loop"

    def __init__(self, fm: FunctionalModel, *, autocast: torch.dtype | None = None) -> None:
        super().__init__(fm, autocast=autocast)
        self._g = grad_and_value(fm.loss)

    def grads(
        self, x: Tensor, inputs: Tensor, targets: Tensor, masks: dict[str, Tensor] | None
    ) -> tuple[Tensor, Tensor]:
        self.fm.model.train()  # as model.train(): self.training True in forward
        gs, losses = [], []
        for i in range(x.shape[0]):
            mi = None if masks is None else {k: v[i] for k, v in masks.items()}
            with self._amp(x.device):
                g, loss = self._g(x[i], inputs[i], targets[i], mi)
            gs.append(g)
            losses.append(loss.detach())
        return torch.stack(gs), torch.stack(losses)  # [n, d], [n]

    def _logits_all(self, x: Tensor, xb: Tensor) -> Tensor:
        with self._amp(x.device):
            return torch.stack([self.fm.logits(xi, xb) for xi in x]).float()


class VmapEngine(Engine):
    """All workers in one ``torch.func.vmap`` over the worker dimension (any model)."""

    name = "vmap"

    def __init__(self, fm: FunctionalModel, *, autocast: torch.dtype | None = None) -> None:
        super().__init__(fm, autocast=autocast)
        self._g = vmap(grad_and_value(fm.loss), in_dims=(0, 0, 0, 0))
        self._g_nomask = vmap(grad_and_value(fm.loss), in_dims=(0, 0, 0, None))
        self._fwd = vmap(fm.logits, in_dims=(0, None))

    def grads(
        self, x: Tensor, inputs: Tensor, targets: Tensor, masks: dict[str, Tensor] | None
    ) -> tuple[Tensor, Tensor]:
        self.fm.model.train()  # as model.train(): self.training True in forward
        with self._amp(x.device):
            if masks:
                g, loss = self._g(x, inputs, targets, masks)
            else:
                g, loss = self._g_nomask(x, inputs, targets, None)
        return g, loss.detach()

    def _logits_all(self, x: Tensor, xb: Tensor) -> Tensor:
        with self._amp(x.device):
            return self._fwd(x, xb).float()


class BatchedEngine(Engine):
    """All workers as one network in the grouped layout (:mod:`relayfl.grouped`).

    Convolutions become one grouped convolution over ``n`` channel groups, linear layers
    one batched matmul; the loss is vmapped over workers and one backward pass gives
    every worker's gradient.

    Raises
    ------
    relayfl.grouped.Unsupported
        For models outside the grouped layout (use :class:`VmapEngine`).
    """

    name = "batched"

    def __init__(
        self,
        fm: FunctionalModel,
        *,
        autocast: torch.dtype | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__(fm, autocast=autocast)
        self.forward = GroupedForward(fm.model, channels_last=channels_last)
        self._loss = vmap(fm.loss_fn)

    def _params(self, x: Tensor) -> dict[str, Tensor]:
        n = x.shape[0]
        parts = torch.split(x, self.fm.sizes, dim=1)  # views [n, numel_k]
        return {
            k: p.view(n, *s)
            for k, p, s in zip(self.fm.layout.names, parts, self.fm.layout.shapes, strict=True)
        }

    def grads(
        self, x: Tensor, inputs: Tensor, targets: Tensor, masks: dict[str, Tensor] | None
    ) -> tuple[Tensor, Tensor]:
        self.fm.model.train()  # as model.train(): self.training True in forward
        x = x.detach().requires_grad_(True)
        with torch.enable_grad(), self._amp(x.device):
            logits = self.forward(self._params(x), inputs, masks or None)  # [n, B, classes]
            losses = self._loss(logits.float(), targets)  # [n]
        (g,) = torch.autograd.grad(losses.sum(), x)  # [n, d]
        return g, losses.detach()

    def _logits_all(self, x: Tensor, xb: Tensor) -> Tensor:
        with self._amp(x.device):
            out = self.forward(self._params(x), xb.unsqueeze(0).expand(len(x), *xb.shape))
        return out.float()


def make_engine(
    fm: FunctionalModel,
    name: EngineName,
    sample_inputs: Tensor,
    *,
    autocast: torch.dtype | None = None,
    channels_last: bool = False,
) -> Engine:
    """Pick an engine.

    ``"batched"``: the grouped layout, or ``vmap`` for models it does not cover;
    ``"vmap"``: ``torch.func.vmap`` over workers; ``"loop"``: one worker after another;
    ``"auto"``: the first of grouped, vmap and loop that runs a trial step on the model.
    """
    if name not in ("auto", "batched", "vmap", "loop"):
        raise ConfigError(f"unknown engine {name!r}; use auto, batched, vmap or loop")
    if name == "loop":
        return LoopEngine(fm, autocast=autocast)
    candidates: list[Callable[[], Engine]] = []
    if name in ("auto", "batched"):
        candidates.append(lambda: BatchedEngine(fm, autocast=autocast, channels_last=channels_last))
    candidates.append(lambda: VmapEngine(fm, autocast=autocast))
    if name == "auto":
        candidates.append(lambda: LoopEngine(fm, autocast=autocast))
    for make in candidates:
        try:
            engine = make()
            if name == "auto" or make is not candidates[-1]:
                _trial(engine, fm, sample_inputs)
            return engine
        except Exception:
            continue
    return LoopEngine(fm, autocast=autocast)


def _trial(engine: Engine, fm: FunctionalModel, sample_inputs: Tensor) -> None:
    """One gradient and one evaluation on two copies of a sample batch."""
    x = fm.x0.unsqueeze(0).expand(2, -1).contiguous()
    xb = sample_inputs.unsqueeze(0).expand(2, *sample_inputs.shape)
    with torch.no_grad():
        engine._logits_all(x, sample_inputs)
    yb = torch.zeros(2, len(sample_inputs), dtype=torch.long, device=xb.device)
    masks = fm.dropout_masks(fm.dropout_shapes(sample_inputs), torch.Generator(), x.device)
    stacked = {k: v.unsqueeze(0).expand(2, *v.shape) for k, v in masks.items()} or None
    engine.grads(x, xb, yb, stacked)
