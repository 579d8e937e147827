"""Fixtures of the Flower tests."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from flower_helpers import flower_processes


@pytest.fixture(scope="module", autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Fail when a Ray or Flower process started during the module outlives it.

    Processes that were running before the module (someone else's) are ignored; the
    module's own get 20 s to exit.
    """
    before = set(flower_processes())
    yield
    end = time.time() + 20
    while set(flower_processes()) - before and time.time() < end:
        time.sleep(0.2)
    left = {p: c for p, c in flower_processes().items() if p not in before}
    assert not left, f"left running: {left}"
