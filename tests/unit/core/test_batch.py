"""The pure batch plan (stream.core): intake order, identity resolution, per-user steps and isolation.

Expected values follow from the documented semantics, worked out by hand: recency changes every
24 h after a user's last activity (``next_due``), so a user with one page view at T0 has change
points at T0 + 1 d, T0 + 2 d, ...; the other windows end at midnights 7 or more days later.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import UTC, datetime

import orjson
import pytest

from stream.contracts.events import parse_event
from stream.core import batch
from stream.core.batch import Steps, catch_up, plan_batch
from stream.core.identity import merge, refuse_blocked, resolve
from stream.core.intake import Message, Valid, in_event_time_order, intake
from stream.core.pipeline import PlanContext, plan_write
from stream.core.writes import LoadedUser, UserWrite
from stream.identity.merge import IdentityPolicy
from stream.tagging.definitions import load_catalogue
from stream.tagging.engine import RfmThresholds, apply_event
from stream.tagging.state import UserState

CATALOGUE = load_catalogue()
DAY = 86400.0
T0 = datetime(2026, 10, 1, 12, tzinfo=UTC).timestamp()
POLICY = IdentityPolicy(frozenset({"0", "null"}), max_per_day=5, max_total=10)


def _raw(n: int, at: float, user: str | None, anonymous: str | None = None) -> bytes:
    event: dict[str, object] = {
        "event_id": f"e{n}",
        "type": "page_view",
        "ts": datetime.fromtimestamp(at, UTC).isoformat(),
    }
    if user is not None:
        event["user_id"] = user
    if anonymous is not None:
        event["anonymous_id"] = anonymous
    return orjson.dumps(event)


def _valid(n: int, user: str | None, at: float, partition: int = 0, anonymous: str | None = None) -> Valid:
    raw = _raw(n, at, user, anonymous)
    return Valid(Message("t.clickstream", partition, n, None, raw), parse_event(raw))


def _context(now: float, settled: float | None = None) -> PlanContext:
    return PlanContext(catalogue=CATALOGUE, thresholds=RfmThresholds(), wall_now=now, settled=settled)


def _plan(events: list[Valid], *, event_time: bool, now: float, settled: float | None = None, apply=apply_event):  # type: ignore[no-untyped-def]
    """plan_batch for new users (nothing stored yet)."""
    identity = resolve(events, {}, POLICY)
    loaded = {uid: LoadedUser(0, None) for uid in identity.subjects}
    merges = merge(identity, loaded, POLICY, CATALOGUE.params.dedupe_window_events)
    context = _context(now, now if settled is None else settled)
    return plan_batch(events, identity.owner, loaded, merges, context, now=now, event_time=event_time, apply=apply)


@pytest.fixture
def evaluations(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float]]:
    """Every (user, time) the batch plan evaluates, in order."""
    calls: list[tuple[str, float]] = []
    real = batch.plan_write

    def recording(uid: str, version: int, state: UserState, now: float, context: PlanContext) -> UserWrite:
        calls.append((uid, now))
        return real(uid, version, state, now, context)

    monkeypatch.setattr(batch, "plan_write", recording)
    return calls


# -- intake -----------------------------------------------------------------------------


def test_events_merge_across_partitions_by_event_time_keeping_each_partitions_order() -> None:
    # partition 0 holds an event out of time order (t+1 after t+5): it stays after t+5
    p0 = [_valid(0, "u", T0 + 5), _valid(1, "u", T0 + 1), _valid(2, "u", T0 + 9)]
    p1 = [_valid(3, "v", T0 + 3, partition=1), _valid(4, "v", T0 + 7, partition=1)]
    ordered = in_event_time_order([*p0, *p1])
    assert [v.event.event_id for v in ordered] == ["e3", "e0", "e1", "e4", "e2"]
    assert in_event_time_order(p0) == p0  # one partition: its own order


def test_intake_dead_letters_envelopes_first_and_orders_only_in_event_time() -> None:
    oversized = orjson.dumps({"batch": "not a list"})
    messages = [
        Message("t.clickstream", 0, 0, None, b"{not json"),
        Message("t.clickstream", 0, 1, None, oversized),
        Message("t.clickstream", 0, 2, None, _raw(2, T0 + 5, "u")),
        Message("t.clickstream", 1, 0, None, _raw(3, T0 + 1, "v")),
    ]
    common = {"wall_now": T0 + 60, "clock_now": T0, "max_future_skew_s": 300.0, "processor_version": "t"}
    common["max_message_bytes"] = 1 << 20
    for event_time, ids in ((False, ["e2", "e3"]), (True, ["e3", "e2"])):
        valid, dead = intake(messages, CATALOGUE, event_time=event_time, **common)  # type: ignore[arg-type]
        assert [v.event.event_id for v in valid] == ids
        assert [(d.reason, d.source_offset) for d in dead] == [("schema_violation", 1), ("invalid_json", 0)]


# -- identity ---------------------------------------------------------------------------


def test_blocked_identifiers_are_refused_before_anything_else() -> None:
    events = [_valid(0, "null", T0), _valid(1, None, T0, anonymous="0"), _valid(2, "u1", T0, anonymous="0")]
    kept, blocked = refuse_blocked(events, POLICY)
    assert kept == [events[2]]  # its own identity (the user id) is fine; the link is refused later
    assert [(v.event.event_id, error) for v, error in blocked] == [
        ("e0", "identifier 'null' is blocked"),
        ("e1", "identifier '0' is blocked"),
    ]
    assert resolve(kept, {}, POLICY).refused == [(id(events[2]), "blocked_id")]


def test_the_first_link_of_an_anonymous_id_wins_and_redirects_its_events() -> None:
    link, second = _valid(0, "u1", T0, anonymous="a"), _valid(1, "u2", T0, anonymous="a")
    anonymous = _valid(2, None, T0 + 1, anonymous="a")
    identity = resolve([link, second, anonymous], {}, POLICY)
    assert identity.links == {"anon:a": ("u1", T0, id(link))}
    assert identity.refused == [(id(second), "already_linked")]
    assert identity.subjects == ["u1", "u2", "anon:a"]
    stored = UserState()
    stored.published = {"activity_level": "low"}
    loaded = {"u1": LoadedUser(3, None), "u2": LoadedUser(0, None), "anon:a": LoadedUser(7, stored)}
    merges = merge(identity, loaded, POLICY, CATALOGUE.params.dedupe_window_events)
    assert identity.owner(anonymous) == "u1"
    assert list(merges.into) == ["u1"] and merges.counters == {"identity_merged": 1}
    assert [(w.uid, w.expected_version, w.state, w.alias_to, w.audience_remove) for w in merges.writes] == [
        ("anon:a", 7, None, "u1", [("activity_level", "low")])
    ]


def test_a_stored_alias_owns_the_anonymous_events_and_a_link_elsewhere_is_refused() -> None:
    again, elsewhere = _valid(0, "u9", T0, anonymous="a"), _valid(1, "u1", T0, anonymous="a")
    anonymous = _valid(2, None, T0, anonymous="a")
    identity = resolve([again, elsewhere, anonymous], {"anon:a": "u9"}, POLICY)
    assert identity.links == {}
    assert identity.refused == [(id(elsewhere), "already_linked")]
    assert identity.owner(anonymous) == "u9"


# -- per-user steps ---------------------------------------------------------------------


def test_catch_up_evaluates_each_change_point_up_to_the_next_event() -> None:
    state = UserState()
    apply_event(state, parse_event(_raw(0, T0, "u")), "t/0", 0, CATALOGUE.params)
    plan_write("u", 0, state, T0, _context(T0))
    steps = Steps(dict(state.published))
    catch_up(steps, "u", 0, state, T0 + 3.5 * DAY, _context(T0 + 3.5 * DAY))
    assert [w.profile["_evaluated_at"] for w in steps.writes] == [f"{T0 + d * DAY:.3f}" for d in (1, 2, 3)]
    assert [w.profile["recency_days"] for w in steps.writes] == ["1", "2", "3"]
    assert state.due_at == T0 + 4 * DAY


def test_steps_combine_into_one_write_with_the_audience_change_across_all_of_them() -> None:
    first, last = UserState(), UserState()
    last.published = {"a": "1", "b": "3", "c": "4"}
    steps = Steps({"a": "1", "b": "2"})
    steps.add(UserWrite("u", 5, first, triggers=[("t", "x")], counters={"k": 1}, decisions=[("r", "send", "")]))
    steps.add(UserWrite("u", 5, last, triggers=[("t", "y")], counters={"k": 2, "j": 1}, learn=["l"]))
    combined = steps.combined()
    assert combined.state is last and combined.expected_version == 5
    assert combined.audience_add == [("b", "3"), ("c", "4")]
    assert combined.audience_remove == [("b", "2")]
    assert combined.triggers == [("t", "x"), ("t", "y")]
    assert combined.decisions == [("r", "send", "")] and combined.learn == ["l"]
    assert combined.counters == {"k": 3, "j": 1}


def test_event_time_evaluates_after_each_event_and_at_each_change_point_between(
    evaluations: list[tuple[str, float]],
) -> None:
    plan = _plan([_valid(0, "u", T0), _valid(1, "u", T0 + 3 * DAY)], event_time=True, now=T0 + 3 * DAY)
    # after the first event (evaluated before the second is applied), the change points on days 1, 2
    # and 3 (day 3 falls on the second event's own time), then after the second event
    assert evaluations == [("u", T0 + d * DAY) for d in (0, 1, 2, 3, 3)]
    assert [w.uid for w in plan.writes] == ["u"]
    assert plan.writes[0].profile["_evaluated_at"] == f"{T0 + 3 * DAY:.3f}"
    assert plan.writes[0].profile["events_7d"] == "2"


def test_change_points_past_the_watermark_wait(evaluations: list[tuple[str, float]]) -> None:
    # another partition may still hold events before day 1.5: the day-2 and day-3 change points wait
    _plan([_valid(0, "u", T0), _valid(1, "u", T0 + 3 * DAY)], event_time=True, now=T0 + 3 * DAY, settled=T0 + 1.5 * DAY)
    assert evaluations == [("u", T0), ("u", T0 + DAY), ("u", T0 + 3 * DAY)]


def test_wall_time_evaluates_each_user_once_at_now(evaluations: list[tuple[str, float]]) -> None:
    events = [_valid(0, "u", T0), _valid(1, "v", T0 + 60), _valid(2, "u", T0 + 3 * DAY)]
    plan = _plan(events, event_time=False, now=T0 + 4 * DAY)
    assert evaluations == [("u", T0 + 4 * DAY), ("v", T0 + 4 * DAY)]
    assert plan.outcomes == Counter({"applied": 3})
    assert list(plan.touched) == ["u", "v"]


def test_an_event_already_applied_comes_again_as_redelivered_never_as_too_old() -> None:
    # Issue 11 §4: "u" has events on day 0 and day 200 (offsets 0 and 1 of one partition); the batch
    # was already written for "u" (by an earlier attempt of it whose other shards lost the
    # compare-and-set, or before a rebalance) and comes again. Its day-0 event is 200 days behind
    # the user's evaluation, but it was applied: redelivered, not dead-lettered as too_old (the bug:
    # the age check ran before the redelivery check). A day-10 event at a new offset is too old.
    now = T0 + 200 * DAY
    events = [_valid(0, "u", T0), _valid(1, "u", now)]
    first = _plan(events, event_time=True, now=now)
    assert first.outcomes == Counter({"applied": 2}) and first.late == []
    stored = UserState.from_bytes(first.writes[0].encode())
    assert stored.evaluated_at == now
    late = _valid(2, "u", T0 + 10 * DAY)
    again = [*events, late]
    identity = resolve(again, {}, POLICY)
    loaded = {"u": LoadedUser(1, stored)}
    merges = merge(identity, loaded, POLICY, CATALOGUE.params.dedupe_window_events)
    plan = plan_batch(again, identity.owner, loaded, merges, _context(now, now), now=now, event_time=True)
    assert plan.late == [late]
    assert plan.outcomes == Counter({"redelivered": 2})


def test_a_bug_applying_one_users_event_breaks_only_that_user() -> None:
    def buggy(state, event, *args):  # type: ignore[no-untyped-def]
        if event.user_id == "bad":
            raise ZeroDivisionError("simulated bug")
        return apply_event(state, event, *args)

    events = [_valid(0, "good", T0), _valid(1, "bad", T0 + 60, anonymous="dev"), _valid(2, "good", T0 + 120)]
    events.append(_valid(3, "bad", T0 + 180))
    plan = _plan(events, event_time=False, now=T0 + 3600, apply=buggy)
    assert list(plan.broken) == ["bad"]
    assert plan.broken["bad"] == "apply: ZeroDivisionError('simulated bug')"
    # nothing of the broken user is written, not even the merge of the anonymous profile it linked
    assert [w.uid for w in plan.writes] == ["good"]
    assert plan.writes[0].profile["events_7d"] == "2"
    assert plan.outcomes == Counter({"applied": 2})
    stats = plan.stats(4, {"processing_error": 2})
    assert (stats["events_applied"], stats["dlq_processing_error"], stats["messages"]) == (2, 2, 4)


def test_a_bug_evaluating_one_user_breaks_only_that_user(monkeypatch: pytest.MonkeyPatch) -> None:
    real = batch.plan_write

    def buggy(uid: str, *args):  # type: ignore[no-untyped-def]
        if uid == "bad":
            raise KeyError("simulated bug")
        return real(uid, *args)

    monkeypatch.setattr(batch, "plan_write", buggy)
    events = [_valid(0, "bad", T0), _valid(1, "good", T0), _valid(2, "bad", T0 + DAY)]
    plan = _plan(events, event_time=True, now=T0 + DAY)
    # bad's first event was applied; evaluating it before bad's second event fails
    assert plan.broken == {"bad": "evaluate: KeyError('simulated bug')"}
    assert [w.uid for w in plan.writes] == ["good"]
    assert plan.outcomes == Counter({"applied": 1})


def test_oversized_messages_and_empty_envelopes_are_dead_lettered_and_cost_no_neighbour() -> None:
    huge = b'{"event_id": "big", "pad": "' + b"x" * 600_000 + b'"}'
    messages = [
        Message("t.clickstream", 0, 0, b"u", _raw(0, T0 + 1, "u")),
        Message("t.clickstream", 0, 1, b"u", huge),
        Message("t.clickstream", 0, 2, None, b"[]"),
        Message("t.clickstream", 0, 3, None, b'{"batch": []}'),
        Message("t.clickstream", 0, 4, b"u", _raw(4, T0 + 2, "u")),
    ]
    valid, dead = intake(
        messages,
        CATALOGUE,
        wall_now=T0 + 60,
        clock_now=T0,
        max_future_skew_s=300.0,
        processor_version="t",
        event_time=True,
        max_message_bytes=512 * 1024,
    )
    assert [v.event.event_id for v in valid] == ["e0", "e4"]
    assert [(d.reason, d.source_offset) for d in dead] == [
        ("too_large", 1),
        ("schema_violation", 2),
        ("schema_violation", 3),
    ]
    big = dead[0]
    assert big.truncated and big.original == huge[:4096] and big.original_size == len(huge)
    assert big.original_sha256 == hashlib.sha256(huge).hexdigest()
    assert len(big.model_dump_json()) < 10_000  # the dead letter itself is small, whatever the message
    assert not dead[1].truncated and dead[1].original == b"[]"


def test_a_user_made_due_now_is_first_evaluated_at_its_own_passed_due_point(
    evaluations: list[tuple[str, float]],
) -> None:
    # a page view at T0: recency changes at T0 + 1 d (the user's own due point). An RFM re-score
    # marks the user due now (score 0); the claim at T0 + 1.5 d evaluates day 1 first, then now
    state = UserState()
    apply_event(state, parse_event(_raw(0, T0, "u")), "t/0", 0, CATALOGUE.params)
    plan_write("u", 0, state, T0, _context(T0))
    assert state.due_at == T0 + DAY
    now = T0 + 1.5 * DAY
    writes, failed = batch.plan_due(["u"], {"u": LoadedUser(1, state)}, {"u": 0.0}, _context(now), now)
    assert evaluations == [("u", T0 + DAY), ("u", now)]
    assert failed == [] and writes[0].profile["_evaluated_at"] == f"{now:.3f}"
    assert writes[0].profile["recency_days"] == "1" and state.due_at == T0 + 2 * DAY
