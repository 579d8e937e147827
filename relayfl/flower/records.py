"""Conversions between Flower records and relayfl's flat relayed vectors.

A model travels in Flower as an ``ArrayRecord`` (named NumPy arrays, in order); the relay
works on one flat floating-point vector (:func:`relayfl.relay.pack`). Integer arrays
(e.g. BatchNorm's ``num_batches_tracked``) are never relayed: they stay local, as in
:func:`relayfl.relay.pack`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
from torch import Tensor

from relayfl.relay import Layout, pack, unpack

__all__ = [
    "arrays_to_flat",
    "config_record",
    "flat_to_arrays",
    "metric_record",
    "ndarrays_to_record",
    "record_to_ndarrays",
    "record_to_tensors",
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


def metric_record(values: Mapping[str, Any]) -> MetricRecord:
    """A ``MetricRecord`` of the numeric values (bools and strings are dropped: Flower
    rejects them)."""
    return MetricRecord(
        {
            k: float(v) if isinstance(v, (float, np.floating)) else int(v)
            for k, v in values.items()
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        }
    )
