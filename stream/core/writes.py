"""What one batch reads and writes per user: the records handed between the store and the pure core."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from stream.tagging.state import UserState


class Decided(NamedTuple):
    """One rule firing of an evaluation: sent (``reason`` empty) or suppressed, and when."""

    rule: str
    outcome: str  # send | suppressed
    reason: str  # the suppression reason, "" when sent
    at: float  # the evaluation time


@dataclass
class UserWrite:
    """Everything one user's update writes, applied atomically with the rest of its batch."""

    uid: str
    expected_version: int
    state: UserState | None  # None deletes the user
    profile: dict[str, str] = field(default_factory=dict)
    audience_add: list[tuple[str, str]] = field(default_factory=list)
    audience_remove: list[tuple[str, str]] = field(default_factory=list)
    due: float = 0.0
    ttl_s: int = 86400
    ranks: tuple[float, int, int] | None = None
    triggers: list[tuple[str, str]] = field(default_factory=list)  # outbox: (topic, trigger JSON)
    decisions: list[Decided] = field(default_factory=list)  # for metrics and offline reports
    learn: list[str] = field(default_factory=list)  # model training items (JSON) for the trainer's stream
    counters: dict[str, int] = field(default_factory=dict)  # added to P:v1:stats with the batch
    alias_to: str | None = None  # with state None: merged into this user, leave an alias behind
    blob: bytes | None = None  # the encoded state, once ``encode`` ran

    def encode(self) -> bytes:
        """The stored state blob (b"" deletes), encoded once. The batch plan calls this inside its
        per-user isolation, so a state that cannot be stored breaks only its own user."""
        if self.blob is None:
            self.blob = self.state.to_bytes() if self.state is not None else b""
        return self.blob


@dataclass
class LoadedUser:
    """One user as the store read them: the version a write must expect, and the state."""

    version: int
    state: UserState | None
    erased: bool = False  # on the suppression list: nothing of this user may be written again
