"""A user's published profile as typed JSON values: the one implementation behind the worker's
``/profiles/{id}`` and the read API's ``/v1/profiles`` (``stream.api``)."""

from __future__ import annotations

from typing import Any

from stream.storage.reads import Reads
from stream.tagging.definitions import TagCatalogue
from stream.tagging.profile import type_profile


async def typed_profile(reads: Reads, uid: str, catalogue: TagCatalogue) -> dict[str, Any] | None:
    """The profile of ``uid`` typed by ``type_profile`` (numbers, booleans, ISO 8601 times), or
    None when there is none (unknown user, expired or erased)."""
    stored = await reads.profile(uid)
    return type_profile(stored, catalogue) if stored else None


async def typed_profiles(reads: Reads, uids: list[str], catalogue: TagCatalogue) -> list[dict[str, Any] | None]:
    """``typed_profile`` of each of ``uids``, in one round trip."""
    return [type_profile(p, catalogue) if p else None for p in await reads.profiles(uids)]
