"""The erasure agent: erase each requested user, then publish the confirmation, then ack."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from stream.contracts.deadletter import DeadLetter, Reason
from stream.contracts.privacy import EraseRequest
from stream.contracts.topics import Topics
from stream.service.privacy import erase
from stream.service.processor import Processor

log = logging.getLogger(__name__)


def register_privacy(app: Any, processor: Processor, topics: Topics) -> Any:
    """Register the agent consuming the erase-request topic. Returns the agent."""
    requests = app.topic(topics.erase_requests, value_type=bytes, value_serializer="raw", key_serializer="raw")

    async def erase_users(stream: Any) -> None:
        # Erasing is idempotent, so a crash between erasing and acking only repeats it (and its
        # confirmation, which carries the same request id).
        async for event in stream.events():
            message = event.message
            try:
                request = EraseRequest.model_validate_json(message.value)
            except ValidationError as exc:
                bad_json = any(e["type"] == "json_invalid" for e in exc.errors())
                reason: Reason = "invalid_json" if bad_json else "schema_violation"
                letter = DeadLetter.build(
                    reason,
                    str(exc),
                    message.value,
                    message.key,
                    message.topic,
                    message.partition,
                    message.offset,
                    processor.settings.processor_version,
                )
                await processor.send_dead_letters([letter])
                processor.metrics.dead_letters.labels(reason).inc()
                continue
            confirmation = await erase(processor.store, request)
            await app.producer.send_and_wait(
                topics.erase_confirmations,
                request.user_id.encode(),
                confirmation.model_dump_json().encode(),
                None,
                None,
                None,
            )
            processor.metrics.erasures.inc()
            log.info(
                "erased a user (request %s): %d keys/memberships removed", request.request_id, len(confirmation.removed)
            )

    return app.agent(requests, name="portrait-privacy")(erase_users)
