"""Conversions between Flower records and relayfl's flat relayed vectors.

A model travels in Flower as an ``ArrayRecord`` (named NumPy arrays, in order); the relay
works on one flat floating-point vector (:func:`relayfl.relay.pack`). Integer arrays
(e.g. BatchNorm's ``num_batches_tracked``) are never relayed: they stay local, as in
:func:`relayfl.relay.pack`.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
from torch import Tensor

from relayfl.errors import ConfigError
from relayfl.relay import Layout, pack, unpack

__all__ = [
    "arrays_to_flat",
    "check_like",
    "client_metrics",
    "config_record",
    "flat_to_arrays",
    "json_metrics",
    "metric_record",
    "ndarrays_to_record",
    "record_to_ndarrays",
    "record_to_tensors",
    "scalar",
    "tensors_to_record",
]


def record_to_ndarrays(record: ArrayRecord) -> list[np.ndarray]:
    """The record's arrays in order (NumPyClient's ``parameters``)."""
    return record.to_numpy_ndarrays()


def ndarrays_to_record(arrays: list[np.ndarray]) -> ArrayRecord:
    """A record with keys ``"0"``, ``"1"``, ... (Flower's own convention for lists)."""
    return ArrayRecord([np.ascontiguousarray(a) for a in arrays])


def arrays_to_flat(record: ArrayRecord) -> tuple[Tensor, Layout]:
    """The floating-point arrays of ``record`` as one flat vector ``Tensor[d]``.

    Returns the vector (in at least float32, float64 models stay float64) and the
    :class:`relayfl.relay.Layout` that :func:`flat_to_arrays` needs.
    """
    named = [(k, torch.from_numpy(a.numpy())) for k, a in record.items()]
    return pack(named)


def flat_to_arrays(flat: Tensor, layout: Layout, like: ArrayRecord) -> ArrayRecord:
    """Inverse of :func:`arrays_to_flat`; local (non-floating) arrays are taken from
    ``like``, keys keep the order of ``like``."""
    relayed = unpack(flat.detach().cpu(), layout)
    out = {}
    for k, a in like.items():
        out[k] = Array(np.ascontiguousarray(relayed[k].numpy())) if k in relayed else a
    return ArrayRecord(out)


def tensors_to_record(tensors: Mapping[str, Tensor]) -> ArrayRecord:
    """Named tensors (e.g. :meth:`relayfl.flower.peer.PeerMixer.state_dict`) as a record."""
    return ArrayRecord(
        {k: Array(np.ascontiguousarray(t.detach().cpu().numpy())) for k, t in tensors.items()}
    )


def record_to_tensors(record: ArrayRecord) -> dict[str, Tensor]:
    """Inverse of :func:`tensors_to_record`."""
    return {k: torch.from_numpy(a.numpy()) for k, a in record.items()}


def config_record(values: Mapping[str, Any]) -> ConfigRecord:
    """A ``ConfigRecord`` of the values it can hold (None dropped, tuples as lists)."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if v is None:
            continue
        out[k] = list(v) if isinstance(v, tuple) else v
    return ConfigRecord(out)


def _number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def scalar(values: Mapping[str, Any], keys: Sequence[str]) -> float:
    """The first of ``keys`` in ``values`` that holds one number, as float; NaN when none
    does (a list, string or bytes under the key is not a scalar and is skipped)."""
    for k in keys:
        if k in values and _number(values[k]):
            return float(values[k])
    return math.nan


def metric_record(values: Mapping[str, Any]) -> MetricRecord:
    """A ``MetricRecord`` of what it can hold: numbers and lists of numbers (bools,
    strings and bytes are dropped: Flower's ``MetricRecord`` rejects them)."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if _number(v):
            out[k] = float(v) if isinstance(v, float | np.floating) else int(v)
        elif isinstance(v, list | tuple) and v and all(_number(x) for x in v):
            floats = any(isinstance(x, float | np.floating) for x in v)
            out[k] = [float(x) if floats else int(x) for x in v]
    return MetricRecord(out)


def client_metrics(values: Mapping[str, Any]) -> ConfigRecord:
    """A client's own metrics as a ``ConfigRecord``, which holds every value type
    Flower allows in metrics (int, float, str, bytes, bool and lists of one of them);
    NumPy scalars become Python numbers, other values are dropped."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, bool | int | float | str | bytes):
            out[k] = v
        elif isinstance(v, list | tuple) and v:
            items = [x.item() if isinstance(x, np.generic) else x for x in v]
            if all(_number(x) for x in items):
                floats = any(isinstance(x, float) for x in items)
                out[k] = [float(x) for x in items] if floats else items
            elif len({type(x) for x in items}) == 1 and isinstance(items[0], str | bytes | bool):
                out[k] = items
    return ConfigRecord(out)


def json_metrics(record: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics for ``results.json``: bytes as base64 text, everything else as is."""

    def enc(v: Any) -> Any:
        if isinstance(v, bytes):
            return base64.b64encode(v).decode("ascii")
        if isinstance(v, list):
            return [enc(x) for x in v]
        return v

    return {k: enc(v) for k, v in record.items()}


def check_like(sent: ArrayRecord, got: ArrayRecord, who: str) -> None:
    """Refuse arrays that do not match, position by position, those sent to the client.

    Raises
    ------
    ConfigError
        Naming the first position whose shape or dtype differs (or the counts), e.g. a
        ``get_weights`` that lists the arrays in another order than ``set_weights``.
    """
    a, b = list(sent.values()), list(got.values())
    if len(a) != len(b):
        raise ConfigError(
            f"{who} returned {len(b)} arrays for a model of {len(a)}; return the updated "
            "model, every array in the order it was received"
        )
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if tuple(x.shape) != tuple(y.shape) or x.dtype != y.dtype:
            raise ConfigError(
                f"{who} returned array {i} with shape {tuple(y.shape)} {y.dtype}, but was "
                f"sent shape {tuple(x.shape)} {x.dtype} there; return the arrays in the "
                "order, shapes and dtypes they were received"
            )
