"""The erasure agent: erase each requested user, then publish the confirmation, then ack."""

from __future__ import annotations

from typing import Any

from stream.contracts.topics import Topics
from stream.service.privacy import PrivacyService


def register_privacy(app: Any, privacy: PrivacyService, topics: Topics) -> Any:
    """Register the agent consuming the erase-request topic. Returns the agent."""
    requests = app.topic(topics.erase_requests, value_type=bytes, value_serializer="raw", key_serializer="raw")

    async def erase_users(stream: Any) -> None:
        # Erasing is idempotent, so a crash between erasing and acking only repeats it (and its
        # confirmation, which carries the same request id).
        async for event in stream.events():
            confirmation = await privacy.erase_request(event.message)
            if confirmation is not None:
                value = confirmation.model_dump_json().encode()
                await app.producer.send_and_wait(
                    topics.erase_confirmations, confirmation.user_id.encode(), value, None, None, None
                )

    return app.agent(requests, name="portrait-privacy")(erase_users)
