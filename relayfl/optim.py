"""Functional optimizers on stacked flat parameters, and the learning-rate schedule.

Every tensor is ``Tensor[n, d]``: one row per worker. The updates are elementwise, so
one call serves all workers at once (and a single worker, ``n = 1``, in a node).
Momentum buffers are local state and are never communicated (docs/algorithm.md 1.5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from relayfl.errors import ConfigError

__all__ = [
    "SGD",
    "WARMUP_EPOCHS",
    "WARMUP_FRACTION",
    "Adam",
    "QuasiGlobalSGD",
    "learning_rate",
    "make_optimizer",
    "milestone_steps",
    "schedule_notes",
    "warmup_length",
]

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")


@dataclass
class SGD:
    """SGD with coupled weight decay and (Nesterov) momentum (docs/algorithm.md 1.5).

    ``g <- g + wd * x``; ``b <- mu * b + g``; ``x <- x - lr * (g + mu * b)`` (Nesterov)
    or ``x - lr * b``. Buffers start at zero, as PyTorch's functional SGD.
    """

    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = True
    buf: Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.momentum < 0 or self.weight_decay < 0:
            raise ConfigError(
                f"momentum and weight decay must be >= 0, got "
                f"{self.momentum} and {self.weight_decay}"
            )

    def update(self, x: Tensor, g: Tensor, lr: float) -> Tensor:
        """The step ``u = -lr * (g + mu * b)`` for params ``x`` and gradients ``g`` [n, d].

        Advances the momentum buffer; leaves ``x`` unchanged.
        """
        if self.weight_decay:
            g = g.add(x, alpha=self.weight_decay)  # [n, d]
        if self.momentum:
            if self.buf is None:
                self.buf = torch.zeros_like(g)
            self.buf.mul_(self.momentum).add_(g)
            g = g.add(self.buf, alpha=self.momentum) if self.nesterov else self.buf
        return g * (-lr)

    def after_round(self, x_start: Tensor, x_end: Tensor) -> None:
        """Hook called after each communication round; plain SGD keeps no round state."""

    def state_dict(self) -> dict[str, Tensor | None]:
        return {"buf": self.buf}

    def load_state_dict(self, state: dict[str, Tensor | None]) -> None:
        self.buf = state["buf"]


@dataclass
class Adam:
    """Adam with bias correction and coupled weight decay (docs/algorithm.md 1.5)."""

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    exp_avg: Tensor | None = field(default=None, repr=False)
    exp_avg_sq: Tensor | None = field(default=None, repr=False)
    t: int = 0

    def update(self, x: Tensor, g: Tensor, lr: float) -> Tensor:
        if self.weight_decay:
            g = g.add(x, alpha=self.weight_decay)
        if self.exp_avg is None:
            self.exp_avg, self.exp_avg_sq = torch.zeros_like(g), torch.zeros_like(g)
        b1, b2 = self.betas
        self.t += 1
        self.exp_avg.lerp_(g, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (self.exp_avg_sq / (1 - b2**self.t)).sqrt_().add_(self.eps)
        return self.exp_avg / denom * (-lr / (1 - b1**self.t))

    def after_round(self, x_start: Tensor, x_end: Tensor) -> None:
        """Hook called after each communication round; Adam keeps no round state."""

    def state_dict(self) -> dict[str, Tensor | int | None]:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "t": self.t}

    def load_state_dict(self, state: dict) -> None:
        self.exp_avg, self.exp_avg_sq, self.t = state["exp_avg"], state["exp_avg_sq"], state["t"]


@dataclass
class QuasiGlobalSGD:
    """SGD with quasi-global momentum (Lin et al., ICML 2021; docs/algorithm.md section 3).

    The local step uses a *temporary* Nesterov buffer built from the quasi-global
    momentum ``m``: ``b = mu * m + g`` and ``x_half = x - lr * (g + mu * b)`` (or
    ``x - lr * b`` without Nesterov), with ``g`` including the coupled weight decay. After
    the round's mixing, :meth:`after_round` sets
    ``m <- mu * m + (1 - mu) * (x_start - x_end) / max(lr, 1e-8)``: the buffer follows the
    change of the *mixed* model, which carries the neighbours' directions, instead of the
    local gradients. ``m`` starts at zero.

    Parameters
    ----------
    momentum : float (default: 0.9)
    weight_decay : float (default: 0.0)
    nesterov : bool (default: True)

    Notes
    -----
    As the paper's code (``quasi_global_momentum``): the step restores the buffer after
    the local update, and ``lr`` is the last learning rate used in the round (its
    ``max(lr, 1e-8)`` guards the warm-up's ``lr = 0``). With several local steps per
    round the buffer sees the whole round's change.
    """

    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = True
    buf: Tensor | None = field(default=None, repr=False)
    lr: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.momentum < 1 or self.weight_decay < 0:
            raise ConfigError(
                f"quasi-global momentum needs 0 < momentum < 1 and weight decay >= 0, got "
                f"{self.momentum} and {self.weight_decay}; use e.g. momentum 0.9"
            )

    def update(self, x: Tensor, g: Tensor, lr: float) -> Tensor:
        """The step ``u`` for params ``x`` and gradients ``g`` [n, d]; ``m`` is unchanged."""
        if self.weight_decay:
            g = g.add(x, alpha=self.weight_decay)  # [n, d]
        if self.buf is None:
            self.buf = torch.zeros_like(g)
        b = g.add(self.buf, alpha=self.momentum)  # [n, d]: temporary mu * m + g
        step = g.add(b, alpha=self.momentum) if self.nesterov else b
        self.lr = lr
        return step * (-lr)

    def after_round(self, x_start: Tensor, x_end: Tensor) -> None:
        """Quasi-global buffer update from the round's start and mixed models [n, d]."""
        if self.buf is None:
            self.buf = torch.zeros_like(x_start)
        diff = (x_start - x_end).to(self.buf.dtype)  # [n, d]
        self.buf.mul_(self.momentum).add_(diff, alpha=(1 - self.momentum) / max(self.lr, 1e-8))

    def state_dict(self) -> dict[str, Tensor | float | None]:
        return {"buf": self.buf, "lr": self.lr}

    def load_state_dict(self, state: dict) -> None:
        self.buf, self.lr = state["buf"], state.get("lr", 0.0)


def make_optimizer(
    name: str, *, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = True
) -> SGD | Adam:
    """Build ``"sgd"`` or ``"adam"`` by name."""
    if name == "sgd":
        return SGD(momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if name == "adam":
        return Adam(weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")


#: The paper's warm-up: 5 epochs of a 200-epoch run (docs/algorithm.md 1.8).
WARMUP_EPOCHS: float = 5.0
#: The default warm-up is capped at this fraction of the run (the paper's 5 of 200).
WARMUP_FRACTION: float = 0.025


def warmup_length(requested: float | None, run_epochs: float) -> float:
    """The warm-up in epochs for a run of ``run_epochs`` epochs (docs/algorithm.md 1.8).

    ``None`` (the default) gives the paper's 5 epochs, capped at ``WARMUP_FRACTION``
    (2.5%) of the run, so a short run reaches its peak learning rate early instead of
    spending the whole run in warm-up. An explicit value is honoured as given.

    Raises
    ------
    ConfigError
        If ``requested`` is negative or not finite.
    """
    if requested is None:
        return min(WARMUP_EPOCHS, WARMUP_FRACTION * run_epochs)
    if not (requested >= 0 and math.isfinite(requested)):
        raise ConfigError(f"warmup-epochs must be a finite number >= 0, got {requested}")
    return float(requested)


def milestone_steps(
    total_steps: int, milestones: Sequence[float], warmup_steps: float = 0.0
) -> list[int]:
    """The steps where the learning rate decays: ``ceil(f * total_steps)`` per fraction
    ``f``, moved to the end of the warm-up when they would fall inside it."""
    end = math.ceil(warmup_steps)
    return [max(math.ceil(f * total_steps), end) for f in milestones]


def learning_rate(
    step: int,
    *,
    base: float,
    steps_per_epoch: float,
    total_steps: int,
    warmup_epochs: float | None = None,
    milestones: Sequence[float] = (0.75, 0.9),
    decay: float = 0.1,
    world_size: int = 2,
    enabled: bool = True,
) -> float:
    """The paper's schedule (docs/algorithm.md 1.8), with milestones as fractions of the run.

    ``lr = base * min(e / warmup, 1) * decay ** #{milestones passed}``, where
    ``e = step / steps_per_epoch`` is the fractional epoch and ``warmup`` is
    :func:`warmup_length` (``None``: 5 epochs capped at 2.5% of the run). The paper's
    150/200 and 180/200 epochs are the default fractions 0.75 and 0.9, so short runs
    decay too; a milestone never falls inside the warm-up. Warm-up applies only when
    ``world_size > 1``; ``lr(0) = 0`` then, so the first step is pure communication.
    ``enabled=False`` gives the constant ``base``. Pure: the simulator, nodes and the
    Flower apps call it with the same arguments and get the same rate.
    """
    if not enabled:
        return base
    spe = max(steps_per_epoch, 1e-12)
    warm_epochs = warmup_length(warmup_epochs, total_steps / spe) if world_size > 1 else 0.0
    warm = min(step / spe / warm_epochs, 1.0) if warm_epochs > 0 else 1.0
    passed = sum(step >= m for m in milestone_steps(total_steps, milestones, warm_epochs * spe))
    return base * warm * decay**passed


def schedule_notes(
    warmup_epochs: float | None, *, steps_per_epoch: float, total_steps: int
) -> tuple[str | None, str | None]:
    """What a user should be told about the warm-up of this run: ``(info, warning)``.

    ``info`` when the default warm-up was capped to fit the run; ``warning`` when an
    explicit ``warmup_epochs`` is at least the whole run (the configured learning rate
    is never reached). Each is one line, or None.
    """
    run_epochs = total_steps / max(steps_per_epoch, 1e-12)
    warm = warmup_length(warmup_epochs, run_epochs)
    if warmup_epochs is None and warm < WARMUP_EPOCHS:
        return (
            f"warm-up capped at {warm:.3g} epochs ({WARMUP_FRACTION:.1%} of the "
            f"{run_epochs:.3g}-epoch run, instead of {WARMUP_EPOCHS:g}); "
            "set --warmup-epochs to choose it",
            None,
        )
    if warmup_epochs is not None and warm >= run_epochs and warm > 0:
        return None, (
            f"--warmup-epochs {warmup_epochs:g} is at least the whole run "
            f"({run_epochs:.3g} epochs): the learning rate never reaches its configured "
            f"value; use e.g. --warmup-epochs {WARMUP_FRACTION * run_epochs:.2g}"
        )
    return None, None
