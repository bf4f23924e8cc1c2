"""Privacy wire models: erase requests in, erasure confirmations out."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field

from stream.contracts.events import Id


class EraseRequest(BaseModel):
    """A message on the erase-request topic."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    user_id: Id
    request_id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1, max_length=200)


class ErasureConfirmation(BaseModel):
    """Published on the confirmations topic once a user is erased."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str
    user_id: str
    suppression_token: str  # what the suppression list keeps instead of the id
    removed: list[str]  # keys and memberships removed (empty when already erased)
    erased_at: float
