"""When a run has diverged: one rule for the simulator, the nodes and the Flower paths.

A run has diverged when

1. a training loss is not finite, or
2. a parameter is not finite, or
3. the largest parameter magnitude exceeds ``MAX_GROWTH`` (1e4) times the initial
   model's largest magnitude, floored at 1: ``max|x| > 1e4 * max(max|x0|, 1)``.

Why rule 3 cannot trip on a legitimate run: a network whose weights are 10^4 times their
initial scale has logits 10^4 times larger per layer, so its softmax is saturated and
its gradients are zero or exploding; no run that still learns gets there. Weight decay
pulls parameters towards zero, and unregularized separable problems grow the weights
only logarithmically in the number of steps. A diverging run passes the bound within a
few steps (relaysgd at lr 100 reaches 1e11, dpsgd 1e29), long before the loss of a
saturated ReLU network stops being finite. The check is one reduction over the
parameters (``max |x|``, which is NaN or inf for non-finite entries), made every
``CHECK_EVERY`` steps, at every evaluation and at the end.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["CHECK_EVERY", "MAX_GROWTH", "check_loss", "check_params", "limit"]

#: Parameters may grow to this multiple of the initial scale (floored at 1).
MAX_GROWTH: float = 1e4
#: The simulator and nodes check the parameters every this many steps.
CHECK_EVERY: int = 10

_FIX = "lower --lr (or turn off --lr-correction)"


def limit(x0: Tensor) -> float:
    """The largest parameter magnitude a run from ``x0`` [d] may reach (rule 3)."""
    return MAX_GROWTH * max(float(x0.abs().amax()) if x0.numel() else 0.0, 1.0)


def check_loss(loss: float, *, step: int, where: str, lr: float) -> str | None:
    """One line describing a non-finite training ``loss`` at ``step``, else None."""
    if math.isfinite(loss):
        return None
    return f"training diverged at step {step} on {where}: loss {loss} at lr {lr:g}; {_FIX}"


def check_params(
    x: Tensor,
    bound: float,
    *,
    step: int,
    names: str = "client",
    first: int = 0,
    lr: float | None = None,
    unit: str = "step",
    fix: str | None = None,
) -> str | None:
    """One line describing diverged parameters, else None.

    Parameters
    ----------
    x : Tensor[n, d] or Tensor[d]
        Each worker's parameters (one row per worker), or one worker's.
    bound : float
        :func:`limit` of the initial model; ``inf`` checks finiteness only (Flower).
    step : int
        The step (or round) reported in the message.
    names : str
        What a row is called in the message (``"client"``, ``"node"``).
    first : int
        The id of row 0 (a node checks its own row).
    lr : float, optional
        The learning rate, reported in the message.
    unit : str
        ``"step"``, or ``"round"`` on the Flower paths.
    fix : str, optional
        The advice at the end (default: lower the learning rate).
    """
    rows = x.reshape(1, -1) if x.dim() == 1 else x.reshape(len(x), -1)
    if rows.numel() == 0:
        return None
    peak = rows.detach().abs().amax(dim=1)  # [n]: NaN or inf when a row is not finite
    bad = ~(peak <= bound)
    if not bool(bad.any()):
        return None
    i = int(torch.nonzero(bad)[0])
    value = float(peak[i])
    what = (
        f"non-finite parameters ({int((~torch.isfinite(rows[i])).sum())} of {rows.shape[1]})"
        if not math.isfinite(value)
        else f"max |parameter| {value:.3g} > {bound:.3g} ({MAX_GROWTH:g} x the initial scale)"
    )
    at = f" at lr {lr:g}" if lr is not None else ""
    return f"training diverged at {unit} {step} on {names} {first + i}: {what}{at}; {fix or _FIX}"
