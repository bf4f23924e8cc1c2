"""Hot reload of the definition files (rules, tag catalogue) without a restart.

One mechanism for both: ``FileWatcher`` polls a file's modification stamp; a change is loaded and
validated by the same loader the worker starts with, and only a valid result is handed back to be
swapped in. An invalid change is rejected with the loader's one-line error (file, item, field) and
whatever was active stays active.

After a catalogue change every user must reach the new definitions: on their next evaluation
(event or timer) and, for users who have neither soon, by ``Sweep``: a bounded background pass
that makes a chunk of users due now on each timer tick (a cursor over the due set, which holds
every live user), so the time-driven path re-evaluates them at its usual pace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from prometheus_client import Counter

from stream.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")


class FileWatcher(Generic[T]):
    """Loads ``path`` again when it changed (``poll``). ``what`` names the file in log lines
    (``kept``: what a rejection keeps); ``reloads`` counts ``applied`` / ``rejected`` changes."""

    def __init__(self, path: Path, what: str, kept: str, load: Callable[[Path], T], reloads: Counter) -> None:
        self.path, self.what, self.kept, self.load, self.reloads = path, what, kept, load, reloads
        self.stamp = self._stamp()

    def _stamp(self) -> tuple[float, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_mtime, stat.st_size)

    def poll(self) -> T | None:
        """The newly loaded definitions when the file changed and is valid; else None (a rejected
        change is logged, counted, and not retried until the file changes again)."""
        stamp = self._stamp()
        if stamp is None or stamp == self.stamp:
            return None
        self.stamp = stamp
        try:
            loaded = self.load(self.path)
        except ConfigError as exc:
            self.reloads.labels("rejected").inc()
            log.error("%s change rejected, %s: %s", self.what, self.kept, exc)
            return None
        self.reloads.labels("applied").inc()
        return loaded


class DueMarker(Protocol):
    async def mark_due_chunk(self, cursor: int, count: int) -> tuple[int, int]: ...


class Sweep:
    """A bounded pass over every live user, ``chunk`` users per ``tick``; ``start`` (re)starts it."""

    def __init__(self, store: DueMarker, chunk: int) -> None:
        self.store, self.chunk = store, chunk
        self.cursor: int | None = None  # None: no sweep running
        self.marked = 0

    def start(self) -> None:
        self.cursor, self.marked = 0, 0

    @property
    def running(self) -> bool:
        return self.cursor is not None

    async def tick(self) -> int:
        """Mark the next chunk due now; returns how many users were marked."""
        if self.cursor is None:
            return 0
        cursor, marked = await self.store.mark_due_chunk(self.cursor, self.chunk)
        self.marked += marked
        self.cursor = cursor or None
        if self.cursor is None:
            log.info("catalogue sweep done: %d users made due for re-evaluation", self.marked)
        return marked
