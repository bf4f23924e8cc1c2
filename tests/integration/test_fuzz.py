"""Fuzz tier (issue 12): 2,003 generated bad messages of every class, interleaved with valid events,
through the real broker into a worker process.

Expected: every bad item is in the DLQ with the reason of its class (counted per class), every
valid event is applied once, and the profiles equal the independent offline computation. The bad
inputs come from Hypothesis strategies, drawn once with a fixed seed so a run is reproducible.

Phase 1 sends valid events only, so the event-time clock is set before the bad messages arrive:
``too_old`` is judged against that clock, and would otherwise depend on how batches fell.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings, strategies as st
from portrait_dev import synth
from portrait_dev.infra import free_port

from stream.contracts.events import EVENT_TYPES, MAX_MONEY, MAX_QUANTITY
from stream.contracts.topics import Topics
from stream.kafka import dlq
from tests.integration.helpers import assert_profiles_match, processed_and_settled, read_profiles, send_raw, worker

pytestmark = pytest.mark.integration
BAD_PER_CLASS = 250
DAY = 86400

Bad = tuple[str, bytes, str]  # (topic hint: an event type, raw bytes, expected reason)


def _base(etype: str, ts: str, uid: str, eid: str) -> dict[str, Any]:
    event: dict[str, Any] = {"schema_version": 1, "event_id": eid, "type": etype, "user_id": uid, "ts": ts}
    if etype in ("order_paid", "order_refunded"):
        event.update(order_id=f"o-{eid}", amount=10.0)
    if etype in ("add_to_cart", "remove_from_cart"):
        event["product_id"] = "p1"
    if etype == "search":
        event["query"] = "shoes"
    if etype == "feedback":
        event["rating"] = 4
    return event


COUNTER = iter(range(10**9))


@st.composite
def bad_messages(draw: st.DrawFn, recent: str, old: str, future: str) -> list[Bad]:
    """One message of each class, each with the reason it must be dead-lettered for."""
    counter = COUNTER

    def eid() -> str:
        return f"fz-{next(counter)}"

    uids = st.text(alphabet="abcdefghij0123456789", min_size=3, max_size=8).map(lambda s: f"fz{s}")
    etypes = st.sampled_from(EVENT_TYPES)
    out: list[Bad] = []

    def many(strategy: st.SearchStrategy[Bad]) -> None:
        out.append(draw(strategy))

    def event(etype: str, ts: str = recent, **change: Any) -> dict[str, Any]:
        doc = _base(etype, ts, draw(uids), eid())
        doc.update(change)
        return doc

    not_json = st.binary(min_size=1, max_size=300).filter(_not_json)
    many(not_json.map(lambda raw: ("page_view", raw, "invalid_json")))
    many(
        st.text(min_size=1, max_size=20)
        .filter(lambda t: t not in EVENT_TYPES)
        .map(lambda t: ("page_view", orjson.dumps(event("page_view", type=t)), "unknown_type"))
    )
    violations = st.one_of(
        st.floats(min_value=MAX_MONEY * 1.01, max_value=1e300).map(lambda a: event("order_paid", amount=a)),
        st.floats(max_value=-0.01, min_value=-1e300).map(lambda a: event("order_paid", amount=a)),
        st.integers(min_value=MAX_QUANTITY + 1, max_value=2**62).map(lambda q: event("add_to_cart", quantity=q)),
        uids.map(lambda u: event("page_view", user_id=f"anon:{u}")),
        st.integers(min_value=6, max_value=10**6).map(lambda r: event("feedback", rating=r)),
        etypes.map(lambda t: {k: v for k, v in event(t).items() if k != "event_id"}),
        etypes.map(lambda t: event(t, ts=recent.replace("+00:00", ""))),  # no time zone
        etypes.map(lambda t: event(t, user_id=None)),
    )
    many(violations.map(lambda doc: (str(doc.get("type", "page_view")), orjson.dumps(doc), "schema_violation")))
    many(etypes.map(lambda t: (t, orjson.dumps(event(t, ts=future)), "future_timestamp")))
    many(etypes.map(lambda t: (t, orjson.dumps(event(t, ts=old)), "too_old")))
    many(
        st.sampled_from(["XYZ", "ABC", "QQQ"]).map(
            lambda c: ("order_paid", orjson.dumps(event("order_paid", currency=c)), "unknown_currency")
        )
    )
    blocked = st.sampled_from(["null", "0", "undefined", "GUEST", "none"])
    many(blocked.map(lambda b: ("page_view", orjson.dumps(event("page_view", user_id=b)), "blocked_identifier")))
    envelopes = st.sampled_from([b"[]", b'{"batch": []}', b'{"batch": "x"}', b'{"batch": {"a": 1}}'])
    many(envelopes.map(lambda raw: ("page_view", raw, "schema_violation")))
    return out


def _not_json(raw: bytes) -> bool:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return True
    del doc  # valid JSON (an empty list, a number, an event) belongs to other classes
    return False


def _draw_bad(recent: str, old: str, future: str) -> list[Bad]:
    """``BAD_PER_CLASS`` examples of one message per class (generation only, no shrinking), plus
    three oversized messages."""
    found: list[Bad] = []

    @seed(20261201)
    @settings(
        max_examples=BAD_PER_CLASS,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(bad_messages(recent, old, future))
    def draw(bad: list[Bad]) -> None:
        found.extend(bad)

    draw()
    pad = b"x" * (600 * 1024)
    return [*found, *[("page_view", b'{"type": "page_view", "pad": "' + pad + b'"}', "too_large")] * 3]


def test_fuzzed_bad_messages_are_all_dead_lettered_and_cost_no_valid_event(make_settings, tmp_path: Path) -> None:
    settings_ = make_settings(clock="event", web_port=free_port(), batch_size=200)
    topics = Topics(settings_.topic_prefix)
    events = synth.generate(users=80, events=3000, seed=11, days=40)
    first, second = events[:1500], events[1500:]
    recent = second[0]["ts"]
    end = datetime.fromisoformat(events[-1]["ts"])
    old = (end - timedelta(days=200)).isoformat()
    future = (datetime.now(end.tzinfo) + timedelta(days=3650)).isoformat()
    bad = _draw_bad(recent, old, future)

    def valid(e: dict[str, Any]) -> tuple[str, bytes, bytes]:
        return topics.for_event_type(e["type"]), orjson.dumps(e), str(e["user_id"]).encode()

    rng = random.Random(5)
    mixed: list[tuple[str, bytes, bytes]] = [valid(e) for e in second]
    for hint, raw, _ in bad:  # bad messages at random places, on the topic of their type
        mixed.insert(rng.randrange(len(mixed) + 1), (topics.for_event_type(hint), raw, b"fz"))
    with worker(settings_, tmp_path / "worker.log"):
        asyncio.run(send_raw(settings_, [valid(e) for e in first]))
        asyncio.run(processed_and_settled(settings_, len(first), counter="events_applied"))
        asyncio.run(send_raw(settings_, mixed))
        asyncio.run(processed_and_settled(settings_, len(first) + len(mixed), counter="messages"))
        letters = asyncio.run(dlq.read(settings_, idle_s=2.0))
        actual, now = asyncio.run(read_profiles(settings_))
    assert Counter(d.reason for d in letters) == Counter(reason for _, _, reason in bad)
    truncated = [d for d in letters if d.truncated]
    assert len(truncated) == 3 and all(d.reason == "too_large" for d in truncated)
    assert Counter(d.original for d in letters if not d.truncated) == Counter(
        raw for _, raw, reason in bad if reason != "too_large"
    )
    assert_profiles_match(events, actual, now)
