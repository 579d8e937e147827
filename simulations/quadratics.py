"""Random quadratics (docs/algorithm.md section 5.5) run with relayfl's own mixers, vectorized.

The mixers act column by column on stacked models ``[n, D]``, so one run can carry
``S`` seeds (problems) times ``L`` learning rates at once: worker ``i``'s row holds its
``[S, L, d]`` models flattened. Each seed has its own matrices ``A_i`` and targets
``b_i``; each learning-rate column its own local step. Nothing else differs from a
plain run, so a column is exactly the run with that seed and learning rate.

Units: :class:`relayfl.data.Quadratics` carries the 1/2 in ``f``, so the paper's target
``f(x̄) - f* <= 1e-6`` is ``5e-7`` here (:data:`TARGET`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch
from torch import Tensor

from relayfl import topology
from relayfl.algorithms import D2, Mixer, make_mixer
from relayfl.data import random_quadratics

#: The paper's 1e-6 on f(x̄) - f*, in relayfl's units (f carries the 1/2).
TARGET = 5e-7

#: Learning-rate grid: 2^(k/2) from 6.1e-5 to 8 (35 values).
LR_GRID: tuple[float, ...] = tuple(2.0 ** (k / 2) for k in range(-28, 7))


@dataclass
class Problems:
    """``S`` random quadratic problems on ``n`` workers, stacked (float64)."""

    A: Tensor  # [S, n, d, d]
    b: Tensor  # [S, n, d]
    x_star: Tensor  # [S, d]
    H: Tensor  # [S, d, d]: Hessian of f = (1/n) sum_i A_i^T A_i
    noise: float

    @classmethod
    def make(
        cls,
        n: int,
        zeta2: float,
        seeds: Sequence[int],
        *,
        dim: int = 10,
        r0: float = 10.0,
        noise: float = 0.0,
    ) -> Problems:
        qs = [random_quadratics(n, dim, zeta2, r0=r0, noise=noise, seed=s, mu=0.5) for s in seeds]
        A = torch.stack([q.A for q in qs])  # [S, n, d, d]
        H = torch.einsum("snki,snkj->sij", A, A) / n  # [S, d, d]
        return cls(A, torch.stack([q.b for q in qs]), torch.stack([q.x_star for q in qs]), H, noise)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(S, n, d)."""
        S, n, d, _ = self.A.shape
        return S, n, d

    def grad(self, x: Tensor, gen: torch.Generator | None = None) -> Tensor:
        """Gradients of every worker, seed and lr column: [n, S, L, d] -> [n, S, L, d]."""
        r = torch.einsum("sikj,islj->islk", self.A, x) - self.b.transpose(0, 1)[:, :, None]
        g = torch.einsum("sikj,islk->islj", self.A, r)  # [n, S, L, d]
        if self.noise > 0:
            xi = torch.randn(g.shape, generator=gen, dtype=g.dtype)
            g = g + (self.noise / math.sqrt(g.shape[-1])) * xi
        return g

    def suboptimality(self, x: Tensor) -> Tensor:
        """``f(x̄) - f*`` per seed and lr: [n, S, L, d] -> [S, L]."""
        e = x.mean(0) - self.x_star[:, None]  # [S, L, d]
        return 0.5 * torch.einsum("sld,sde,sle->sl", e, self.H, e)


def build_mixer(
    algorithm: str,
    graphs: Sequence[nx.Graph],
    width: int,
    *,
    gossip_weight: float | None = None,
    lazy: bool = False,
) -> Mixer:
    """The relayfl mixer for ``algorithm`` on models of ``width`` columns (fill x0 = 0)."""
    x0 = torch.zeros(width, dtype=torch.float64)
    if algorithm == "d2" and lazy:
        return D2(graphs, weight=gossip_weight, lazy=True)
    return make_mixer(algorithm, graphs, x0, gossip_weight=gossip_weight)


@dataclass
class Run:
    """Result of :func:`run`."""

    steps_to_target: np.ndarray  # [S, L], inf where never reached
    curve: np.ndarray | None  # [T_recorded, S, L] suboptimality, when recorded
    steps_run: int


def run(
    algorithm: str,
    graphs: Sequence[nx.Graph],
    problems: Problems,
    lrs: Sequence[float],
    *,
    max_steps: int = 20_000,
    target: float = TARGET,
    gossip_weight: float | None = None,
    lazy: bool = False,
    record: bool = False,
    stop_early: bool = True,
    seed: int = 0,
) -> Run:
    """Run ``algorithm`` on every seed and learning rate at once.

    Each step: ``x_half = x - lr * grad``, then the mixer. With ``stop_early`` the run
    ends as soon as no learning rate that has not reached the target on every seed can
    still beat the best mean steps-to-target (or all have diverged).
    """
    S, n, d = problems.shape
    L = len(lrs)
    lr = torch.tensor(lrs, dtype=torch.float64)[None, None, :, None]  # [1, 1, L, 1]
    mixer = build_mixer(algorithm, graphs, S * L * d, gossip_weight=gossip_weight, lazy=lazy)
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, S, L, d, dtype=torch.float64)
    hit = np.full((S, L), np.inf)
    dead = np.zeros((S, L), dtype=bool)
    curve = []
    start = problems.suboptimality(x).numpy()
    t = 0
    for t in range(1, max_steps + 1):
        x_half = x - lr * problems.grad(x, gen)  # [n, S, L, d]
        x = mixer.mix(x.reshape(n, -1), x_half.reshape(n, -1)).reshape(n, S, L, d)
        err = problems.suboptimality(x).numpy()  # [S, L]
        if record:
            curve.append(err)
        newly = (err <= target) & np.isinf(hit)
        hit[newly] = t
        dead |= ~np.isfinite(err) | (err > 1e6 * np.maximum(start, 1.0))
        if stop_early and t % 10 == 0 and _settled(hit, dead, t):
            break
    return Run(hit, np.stack(curve) if record else None, t)


def _settled(hit: np.ndarray, dead: np.ndarray, t: int) -> bool:
    """Whether no unfinished learning rate can beat the best finished one any more."""
    done = np.isfinite(hit).all(0)  # [L]
    if not done.any():
        return bool((dead | np.isfinite(hit)).all())
    best = hit[:, done].mean(0).min()
    reached = np.where(np.isfinite(hit), hit, 0.0).sum(0)
    missing = (~np.isfinite(hit)).sum(0)
    bound = (reached + missing * (t + 1)) / hit.shape[0]  # [L]: lower bound on the mean
    bound[dead.any(0)] = np.inf
    return bool((bound[~done] >= best).all())


def best_lr(steps_to_target: np.ndarray, lrs: Sequence[float]) -> tuple[float | None, float]:
    """The learning rate with the fewest mean steps over seeds (all seeds must reach)."""
    means = steps_to_target.mean(0)  # [L]
    k = int(np.argmin(means))
    if not np.isfinite(means[k]):
        return None, math.inf
    return float(lrs[k]), float(means[k])


def graphs_for(topology_name: str, n: int) -> tuple[nx.Graph, ...]:
    """relayfl's topology by name (``exponential`` for SGP)."""
    return topology.build(topology_name, n)
