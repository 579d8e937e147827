"""Randomness inside a user's ``forward``, drawn from the run's keyed generators.

A model may draw random numbers in ``forward``: ``F.dropout(x, p, self.training)``,
``nn.MultiheadAttention(dropout=...)``, ``torch.rand`` / ``torch.randn`` /
``torch.bernoulli`` for noise. PyTorch takes them from one global stream, so the result
would depend on how many workers ran before, in which engine. Here every such call is
*recorded* once (its kind and shape, on a sample batch) and then, at every training step,
*replayed* from tensors drawn from the worker's keyed generator ``(seed, client, step)``
(:mod:`relayfl.rng`), the same way ``nn.Dropout`` masks are. The draws are inputs of
the forward, so the loop engine, ``vmap`` and a node compute the same models.

Intercepted (while the model runs in a relayfl engine): ``F.dropout``, ``F.dropout1d``,
``F.dropout2d``, ``F.dropout3d``, ``F.scaled_dot_product_attention`` with
``dropout_p > 0``, ``torch.rand``, ``torch.randn``, ``torch.rand_like``,
``torch.randn_like``, ``torch.bernoulli``, ``torch.randint`` and ``Tensor.uniform_``,
``Tensor.normal_``, ``Tensor.bernoulli_``. Refused with a one-line error naming the
module: ``F.alpha_dropout``, ``F.feature_alpha_dropout``, ``torch.randperm``,
``torch.multinomial``, ``torch.normal``, ``torch.poisson``, ``torch.randint_like``.
Calls that pass their own ``generator=`` are the user's own keyed randomness and run
unchanged. Names imported before the run (``from torch import rand``) cannot be seen.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relayfl.errors import ConfigError

__all__ = ["Draw", "draw", "record", "replay"]

_LOCK = threading.RLock()

_REFUSED: dict[tuple[Any, str], str] = {
    (F, "alpha_dropout"): "F.alpha_dropout",
    (F, "feature_alpha_dropout"): "F.feature_alpha_dropout",
    (torch, "randperm"): "torch.randperm",
    (torch, "multinomial"): "torch.multinomial",
    (torch, "normal"): "torch.normal",
    (torch, "poisson"): "torch.poisson",
    (torch, "randint_like"): "torch.randint_like",
}


@dataclass(frozen=True)
class Draw:
    """One random call of ``forward``: what to draw for it at each step.

    ``kind`` is ``"mask"`` (dropout keep mask scaled by ``1 / (1 - p)``), ``"uniform"``,
    ``"normal"`` or ``"randint"`` (in ``[low, high)``); ``shape`` is the draw's shape for
    the training batch; ``module`` names the module that made the call.
    """

    kind: str
    shape: tuple[int, ...]
    module: str
    p: float = 0.0
    low: int = 0
    high: int = 1


def draw(d: Draw, gen: torch.Generator, device: torch.device | str, dtype: torch.dtype) -> Tensor:
    """The tensor for call ``d`` from generator ``gen`` (one worker, one step)."""
    if d.kind == "normal":
        out = torch.randn(d.shape, generator=gen, device=gen.device)
    elif d.kind == "randint":
        out = torch.randint(d.low, d.high, d.shape, generator=gen, device=gen.device)
        return out.to(device)
    else:
        out = torch.rand(d.shape, generator=gen, device=gen.device)
        if d.kind == "mask":
            out = (out >= d.p).to(dtype) / (1.0 - d.p)
    return out.to(device=device, dtype=dtype)


class _Session:
    """The state of one forward pass: recording the calls, or replaying their draws."""

    def __init__(self, draws: list[Tensor] | None, plan: list[Draw] | None) -> None:
        self.draws, self.plan = draws, plan
        self.recorded: list[Draw] = []
        self.k = 0
        self.stack: list[str] = []
        self.gen = torch.Generator().manual_seed(0)

    @property
    def module(self) -> str:
        return self.stack[-1] if self.stack else "forward"

    def take(self, kind: str, shape: tuple[int, ...], **info: Any) -> Tensor:
        """The next draw: a fresh one while recording, the given one while replaying."""
        if self.draws is None:  # recording
            d = Draw(kind, tuple(shape), self.module, **info)
            self.recorded.append(d)
            return draw(d, self.gen, "cpu", torch.float32)
        plan = self.plan or []
        k = self.k
        self.k += 1
        if k >= len(self.draws) or plan[k].kind != kind or plan[k].shape != tuple(shape):
            where = plan[k].module if k < len(plan) else self.module
            got = f"{kind}{tuple(shape)}"
            raise ConfigError(
                f"module {where!r} draws random numbers differently from step to step "
                f"(call {k}: {got}, recorded "
                f"{f'{plan[k].kind}{plan[k].shape}' if k < len(plan) else 'no such call'}); "
                "relayfl keys in-model randomness by call order and shape: draw the same "
                "shapes every training step (a fixed batch size), or use nn.Dropout"
            )
        return self.draws[k]


_session: _Session | None = None


def _refuse(name: str) -> Callable[..., Any]:
    def refused(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("generator") is not None or _session is None:
            return _ORIGINAL[name](*args, **kwargs)
        raise ConfigError(
            f"module {_session.module!r} calls {_REFUSED_NAMES[name]} in forward, which "
            "relayfl cannot key per (seed, client, step); use torch.rand / torch.randn / "
            "torch.bernoulli / F.dropout, or pass your own generator="
        )

    return refused


def _size(args: tuple, kwargs: dict) -> tuple[int, ...]:
    size = kwargs.get("size", args)
    if len(size) == 1 and isinstance(size[0], tuple | list | torch.Size):
        size = size[0]
    return tuple(int(s) for s in size)


def _dropout(dims: int) -> Callable[..., Tensor]:
    def dropout(
        input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
    ) -> Tensor:
        if not training or p == 0 or _session is None:
            return _ORIGINAL[f"dropout{dims or ''}"](input, p, training, inplace)
        if p == 1:
            return input * 0
        shape = tuple(input.shape) if dims == 0 else (*input.shape[:-dims], *([1] * dims))
        mask = _session.take("mask", shape, p=float(p))
        return input * mask.to(device=input.device, dtype=input.dtype)

    return dropout


def _sdpa(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """``F.scaled_dot_product_attention``; with dropout, its documented math form with
    the attention-weight dropout mask drawn from the keyed generator."""
    if dropout_p == 0 or _session is None or enable_gqa:
        kw = {"scale": scale, "enable_gqa": enable_gqa}
        return _ORIGINAL["sdpa"](query, key, value, attn_mask, dropout_p, is_causal, **kw)
    L, S = query.size(-2), key.size(-2)
    factor = 1 / math.sqrt(query.size(-1)) if scale is None else scale
    scores = query @ key.transpose(-2, -1) * factor  # [..., L, S]
    if is_causal:
        causal = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    weights = torch.softmax(scores, dim=-1)
    mask = _session.take("mask", tuple(weights.shape), p=float(dropout_p))
    return (weights * mask.to(device=weights.device, dtype=weights.dtype)) @ value


def _rand(kind: str, name: str) -> Callable[..., Tensor]:
    def rand(*args: Any, **kwargs: Any) -> Tensor:
        if kwargs.get("generator") is not None or kwargs.get("out") is not None or not _session:
            return _ORIGINAL[name](*args, **kwargs)
        dtype = kwargs.get("dtype") or torch.get_default_dtype()
        out = _session.take(kind, _size(args, kwargs)).to(dtype)
        if kwargs.get("device") is not None:
            out = out.to(kwargs["device"])
        return out.requires_grad_(True) if kwargs.get("requires_grad") else out

    return rand


def _rand_like(kind: str, name: str) -> Callable[..., Tensor]:
    def rand_like(input: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if _session is None:
            return _ORIGINAL[name](input, *args, **kwargs)
        dtype = kwargs.get("dtype") or input.dtype
        return _session.take(kind, tuple(input.shape)).to(device=input.device, dtype=dtype)

    return rand_like


def _bernoulli(input: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    if kwargs.get("generator") is not None or kwargs.get("out") is not None or not _session:
        return _ORIGINAL["bernoulli"](input, *args, **kwargs)
    p = args[0] if args else kwargs.get("p", input)
    u = _session.take("uniform", tuple(input.shape)).to(input.device)
    return (u < p).to(input.dtype)


def _randint(*args: Any, **kwargs: Any) -> Tensor:
    if kwargs.get("generator") is not None or kwargs.get("out") is not None or not _session:
        return _ORIGINAL["randint"](*args, **kwargs)
    ints = [a for a in args if isinstance(a, int)]
    size = kwargs.get("size", next((a for a in args if isinstance(a, tuple | list)), ()))
    low, high = (0, ints[0]) if len(ints) == 1 else (ints[0], ints[1])
    low, high = kwargs.get("low", low), kwargs.get("high", high)
    out = _session.take("randint", tuple(size), low=int(low), high=int(high))
    out = out.to(kwargs.get("dtype") or torch.int64)
    return out if kwargs.get("device") is None else out.to(kwargs["device"])


def _inplace(kind: str, name: str) -> Callable[..., Tensor]:
    def method(self: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if kwargs.get("generator") is not None or _session is None:
            return _ORIGINAL[name](self, *args, **kwargs)
        v = _session.take("normal" if kind == "normal" else "uniform", tuple(self.shape))
        v = v.to(device=self.device, dtype=self.dtype if self.is_floating_point() else None)
        if kind == "uniform":
            a = args[0] if args else kwargs.get("from", 0.0)
            b = args[1] if len(args) > 1 else kwargs.get("to", 1.0)
            return self.copy_(a + (b - a) * v)
        if kind == "normal":
            mean = args[0] if args else kwargs.get("mean", 0.0)
            std = args[1] if len(args) > 1 else kwargs.get("std", 1.0)
            return self.copy_(mean + std * v)
        p = args[0] if args else kwargs.get("p", 0.5)
        return self.copy_((v < p).to(self.dtype))

    return method


_ORIGINAL: dict[str, Any] = {
    "dropout": F.dropout,
    "dropout1": F.dropout1d,
    "dropout2": F.dropout2d,
    "dropout3": F.dropout3d,
    "sdpa": F.scaled_dot_product_attention,
    "rand": torch.rand,
    "randn": torch.randn,
    "rand_like": torch.rand_like,
    "randn_like": torch.randn_like,
    "bernoulli": torch.bernoulli,
    "randint": torch.randint,
    "uniform_": Tensor.uniform_,
    "normal_": Tensor.normal_,
    "bernoulli_": Tensor.bernoulli_,
    **{f"refused.{attr}": getattr(owner, attr) for owner, attr in _REFUSED},
}
_REFUSED_NAMES = {f"refused.{attr}": name for (_, attr), name in _REFUSED.items()}

_PATCHES: list[tuple[Any, str, Any]] = [
    (F, "dropout", _dropout(0)),
    (F, "dropout1d", _dropout(1)),
    (F, "dropout2d", _dropout(2)),
    (F, "dropout3d", _dropout(3)),
    (F, "scaled_dot_product_attention", _sdpa),
    (torch, "rand", _rand("uniform", "rand")),
    (torch, "randn", _rand("normal", "randn")),
    (torch, "rand_like", _rand_like("uniform", "rand_like")),
    (torch, "randn_like", _rand_like("normal", "randn_like")),
    (torch, "bernoulli", _bernoulli),
    (torch, "randint", _randint),
    (Tensor, "uniform_", _inplace("uniform", "uniform_")),
    (Tensor, "normal_", _inplace("normal", "normal_")),
    (Tensor, "bernoulli_", _inplace("bernoulli", "bernoulli_")),
    *[(owner, attr, _refuse(f"refused.{attr}")) for owner, attr in _REFUSED],
]


@contextlib.contextmanager
def _active(session: _Session) -> Iterator[_Session]:
    global _session
    with _LOCK:
        previous = _session
        _session = session
        saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in _PATCHES]
        try:
            for owner, attr, fn in _PATCHES:
                setattr(owner, attr, fn)
            yield session
        finally:
            for owner, attr, fn in saved:
                setattr(owner, attr, fn)
            _session = previous


def record(model: nn.Module, run: Callable[[], Any]) -> list[Draw]:
    """The random calls ``run()`` (a forward pass of ``model``) makes, in order.

    Each call gets a fresh draw so the forward proceeds; the result is the plan that
    :func:`replay` follows at every step.

    Raises
    ------
    ConfigError
        For a refused operation, naming the module that called it.
    """
    session = _Session(None, None)
    names = {m: (n or type(model).__name__) for n, m in model.named_modules()}

    def pre(mod: nn.Module, _: Any) -> None:
        session.stack.append(names.get(mod, type(mod).__name__))

    def post(mod: nn.Module, _: Any, __: Any) -> None:
        if session.stack:
            session.stack.pop()

    hooks = [m.register_forward_pre_hook(pre) for m in names] + [
        m.register_forward_hook(post) for m in names
    ]
    try:
        with _active(session):
            run()
    finally:
        for h in hooks:
            h.remove()
    return session.recorded


@contextlib.contextmanager
def replay(plan: list[Draw], draws: list[Tensor]) -> Iterator[None]:
    """Within the block, the model's random calls return ``draws`` in ``plan``'s order.

    Raises
    ------
    ConfigError
        When a call does not match the plan (another kind or shape, or one too many).
    """
    with _active(_Session(draws, plan)):
        yield
