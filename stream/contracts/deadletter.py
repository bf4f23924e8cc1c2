"""Dead-letter envelope: why a message was rejected, plus everything needed to re-submit it."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

Reason = Literal[
    "invalid_json",
    "schema_violation",
    "unknown_type",
    "future_timestamp",
    "too_old",
    "unknown_currency",
    "processing_error",
    "erased_user",
    "blocked_identifier",
    "too_large",
]
# A message over the accepted size (PORTRAIT_MAX_MESSAGE_BYTES) is dead-lettered with only this
# much of its bytes, its full size and its SHA-256, so the dead letter itself always fits the
# broker's message limit (a base64 copy of a 1 MB message would not).
TOO_LARGE_PREFIX_BYTES = 4096
REASONS: tuple[str, ...] = Reason.__args__  # type: ignore[attr-defined]


class Rejected(Protocol):
    """What a dead letter keeps of a message: a consumed Kafka message or one event of an envelope."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes: ...


class DeadLetter(BaseModel):
    """One rejected message. ``original_b64`` holds the exact bytes received, or their first
    ``TOO_LARGE_PREFIX_BYTES`` when ``truncated`` (reason ``too_large``): ``original_size`` and
    ``original_sha256`` describe the whole message either way."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: Reason
    error: str
    original_b64: str
    key_b64: str | None
    source_topic: str
    source_partition: int
    source_offset: int
    processor_version: str
    dead_lettered_at: float
    original_size: int | None = None
    original_sha256: str | None = None
    truncated: bool = False

    @classmethod
    def for_message(
        cls, message: Rejected, reason: Reason, error: str, processor_version: str, *, withhold_payload: bool = False
    ) -> DeadLetter:
        """The dead letter of ``message``. ``withhold_payload``: keep neither its value nor its key
        (an erased user's event: the personal data the erasure removed), only where it came from."""
        value, key = (b"", None) if withhold_payload else (message.value, message.key)
        truncated = reason == "too_large" and len(value) > TOO_LARGE_PREFIX_BYTES
        return cls(
            reason=reason,
            error=error[:2000],
            original_b64=base64.b64encode(value[:TOO_LARGE_PREFIX_BYTES] if truncated else value).decode(),
            original_size=len(value),
            original_sha256=hashlib.sha256(value).hexdigest(),
            truncated=truncated,
            key_b64=base64.b64encode(key).decode() if key is not None else None,
            source_topic=message.topic,
            source_partition=message.partition,
            source_offset=message.offset,
            processor_version=processor_version,
            dead_lettered_at=time.time(),
        )

    @property
    def original(self) -> bytes:
        return base64.b64decode(self.original_b64)

    @property
    def key(self) -> bytes | None:
        return base64.b64decode(self.key_b64) if self.key_b64 is not None else None
