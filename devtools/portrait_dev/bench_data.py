"""What several bench scenarios share: users with 90-day histories made by the worker's own code,
percentiles, and cleaning a namespace (``portrait_dev.bench`` and ``portrait_dev.bench_api``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stream.settings import Settings


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    index = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[min(index, len(ordered) - 1)]


@dataclass
class Templates:
    """Users with 90-day histories as the worker leaves them, ready to clone with ``Store.write``."""

    writes: list[Any]  # stream.core.writes.UserWrite
    now: float
    events: int
    state_key_bytes: list[int]
    driver_seconds: float


async def build_templates(settings: Settings, templates_n: int, seed: int) -> Templates:
    """``templates_n`` synthetic users replayed in event time by the offline driver
    (``stream.offline.driver``: the processor with the default rules and models scoring, the
    time-driven path, RFM refreshes) into a scratch namespace of ``settings``' Valkey; their stored
    blobs, profiles and memberships read back from there."""
    from portrait_dev import synth
    from portrait_dev.harness import worker_definitions
    from stream.core.writes import UserWrite
    from stream.offline.driver import drive
    from stream.tagging.engine import rank_metrics
    from stream.tagging.state import UserState

    catalogue, rules, models = worker_definitions(settings)
    events = synth.generate(users=templates_n, events=templates_n * 25, seed=seed)
    now = synth.DEFAULT_END.timestamp()
    templates: list[UserWrite] = []
    driver_state_bytes: list[int] = []

    async def collect(store: Any) -> None:
        async for raw in store.client.scan_iter(match=store.keys.state_pattern, count=1000):
            key = raw.decode()
            uid = store.keys.parse_state(key)
            blob = await store.client.hget(key, "blob")
            if not blob:
                continue
            driver_state_bytes.append(int(await store.client.memory_usage(key) or 0))
            state = UserState.from_bytes(blob)
            profile = await store.profile(uid)
            # per-user state only: the trigger outbox and the training-example stream are queues
            # that the sender and the trainer drain, so cloned users carry neither
            templates.append(
                UserWrite(
                    uid,
                    0,
                    state,
                    profile=profile,
                    audience_add=list(state.published.items()),
                    due=state.due_at or now,
                    ttl_s=int(await store.client.ttl(key)),
                    ranks=rank_metrics(state, state.evaluated_at or now),
                )
            )

    run = await drive(settings, events, catalogue=catalogue, rules=rules, models=models, inspect=collect)
    return Templates(templates, now, len(events), driver_state_bytes, run.seconds)


async def delete_prefix(client: Any, base: str) -> None:
    """Delete every key under ``base`` (a bench namespace), pipelined in batches (one key per
    UNLINK: a cluster refuses a multi-slot one)."""
    pipe = client.pipeline(transaction=False)
    async for key in client.scan_iter(match=f"{base}:*", count=2000):
        pipe.execute_command("UNLINK", key)
        if len(pipe) >= 1000:
            await pipe.execute()
    if len(pipe):
        await pipe.execute()


def store_for(settings: Settings) -> Any:
    """A ``Store`` on the settings' Redis and key prefix (close it after use)."""
    from stream.storage.store import Store

    return Store.from_settings(settings)
