"""The data-stream framing of :class:`~relayfl.transport.grpc.GrpcTransport`.

A data connection carries frames, each a 16-byte prefix, a JSON header and a payload::

    magic b"RLF1" | header length (uint32, big endian) | payload length (uint64) |
    header (UTF-8 JSON, at most 64 KiB) | payload (raw tensor bytes, little endian)

The connecting side opens with a ``hello`` frame (``run``, ``sender``, ``token``); the
listening side answers ``welcome`` or ``refused`` (with a ``reason``) and closes on a
refusal. Then every frame is a ``data`` frame whose header holds ``run``, ``step``,
``sender``, ``tree``, ``count``, ``dtype`` and ``shape`` (docs/algorithm.md section 1.1: a
message and its count).

Pure bytes: no sockets here, so tests can build every malformed frame by hand.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import torch
from torch import Tensor

from relayfl.transport.base import DTYPES, Message, Rejected, dtype_name

__all__ = [
    "MAGIC",
    "MAX_HEADER_BYTES",
    "PREFIX",
    "data_header",
    "encode",
    "parse_data_header",
    "parse_header",
    "parse_json",
    "parse_prefix",
    "payload_view",
]

MAGIC = b"RLF1"
#: magic, header length, payload length.
PREFIX = struct.Struct("!4sIQ")
MAX_HEADER_BYTES = 64 * 1024


def encode(header: dict[str, Any], payload_bytes: int = 0) -> bytes:
    """Prefix and header of one frame (the payload follows separately, unencoded)."""
    raw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    return PREFIX.pack(MAGIC, len(raw), payload_bytes) + raw


def parse_prefix(prefix: bytes, max_payload_bytes: int) -> tuple[int, int]:
    """Header and payload lengths from a 16-byte prefix.

    Raises
    ------
    Rejected
        ``malformed`` (bad magic) or ``oversized`` (header or payload too large).
    """
    magic, header_len, payload_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise Rejected("malformed", f"frame starts with {magic!r}, not {MAGIC!r}")
    if header_len > MAX_HEADER_BYTES:
        raise Rejected("oversized", f"header of {header_len} bytes (at most {MAX_HEADER_BYTES})")
    if payload_len > max_payload_bytes:
        raise Rejected(
            "oversized",
            f"payload of {payload_len} bytes; this run's messages have at most {max_payload_bytes}",
        )
    return header_len, payload_len


def parse_json(raw: bytes, what: str) -> Any:
    """``raw`` as JSON, or ``malformed`` in one line: not UTF-8, not JSON, nested too
    deep (``RecursionError``) or a number of thousands of digits (Python's
    ``int_max_str_digits``) are all bad input from a peer, never an internal error."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise Rejected("malformed", f"{what} is not UTF-8 JSON ({err})") from None
    except (ValueError, RecursionError) as err:
        raise Rejected("malformed", f"{what} is hostile JSON ({str(err)[:80]})") from None


def parse_header(raw: bytes) -> dict[str, Any]:
    """The JSON header as a dict (``malformed`` when it is not one)."""
    header = parse_json(raw, "header")
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
        raise Rejected("malformed", "header is not a JSON object with a 'kind'")
    return header


def data_header(message: Message) -> dict[str, Any]:
    """The header of ``message``'s data frame."""
    return {
        "kind": "data",
        "run": message.run_id,
        "step": message.step,
        "sender": message.sender,
        "tree": message.tree,
        "count": message.count,
        "dtype": dtype_name(message.payload.dtype),
        "shape": list(message.payload.shape),
    }


def _int(header: dict[str, Any], key: str) -> int:
    value = header.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise Rejected("malformed", f"header field {key!r} must be an integer, got {value!r}")
    return value


def parse_data_header(
    header: dict[str, Any], payload_len: int
) -> tuple[dict[str, Any], torch.dtype]:
    """Check a data header's fields and that they agree with the payload length.

    Returns
    -------
    header, dtype : dict, torch.dtype
        The header (``shape`` as a tuple) and the payload's dtype.
    """
    for key in ("step", "sender", "tree"):
        _int(header, key)
    if not isinstance(header.get("run"), str):
        raise Rejected("malformed", "header field 'run' must be a string")
    count = header.get("count")
    if not isinstance(count, (int, float)) or isinstance(count, bool) or not math.isfinite(count):
        raise Rejected("bad-count", f"count must be a finite number, got {count!r}")
    name = header.get("dtype")
    if name not in DTYPES:
        raise Rejected("wrong-dtype", f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    shape = header.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > 8
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
    ):
        raise Rejected("malformed", f"shape must be a list of sizes, got {shape!r}")
    dtype = DTYPES[name]
    numel = math.prod(shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if numel * itemsize != payload_len:
        raise Rejected(
            "malformed",
            f"header says {numel} x {name} ({numel * itemsize} bytes) but the payload "
            f"has {payload_len} bytes",
        )
    return {**header, "shape": tuple(shape)}, dtype


def payload_view(tensor: Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy."""
    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())
