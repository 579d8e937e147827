"""The baselines of docs/algorithm.md section 3: D², gradient tracking, QGM and SGP.

Math tests run the mixers on heterogeneous random quadratics in float64 (n <= 16,
d <= 10) and check the update rules, the fixed points (section 7, I11) and the drop
behaviour of section 1.4; simulator tests check that every algorithm gives the same
models in the batched and the per-client loop engines.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

from relayfl import RunConfig, Task, simulate, topology
from relayfl.algorithms import (
    ALGORITHMS,
    D2,
    DEFAULT_TOPOLOGY,
    Gossip,
    GradientTracking,
    TimeVaryingExponential,
    local_optimizer,
    make_mixer,
)
from relayfl.data import random_quadratics
from relayfl.errors import ConfigError
from relayfl.optim import SGD, QuasiGlobalSGD
from relayfl.task import builtin

NEW = ["d2", "gradient-tracking", "qgm", "sgp"]


def _run(mixer, q, lr: float, steps: int, optimizer=None) -> torch.Tensor:
    """``steps`` of local step + mix on quadratics ``q``; returns the models [n, d]."""
    opt = optimizer or SGD()
    x = torch.zeros(q.num_workers, q.dim, dtype=torch.float64)
    for _ in range(steps):
        x_half = x + opt.update(x, q.grad(x), lr)
        x_new = mixer.mix(x, x_half)
        opt.after_round(x, x_new)
        x = x_new
    return x


# ------------------------------------------------------------------------- registry


def test_every_algorithm_has_a_default_topology_that_builds() -> None:
    """ALGORITHMS and DEFAULT_TOPOLOGY agree; gossip family on the ring, sgp exponential."""
    assert set(ALGORITHMS) == set(DEFAULT_TOPOLOGY)
    assert {DEFAULT_TOPOLOGY[a] for a in ("dpsgd", "d2", "gradient-tracking", "qgm")} == {"ring"}
    assert DEFAULT_TOPOLOGY["sgp"] == "exponential"
    for algorithm in ALGORITHMS:
        config = RunConfig(algorithm=algorithm, momentum=0.9)
        graphs = topology.build(config.topology_name, 16)
        make_mixer(algorithm, graphs, torch.zeros(4))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"algorithm": "qgm"}, "--momentum 0.9"),
        ({"algorithm": "qgm", "momentum": 0.9, "optimizer": "adam"}, "--optimizer sgd"),
        ({"algorithm": "sgp", "num_clients": 12}, "--clients 16"),
    ],
    ids=["qgm-no-momentum", "qgm-adam", "sgp-not-power-of-two"],
)
def test_bad_baseline_config_names_the_fix(changes: dict, match: str) -> None:
    """qgm needs SGD with momentum; sgp needs a power-of-two number of clients."""
    with pytest.raises(ConfigError, match=match):
        RunConfig(**changes)


def test_sgp_off_its_exponential_graph_is_refused() -> None:
    """SGP's peers come from the time-varying exponential graph, not from --topology."""
    with pytest.raises(ConfigError, match="--topology exponential"):
        make_mixer("sgp", topology.build("ring", 8), torch.zeros(3))
    with pytest.raises(ConfigError, match="--momentum"):
        local_optimizer("qgm", momentum=0.0)


def test_exponential_graph_has_the_power_of_two_peers() -> None:
    """exponential(16): i ~ i +- 1, 2, 4 and i + 8, so every degree is 7."""
    graph = topology.exponential(16)
    assert {d for _, d in graph.degree()} == {7}
    assert sorted(graph.neighbors(0)) == [1, 2, 4, 8, 12, 14, 15]
    assert topology.exponential(1).number_of_edges() == 0


# ------------------------------------------------------------------------------- D2


def test_d2_equals_its_two_step_recursion() -> None:
    """Section 3: x^{t+1} = W(2x^t - x^{t-1} - lr g^t + lr g^{t-1}) for plain SGD."""
    q = random_quadratics(8, dim=5, heterogeneity=0.1, seed=1)
    graph = topology.ring(8)
    W = torch.as_tensor(topology.gossip_weights(graph))
    mixer, lr = D2([graph]), 0.2
    x = torch.zeros(8, 5, dtype=torch.float64)
    x_prev, g_prev = None, None
    for t in range(12):
        g = q.grad(x)
        x_new = mixer.mix(x, x - lr * g)
        expected = W @ (x - lr * g) if t == 0 else W @ (2 * x - x_prev - lr * g + lr * g_prev)
        torch.testing.assert_close(x_new, expected, rtol=0, atol=1e-12)
        x_prev, g_prev, x = x, g, x_new


