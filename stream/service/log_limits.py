"""Rate limit for repeated log lines: an outage must not write a log line per retry.

A 32 s broker outage once wrote 88,622 ERROR lines (issue 12): every consumer fetch and every
producer retry logged its own copy. ``RepeatLimit`` lets the first ``burst`` records of the same
logger, level and message template through per ``window_s``, drops the rest, and says on the next
one that passes how many it dropped, so the log stays readable and nothing is silently hidden.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

Key = tuple[str, int, str]


class RepeatLimit(logging.Filter):
    """A ``logging.Filter`` for handlers; records below ``min_level`` always pass."""

    def __init__(
        self,
        window_s: float = 60.0,
        burst: int = 5,
        min_level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.window_s, self.burst, self.min_level, self.clock = window_s, burst, min_level, clock
        self._windows: dict[Key, tuple[float, int, int]] = {}  # key -> (window start, passed, dropped)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        start, passed, dropped = self._windows.get(key, (now, 0, 0))
        if now - start >= self.window_s:
            start, passed = now, 0  # a new window; ``dropped`` is reported on the record that passes
        if passed >= self.burst:
            self._windows[key] = (start, passed, dropped + 1)
            return False
        if dropped:
            record.msg = f"{record.msg} [{dropped} similar messages suppressed]"
        self._windows[key] = (start, passed + 1, 0)
        if len(self._windows) > 10_000:  # bounded memory: forget windows that have ended
            self._windows = {k: v for k, v in self._windows.items() if now - v[0] < self.window_s or v[2]}
        return True


def limit_repeats(logger: logging.Logger | None = None, window_s: float = 60.0, burst: int = 5) -> RepeatLimit:
    """Install one ``RepeatLimit`` on every handler of ``logger`` (default: the root logger)."""
    limit = RepeatLimit(window_s=window_s, burst=burst)
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(limit)
    return limit
