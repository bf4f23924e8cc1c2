"""Repeated log lines are rate limited per logger, level and template; nothing is hidden silently."""

from __future__ import annotations

import logging

from stream.service.log_limits import RepeatLimit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(msg: str, level: int = logging.ERROR, name: str = "aiokafka") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_a_burst_passes_then_repeats_are_dropped_and_counted_on_the_next_window() -> None:
    clock = Clock()
    limit = RepeatLimit(window_s=60, burst=3, clock=clock)
    passed = [limit.filter(_record("Unable connect to node %s")) for _ in range(1000)]
    assert passed.count(True) == 3 and passed[:3] == [True, True, True]
    clock.now = 61.0
    record = _record("Unable connect to node %s")
    assert limit.filter(record)
    assert record.msg == "Unable connect to node %s [997 similar messages suppressed]"


def test_different_templates_loggers_and_low_levels_are_independent() -> None:
    limit = RepeatLimit(window_s=60, burst=1, clock=Clock())
    assert limit.filter(_record("a"))
    assert not limit.filter(_record("a"))
    assert limit.filter(_record("b"))
    assert limit.filter(_record("a", name="faust"))
    assert limit.filter(_record("a", level=logging.WARNING))
    assert all(limit.filter(_record("a", level=logging.INFO)) for _ in range(100))