@pytest.mark.parametrize(
    ("name", "mixer"),
    [
        ("d2", lambda g: D2([g], weight=1 / 3 - 0.01)),
        ("gradient-tracking", lambda g: GradientTracking([g], weight=1 / 3 - 0.01)),
    ],
    ids=["d2", "gradient-tracking"],
)
def test_exact_methods_reach_the_optimum_on_heterogeneous_quadratics(name, mixer) -> None:
    """I11: D² and gradient tracking have unbiased fixed points; D-PSGD does not."""
    q = random_quadratics(8, dim=5, heterogeneity=1.0, r0=1.0, seed=2)
    graph = topology.ring(8)
    x = _run(mixer(graph), q, lr=0.3, steps=1500)
    # measured: max |x_i - x*| = 1.7e-15 (D²), 1.0e-15 (GT) in float64
    assert float((x - q.x_star).abs().max()) < 1e-9, name
    biased = _run(Gossip([graph]), q, lr=0.3, steps=1500)
    assert float((biased - q.x_star).abs().max()) > 1e-2  # measured 0.40


def test_gradient_tracking_correction_has_zero_mean_and_tracks_updates() -> None:
    """W doubly stochastic: mean_i c^t = 0, so the mean model moves by the mean update."""
    q = random_quadratics(8, dim=4, heterogeneity=0.5, seed=3)
    mixer = GradientTracking([topology.ring(8)])
    x = torch.zeros(8, 4, dtype=torch.float64)
    for _ in range(20):
        x_half = x - 0.1 * q.grad(x)
        x_new = mixer.mix(x, x_half)
        torch.testing.assert_close(x_new.mean(0), x_half.mean(0), rtol=0, atol=1e-12)
        torch.testing.assert_close(mixer.c.mean(0), torch.zeros(4, dtype=torch.float64))
        x = x_new
    assert mixer.bytes_per_round(10, torch.float32)[0] == 2 * 2 * 10 * 4  # two gossips


# ------------------------------------------------------------------------------ QGM


def test_quasi_global_momentum_matches_the_paper_code() -> None:
    """Section 3: temporary Nesterov buffer, gossip, then m <- mu m + (1-mu)(x - x')/lr."""
    q = random_quadratics(8, dim=4, heterogeneity=0.5, seed=4)
    graph = topology.ring(8)
    W = torch.as_tensor(topology.gossip_weights(graph))
    mu, wd = 0.9, 1e-2
    opt = local_optimizer("qgm", momentum=mu, weight_decay=wd)
    assert isinstance(opt, QuasiGlobalSGD)
    mixer = make_mixer("qgm", [graph], torch.zeros(4))
    x = torch.zeros(8, 4, dtype=torch.float64)
    x_ref, m_ref = x.clone(), torch.zeros_like(x)
    for t in range(15):
        lr = 0.05 * min(t / 3, 1.0)  # warm-up, lr(0) = 0 as in the paper's schedule
        g = q.grad(x)
        x_half = x + opt.update(x, g, lr)
        x_new = mixer.mix(x, x_half)
        opt.after_round(x, x_new)
        x = x_new
        # the paper code, transcribed: torch SGD(nesterov) on a restored buffer
        g_ref = q.grad(x_ref) + wd * x_ref
        buf = mu * m_ref + g_ref
        new_ref = W @ (x_ref - lr * (g_ref + mu * buf))
        m_ref = mu * m_ref + (1 - mu) * (x_ref - new_ref) / max(lr, 1e-8)
        x_ref = new_ref
        torch.testing.assert_close(x, x_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(opt.buf, m_ref, rtol=0, atol=1e-10)


def test_qgm_without_drops_keeps_the_average_of_its_own_steps() -> None:
    """QGM mixes with plain gossip: the mean model is the mean half step."""
    q = random_quadratics(4, dim=3, heterogeneity=0.1, seed=5)
    mixer = make_mixer("qgm", topology.build("ring", 4), torch.zeros(3))
    opt = local_optimizer("qgm", momentum=0.5)
    x = torch.zeros(4, 3, dtype=torch.float64)
    for _ in range(5):
        x_half = x + opt.update(x, q.grad(x), 0.1)
        x_new = mixer.mix(x, x_half)
        opt.after_round(x, x_new)
        torch.testing.assert_close(x_new.mean(0), x_half.mean(0), rtol=0, atol=1e-12)
        x = x_new


# ------------------------------------------------------------------------------ SGP


def test_sgp_offsets_cycle_and_average_exactly_in_log2_n_rounds() -> None:
    """Section 2.3: offsets 1, 2, 4, 8, 1, ...; four 1/2-1/2 rounds average 16 exactly."""
    mixer = TimeVaryingExponential(16)
    assert [mixer.offset(r) for r in range(6)] == [1, 2, 4, 8, 1, 2]
    v = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    once = mixer.mix(v, v)  # rounds 0, 1
    torch.testing.assert_close(once.mean(0), v.mean(0))  # doubly stochastic
    assert float((once - v.mean(0)).abs().max()) > 1e-3
    twice = mixer.mix(once, once)  # rounds 2, 3
    torch.testing.assert_close(twice, v.mean(0).expand(16, 3), rtol=0, atol=1e-14)
    assert mixer.round == 4
    assert int(mixer.bytes_per_round(10, torch.float32)[0]) == 2 * 10 * 4


def test_sgp_receivers_keep_their_model_when_the_message_drops() -> None:
    """Section 1.4: a dropped push leaves the receiver's value, so the mean can move."""
    mixer = TimeVaryingExponential(4)
    assert [e[0].tolist() for e in mixer.edges] == [[3, 0, 1, 2], [2, 3, 0, 1]]
    v = torch.arange(4, dtype=torch.float64).unsqueeze(1)  # [4, 1]
    keep = [torch.tensor([True, False, True, True]), torch.ones(4, dtype=torch.bool)]
    out = mixer.mix(v, v, keep)
    # round 0 (offset 1): worker 1 keeps 1, others average with i-1; round 1 (offset 2)
    r0 = torch.tensor([[1.5], [1.0], [1.5], [2.5]], dtype=torch.float64)
    torch.testing.assert_close(out, 0.5 * (r0 + r0[[2, 3, 0, 1]]))


# ---------------------------------------------------------------------------- drops


@pytest.mark.parametrize("algorithm", ["dpsgd", "d2", "gradient-tracking", "qgm"])
def test_gossip_family_with_all_messages_kept_equals_no_drops(algorithm: str) -> None:
    """A keep mask of all True is the lossless mixer (GT: two masks per graph)."""
    graphs = topology.build("double-binary-trees", 8)
    a = make_mixer(algorithm, graphs, torch.zeros(6))
    b = make_mixer(algorithm, graphs, torch.zeros(6))
    assert len(a.edges) == (4 if algorithm == "gradient-tracking" else 2)
    keep = [torch.ones(len(src), dtype=torch.bool) for src, _ in a.edges]
    gen = torch.Generator().manual_seed(1)
    x = torch.zeros(8, 6, dtype=torch.float64)
    for _ in range(4):
        x_half = x + torch.randn(8, 6, generator=gen, dtype=torch.float64)
        xa, xb = a.mix(x, x_half, keep), b.mix(x, x_half)
        torch.testing.assert_close(xa, xb, rtol=0, atol=1e-13)
        x = xb


def test_gossip_drop_renormalises_by_the_weight_that_arrived() -> None:
    """Section 1.4: worker 1 on a ring of 4 loses worker 0's message -> (x1 + x2) / 2."""
    mixer = Gossip([topology.ring(4)])
    src, dst = mixer.edges[0]
    keep = ~((src == 0) & (dst == 1))
    v = torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=torch.float64)
    out = mixer.mix(v, v, [keep])
    assert float(out[1, 0]) == pytest.approx(1.5)
    assert float(out[0, 0]) == pytest.approx((0 + 1 + 3) / 3)


