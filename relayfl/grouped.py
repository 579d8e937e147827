"""The grouped layout: every worker's model in one network, workers as channel groups.

``torch.func.vmap`` over a convolution turns into a grouped convolution anyway, but it
moves the worker dimension in and out of the batch before and after every layer. Here
the model's ``torch.fx`` graph is re-interpreted once over stacked parameters with the
activations kept in the layout each layer wants:

* image activations as ``[B, n*C, H, W]``: a convolution is one ``conv2d`` with
  ``groups = n`` (weights ``[n*C_out, C_in, k, k]``), pooling and activations run as is;
* vector activations as ``[n, B, F]``: a linear layer is one ``baddbmm``.

Supported: Conv2d, Linear, pooling, Flatten/flatten/view, elementwise activations and
arithmetic, and relayfl's keyed dropout. Anything else raises :class:`Unsupported`, and
:func:`relayfl.engine.make_engine` falls back to ``vmap``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GroupedForward", "Unsupported"]


class Unsupported(Exception):
    """The model uses a layer the grouped layout does not cover (the caller falls back)."""


_ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.GELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.LeakyReLU,
    nn.SiLU,
    nn.ELU,
    nn.Identity,
    nn.Softplus,
    nn.Mish,
    nn.Hardswish,
    nn.ReLU6,
)
_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_ELEMENTWISE_FUNCS = {
    operator.add,
    operator.mul,
    operator.sub,
    operator.truediv,
    torch.add,
    torch.mul,
    torch.relu,
    F.relu,
    torch.tanh,
    torch.sigmoid,
    F.gelu,
    F.silu,
    F.leaky_relu,
}
_POOL_FUNCS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, torch.max_pool2d}


class _Value:
    """An activation in one of two layouts: ``"G"`` [B, n*C, H, W] or ``"M"`` [n, B, ...]."""

    __slots__ = ("layout", "n", "t")

    def __init__(self, t: Tensor, layout: str, n: int) -> None:
        self.t, self.layout, self.n = t, layout, n

    def to_m(self) -> Tensor:
        if self.layout == "M":
            return self.t
        B, nC, *rest = self.t.shape
        return self.t.reshape(B, self.n, nC // self.n, *rest).transpose(0, 1)  # [n, B, C, ...]

    def logical_shape(self) -> tuple[int, ...]:
        """Per-worker shape [B, C, ...] whatever the layout."""
        if self.layout == "G":
            B, nC, *rest = self.t.shape
            return (B, nC // self.n, *rest)
        return tuple(self.t.shape[1:])


def _to_g(t: Tensor) -> Tensor:
    """[n, B, C, H, W] -> [B, n*C, H, W]."""
    n, B, C, *rest = t.shape
    return t.transpose(0, 1).reshape(B, n * C, *rest)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m).__name__ == "_KeyedDropout" or super().is_leaf_module(m, qualname)


class GroupedForward:
    """Forward pass of n stacked copies of ``model`` in the grouped layout.

    Parameters
    ----------
    model : nn.Module
        Template (its parameters are ignored: stacked ones are passed to ``__call__``).
    channels_last : bool, default False
        Keep image activations in ``torch.channels_last`` memory format.

    Raises
    ------
    Unsupported
        When tracing fails or a node has no grouped form.
    """

    def __init__(self, model: nn.Module, *, channels_last: bool = False) -> None:
        self.channels_last = channels_last
        try:
            self.graph = _Tracer().trace(model)
        except Exception as err:  # data-dependent control flow, etc.
            raise Unsupported(f"torch.fx cannot trace the model: {err}") from None
        self.modules = dict(model.named_modules())
        for node in self.graph.nodes:
            self._check(node)

    def _check(self, node: fx.Node) -> None:
        if node.op == "call_module":
            mod = self.modules[str(node.target)]
            ok = (
                isinstance(
                    mod, (nn.Conv2d, nn.Linear, nn.Flatten, *_ELEMENTWISE_MODULES, *_POOL_MODULES)
                )
                or type(mod).__name__ == "_KeyedDropout"
            )
            if isinstance(mod, nn.Conv2d) and (
                mod.padding_mode != "zeros" or isinstance(mod.padding, str)
            ):
                ok = False
            if not ok:
                raise Unsupported(f"layer {node.target!r} ({type(mod).__name__})")
        elif node.op == "call_function":
            if node.target not in _ELEMENTWISE_FUNCS | _POOL_FUNCS | {torch.flatten}:
                raise Unsupported(f"function {getattr(node.target, '__name__', node.target)}")
        elif node.op == "call_method":
            if node.target not in ("flatten", "view", "reshape", "size", "relu"):
                raise Unsupported(f"method .{node.target}()")
        elif node.op == "get_attr":
            raise Unsupported(f"attribute access {node.target!r}")

    def __call__(
        self, params: dict[str, Tensor], inputs: Tensor, masks: dict[str, Tensor] | None = None
    ) -> Tensor:
        """Logits of every worker.

        Parameters
        ----------
        params : dict of Tensor[n, ...]
            Stacked parameters by name.
        inputs : Tensor[n, B, ...]
            Each worker's batch.
        masks : dict of Tensor[n, B, ...], optional
            Keyed dropout masks by module name (None: evaluation, no dropout).

        Returns
        -------
        Tensor[n, B, ...]
        """
        n = inputs.shape[0]
        env: dict[str, Any] = {}

        def load(a: Any) -> Any:
            return fx.node.map_arg(a, lambda nd: env[nd.name])

        for node in self.graph.nodes:
            if node.op == "placeholder":
                if inputs.dim() == 5:
                    g = _to_g(inputs)  # [B, n*C, H, W]
                    if self.channels_last:
                        g = g.contiguous(memory_format=torch.channels_last)
                    env[node.name] = _Value(g, "G", n)
                else:
                    env[node.name] = _Value(inputs, "M", n)
            elif node.op == "call_module":
                env[node.name] = self._module(node, load(node.args), params, masks, n)
            elif node.op == "call_function":
                env[node.name] = self._function(node.target, load(node.args), load(node.kwargs), n)
            elif node.op == "call_method":
                env[node.name] = self._method(node.target, load(node.args), n)
            elif node.op == "output":
                out = load(node.args[0])
                return out.to_m() if isinstance(out, _Value) else out
        raise Unsupported("graph has no output")

    def _module(
        self,
        node: fx.Node,
        args: tuple,
        params: dict[str, Tensor],
        masks: dict[str, Tensor] | None,
        n: int,
    ) -> _Value:
        name = str(node.target)
        mod = self.modules[name]
        v: _Value = args[0]
        if isinstance(mod, nn.Conv2d):
            if v.layout != "G":
                raise Unsupported(f"conv {name!r} on a non-image input")
            w = params[f"{name}.weight"]  # [n, Co, Ci/g, k, k]
            b = params.get(f"{name}.bias")
            out = F.conv2d(
                v.t,
                w.reshape(-1, *w.shape[2:]),
                None if b is None else b.reshape(-1),
                mod.stride,
                mod.padding,
                mod.dilation,
                mod.groups * n,
            )  # [B, n*Co, H', W']
            return _Value(out, "G", n)
        if isinstance(mod, nn.Linear):
            x = v.to_m()  # [n, B, ..., F]
            flat = x.reshape(n, -1, x.shape[-1])  # [n, B*, F]
            w = params[f"{name}.weight"]  # [n, out, F]
            b = params.get(f"{name}.bias")
            out = (
                torch.baddbmm(b.unsqueeze(1), flat, w.transpose(1, 2))
                if b is not None
                else torch.bmm(flat, w.transpose(1, 2))
            )  # [n, B*, out]
            return _Value(out.reshape(*x.shape[:-1], w.shape[1]), "M", n)
        if isinstance(mod, nn.Flatten):
            return self._flatten(v, mod.start_dim, mod.end_dim, n)
        if type(mod).__name__ == "_KeyedDropout":
            if masks is None:
                return v
            m = masks[name]  # [n, B, ...]
            return _Value(v.t * (_to_g(m) if v.layout == "G" else m), v.layout, n)
        if isinstance(mod, _POOL_MODULES) and v.layout != "G":
            raise Unsupported(f"pooling {name!r} on a non-image input")
        return _Value(mod(v.t), v.layout, n)  # elementwise or pooling: layout unchanged

    def _flatten(self, v: _Value, start: int, end: int, n: int) -> _Value:
        if start != 1 or end != -1:
            raise Unsupported(f"flatten({start}, {end})")
        x = v.to_m()  # [n, B, ...]
        return _Value(x.reshape(n, x.shape[1], -1), "M", n)

    def _function(self, fn: Callable, args: tuple, kwargs: dict, n: int) -> Any:
        if fn is torch.flatten:
            start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
            return self._flatten(args[0], start, end, n)
        values = [a for a in args if isinstance(a, _Value)]
        layouts = {a.layout for a in values}
        if len(layouts) > 1:  # mixed layouts: bring all to M
            args = tuple(_Value(a.to_m(), "M", n) if isinstance(a, _Value) else a for a in args)
            layouts = {"M"}
        if fn in _POOL_FUNCS and layouts != {"G"}:
            raise Unsupported("pooling on a non-image input")
        raw = [a.t if isinstance(a, _Value) else a for a in args]
        out = fn(*raw, **kwargs)
        return _Value(out, layouts.pop(), n) if values else out

    def _method(self, name: str, args: tuple, n: int) -> Any:
        v = args[0]
        if name == "size":
            shape = v.logical_shape()
            return shape[args[1]] if len(args) > 1 else torch.Size(shape)
        if name == "relu":
            return _Value(v.t.relu(), v.layout, n)
        if name == "flatten":
            return self._flatten(v, *(list(args[1:]) + [1, -1][len(args) - 1 :]), n)
        shape = args[1:] if len(args) > 2 or not isinstance(args[1], tuple | list) else args[1]
        logical = v.logical_shape()
        if len(shape) == 2 and shape[0] in (logical[0], -1) and shape[1] == -1:
            return self._flatten(v, 1, -1, n)  # x.view(x.size(0), -1)
        raise Unsupported(f".{name}{tuple(shape)}")
