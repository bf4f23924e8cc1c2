"""Waiting on a worker: progress-based, so a slow machine never fails and a stuck worker does."""

from __future__ import annotations

import asyncio

import pytest
from portrait_dev.harness import Stalled, wait_processed


class GrowingStats:
    """Stands in for the store's stats read: the counter grows by one per read until ``stop``."""

    def __init__(self, stop: int) -> None:
        self.value, self.stop = 0, stop

    async def stats(self) -> dict[str, int]:
        self.value = min(self.value + 1, self.stop)
        return {"messages": self.value}


def test_slow_but_steady_progress_is_waited_for_past_any_fixed_timeout() -> None:
    store = GrowingStats(stop=60)  # ~3 s at one increment per 50 ms poll
    result = asyncio.run(wait_processed(store, 60, timeout=None, stall_s=1.0))  # type: ignore[arg-type]
    assert result.total == 60


def test_a_stall_fails_saying_where_it_stopped() -> None:
    store = GrowingStats(stop=7)
    with pytest.raises(Stalled, match="messages stopped at 7 of 60"):
        asyncio.run(wait_processed(store, 60, timeout=None, stall_s=0.3))  # type: ignore[arg-type]