def test_d2_and_gossip_on_double_trees_mix_even_and_odd_indices_separately() -> None:
    """Section 2.2: gossip on double binary trees uses tree 0 on [0::2], tree 1 on [1::2]."""
    a, b = topology.double_binary_trees(8)
    v = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = Gossip([a, b]).mix(v, v)
    Wa = torch.as_tensor(topology.gossip_weights(a))
    Wb = torch.as_tensor(topology.gossip_weights(b))
    torch.testing.assert_close(out[:, 0::2], Wa @ v[:, 0::2])
    torch.testing.assert_close(out[:, 1::2], Wb @ v[:, 1::2])
    assert nx.is_tree(a) and nx.is_tree(b)


# ------------------------------------------------------------------- the simulator


@pytest.fixture(scope="module")
def digits() -> Task:
    """Digits with a dropout CNN, so keyed dropout masks are exercised."""
    return builtin("digits", dropout=0.25)


def _tiny(**kw: object) -> RunConfig:
    base = {
        "num_clients": 8,
        "steps": 12,
        "batch_size": 16,
        "eval_every": 6,
        "eval_limit": 100,
        "seed": 3,
        "momentum": 0.9,
    }
    return RunConfig(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", NEW)
def test_batched_and_loop_engines_give_the_same_models(digits: Task, algorithm: str) -> None:
    """Every new baseline gives the same models with vmap and with a per-client loop."""
    batched = simulate(digits, _tiny(algorithm=algorithm, engine="batched"))
    loop = simulate(digits, _tiny(algorithm=algorithm, engine="loop"))
    # float32, 12 steps: only summation order differs (measured max |diff| 6e-8 to 4e-7)
    torch.testing.assert_close(batched.models, loop.models, rtol=0, atol=5e-5)
    assert batched.final.accuracies == pytest.approx(loop.final.accuracies, abs=0.02)


@pytest.mark.parametrize("algorithm", [*NEW, "relaysgd", "dpsgd"])
def test_seeded_drops_run_reproducibly_for_every_decentralized_algorithm(
    digits: Task, algorithm: str
) -> None:
    """10% drops (section 1.4) are keyed by the seed: same seed, same models."""
    cfg = _tiny(algorithm=algorithm, steps=6, eval_every=0, drop_probability=0.1, fill="latest")
    a, b = simulate(digits, cfg), simulate(digits, cfg)
    assert torch.equal(a.models, b.models)
    assert np.isfinite(a.models.numpy()).all()
    assert not torch.equal(a.models, simulate(digits, cfg.replace(drop_probability=0)).models)
