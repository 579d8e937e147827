"""Type aliases shared across relayfl (closed sets of choices and tensor containers)."""

from __future__ import annotations

from typing import Literal

import torch

#: Decentralized algorithms the simulator runs (kebab-case, as on the CLI).
Algorithm = Literal[
    "relaysgd", "relaysgd-grad", "dpsgd", "d2", "gradient-tracking", "qgm", "sgp", "allreduce"
]

#: How a RelaySum sum S_i becomes an average (docs/algorithm.md section 1.2).
Normalization = Literal["world_size", "counts", "sum"]

#: What stands in for workers whose models have not arrived (section 1.2(1)).
Fill = Literal["initial", "latest"]

#: A worker id, 0..n-1.
NodeId = int

#: Named parameter tensors, as ``torch.func.functional_call`` takes them.
Params = dict[str, torch.Tensor]
