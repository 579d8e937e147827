"""What a Flower user hands relayfl from the command line: the initial model and the
run config.

* :func:`load_initial`: ``--initial FILE``, the initial model for a client that cannot
  give one (a Message-API ``ClientApp``): a ``torch.save``'d ``state_dict`` (``.pt``,
  ``.pth``; keys kept, as ``ArrayRecord(model.state_dict())``) or an ``.npz``: named
  arrays (``np.savez(path, **state_dict)``, names kept) or arrays in order
  (``np.savez(path, *get_weights(net))``; keys ``"0"``, ``"1"``, ... as
  ``ArrayRecord(list_of_ndarrays)``, enough for a NumPyClient).
* :func:`parse_run_config`: ``--run-config "k=v k2=v2"``, parsed as ``flwr run
  --run-config`` parses it (TOML values: ``2``, ``0.1``, ``"text"``, ``true``).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from relayfl.errors import ConfigError

__all__ = ["load_client", "load_initial", "parse_run_config"]


def load_client(spec: str) -> Any:
    """The object ``"module:attribute"`` names (a ``client_fn`` or a ``ClientApp``),
    imported from the current folder or the installed packages.

    Raises
    ------
    ConfigError
        When ``spec`` is not ``module:attribute`` or cannot be imported.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"--client {spec!r} is not module:attribute; write e.g. my_app:client_fn")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"cannot import {module_name!r} for --client {spec!r} ({err}); run from the "
            "folder that holds it, or install it"
        ) from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    return obj


def load_initial(path: str | Path) -> ArrayRecord:
    """The initial model saved at ``path`` (``.pt`` / ``.pth`` state_dict, or ``.npz``).

    Raises
    ------
    ConfigError
        When the file is missing, of another kind, or holds no arrays.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"--initial {p} does not exist; save it with torch.save(net.state_dict(), path)"
        )
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as npz:
            named = {k: np.ascontiguousarray(npz[k]) for k in npz.files}
        positional = [f"arr_{i}" for i in range(len(named))]
        # np.savez(path, *arrays) names them arr_0, arr_1, ...: keys "0", "1", ... as
        # ArrayRecord(list); np.savez(path, **state_dict) keeps the names
        if list(named) == positional:
            record = ArrayRecord(list(named.values()))
        else:
            record = ArrayRecord({k: Array(v) for k, v in named.items()})
    elif p.suffix in (".pt", ".pth"):
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ConfigError(f"--initial {p} is not a torch.save'd state_dict ({err})") from None
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise ConfigError(
                f"--initial {p} holds a {type(state).__name__}, not a state_dict of tensors; "
                "save it with torch.save(net.state_dict(), path)"
            )
        record = ArrayRecord({k: v.detach().cpu() for k, v in state.items()})
    else:
        raise ConfigError(
            f"--initial {p} is neither .pt/.pth (torch.save'd state_dict) nor .npz "
            "(np.savez of the arrays in order)"
        )
    if not record:
        raise ConfigError(f"--initial {p} holds no arrays")
    return record


def parse_run_config(text: str | None) -> dict[str, Any]:
    """``"k=v k2=v2"`` as a dict, with Flower's own parser (``flwr run --run-config``).

    Raises
    ------
    ConfigError
        When ``text`` is not ``key=value`` pairs with TOML values.
    """
    if not text:
        return {}
    from flwr.common.config import parse_config_args

    if not text.strip().endswith(".toml"):  # Flower's parser skips what is not k=v
        pair = re.compile(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)")  # its own pattern
        rest = pair.sub(" ", text).split()
        if rest:
            raise ConfigError(
                f"--run-config {text!r}: {rest[0]!r} is not key=value (no spaces around =); "
                'write e.g. --run-config "local-epochs=2 name=\\"x\\""'
            )
    try:
        return dict(parse_config_args([text]))
    except Exception as err:
        raise ConfigError(
            f"--run-config {text!r} is not key=value pairs with TOML values ({err}); "
            'write e.g. --run-config "local-epochs=2 name=\\"x\\""'
        ) from None
