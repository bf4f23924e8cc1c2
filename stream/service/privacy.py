"""Right to erasure and right of access.

Erasure removes every Redis key and membership of a user in one script, puts a hash of the id on
a suppression list (late or replayed events are dead-lettered as ``erased_user`` with their payload
withheld; triggers decided before the erasure are not sent), and emits a confirmation on the
``privacy.erased`` topic. Requests arrive on the ``privacy.erase`` topic (``PrivacyService``: a
malformed request is dead-lettered like a malformed event) or from ``portrait privacy erase``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import ValidationError

from stream.contracts.deadletter import Rejected
from stream.contracts.privacy import EraseRequest, ErasureConfirmation
from stream.contracts.topics import Topics
from stream.core.intake import rejection
from stream.metrics import Metrics
from stream.service.deadletters import DeadLetters
from stream.settings import Settings
from stream.storage.keys import erased_token
from stream.storage.store import Store
from stream.tagging.state import UserState

log = logging.getLogger(__name__)


class PrivacyService:
    """Erase requests consumed from Kafka."""

    def __init__(self, store: Store, dead_letters: DeadLetters, metrics: Metrics) -> None:
        self.store, self.dead_letters, self.metrics = store, dead_letters, metrics

    async def erase_request(self, message: Rejected) -> ErasureConfirmation | None:
        """Decode an erase request and erase its user; returns the confirmation to publish, or None
        when the request was malformed (dead-lettered with the intake's reason and error)."""
        try:
            request = EraseRequest.model_validate_json(message.value)
        except ValidationError as exc:
            reason, error = rejection(exc)
            await self.dead_letters.reject(reason, [(message, error)])
            return None
        confirmation = await erase(self.store, request)
        self.metrics.erasures.inc()
        removed = len(confirmation.removed)
        log.info("erased a user (request %s): %d keys/memberships removed", request.request_id, removed)
        return confirmation


async def erase(store: Store, request: EraseRequest) -> ErasureConfirmation:
    """Erase ``request.user_id`` everywhere in Redis; idempotent."""
    removed = await store.erase(request.user_id)
    return ErasureConfirmation(
        request_id=request.request_id,
        user_id=request.user_id,
        suppression_token=erased_token(request.user_id),
        removed=removed,
        erased_at=time.time(),
    )


async def export(store: Store, uid: str) -> dict[str, Any]:
    """Everything stored about ``uid`` (right of access), as plain JSON-able data."""
    keys = store.keys
    shard = keys.shard(uid)
    pipe = store.client.pipeline(transaction=False)
    pipe.hgetall(keys.state(uid))
    pipe.hgetall(keys.profile(uid))
    pipe.zscore(keys.due(shard), uid)
    for metric in ("r", "f", "m"):
        pipe.zscore(keys.rank(shard, metric), uid)
    state_raw, profile_raw, due, *ranks = await pipe.execute()
    state = UserState.from_bytes(state_raw[b"blob"]) if state_raw.get(b"blob") else None
    published = state.published if state is not None else {}
    pairs = list(published.items())
    flags = await store.reads.memberships([uid], pairs)
    memberships = [keys.audience(shard, *pair) for pair, (member,) in zip(pairs, flags, strict=True) if member]
    return {
        "user_id": uid,
        "erased": bool(await store.erased([uid])),
        "profile": {k.decode(): v.decode() for k, v in profile_raw.items()},
        "state": state.to_doc() if state is not None else None,
        "audiences": memberships,
        "next_reevaluation": due,
        "rfm_rank_metrics": dict(zip(("recency", "frequency", "monetary"), ranks, strict=True)),
        "keys": {
            "state": keys.state(uid),
            "profile": keys.profile(uid),
        },
    }


async def erase_and_confirm(settings: Settings, uid: str, request_id: str | None = None) -> ErasureConfirmation:
    """``portrait privacy erase``: erase directly in Redis, then publish the confirmation."""
    from aiokafka import AIOKafkaProducer

    request = EraseRequest(user_id=uid, **({"request_id": request_id} if request_id else {}))
    async with Store.open(settings) as store:
        confirmation = await erase(store, request)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers(), acks="all", **settings.kafka_client_kwargs()
    )
    await producer.start()
    try:
        topic = Topics(settings.topic_prefix).erase_confirmations
        await producer.send_and_wait(topic, confirmation.model_dump_json().encode(), key=uid.encode())
    finally:
        await producer.stop()
    return confirmation


async def export_json(settings: Settings, uid: str) -> dict[str, Any]:
    async with Store.open(settings) as store:
        return await export(store, uid)
