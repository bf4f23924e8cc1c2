"""Pure helpers of ``portrait_dev.bench``: statistics, histogram maths, formatting, result JSON shape."""

from __future__ import annotations

import json
import math
from pathlib import Path

import orjson
import pytest
from portrait_dev import bench

HIST_TEXT = """\
# HELP portrait_event_to_profile_seconds Event time to profile written (wall clock mode)
# TYPE portrait_event_to_profile_seconds histogram
portrait_event_to_profile_seconds_bucket{le="0.005"} 0.0
portrait_event_to_profile_seconds_bucket{le="0.01"} 10.0
portrait_event_to_profile_seconds_bucket{le="0.025"} 50.0
portrait_event_to_profile_seconds_bucket{le="0.1"} 99.0
portrait_event_to_profile_seconds_bucket{le="+Inf"} 100.0
portrait_event_to_profile_seconds_count 100.0
portrait_event_to_profile_seconds_sum 3.2
portrait_consume_to_profile_seconds_bucket{le="0.005"} 7.0
"""


def test_summarize_median_min_max() -> None:
    s = bench.summarize([3.0, 1.0, 2.0])
    assert (s.median, s.min, s.max) == (2.0, 1.0, 3.0)
    assert bench.summarize([1.0, 2.0, 3.0, 10.0]).median == 2.5
    assert s.as_dict() == {"values": [3.0, 1.0, 2.0], "median": 2.0, "min": 1.0, "max": 3.0}
    with pytest.raises(ValueError):
        bench.summarize([])


def test_ratio_and_formatting() -> None:
    assert bench.ratio(8.0, 10.0) == pytest.approx(0.8)
    assert bench.ratio(None, 1.0) is None
    assert bench.ratio(1.0, 0.0) is None
    assert bench.fmt_ratio(0.7512) == "0.75×"
    assert bench.fmt_ratio(None) == "—"
    assert bench.fmt_rate(12345.6) == "12,346"
    assert bench.fmt_bytes(512) == "512 B"
    assert bench.fmt_bytes(3 * 1024) == "3.00 KiB"
    assert bench.fmt_bytes(None) == "—"


def test_parse_histogram_only_takes_the_named_metric() -> None:
    buckets = bench.parse_histogram(HIST_TEXT, bench.PROFILE_HISTOGRAM)
    assert buckets == [(0.005, 0.0), (0.01, 10.0), (0.025, 50.0), (0.1, 99.0), (math.inf, 100.0)]


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = bench.parse_histogram(HIST_TEXT, bench.PROFILE_HISTOGRAM)
    # rank 50 is the top of the 0.01..0.025 bucket
    assert bench.histogram_quantile(0.5, buckets) == pytest.approx(0.025)
    # rank 30: halfway through 10..50 within 0.01..0.025
    assert bench.histogram_quantile(0.3, buckets) == pytest.approx(0.0175)
    # rank 99.5 falls into +Inf: the last finite bound
    assert bench.histogram_quantile(0.995, buckets) == pytest.approx(0.1)
    assert bench.histogram_quantile(0.5, []) is None
    assert bench.histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None


def test_histogram_share_max_and_diff() -> None:
    buckets = bench.parse_histogram(HIST_TEXT, bench.PROFILE_HISTOGRAM)
    assert bench.histogram_share_within(0.1, buckets) == pytest.approx(0.99)
    assert bench.histogram_max_bucket(buckets) == math.inf
    before = [(0.005, 0.0), (0.01, 10.0), (0.025, 10.0), (0.1, 10.0), (math.inf, 10.0)]
    delta = bench.diff_histogram(buckets, before)
    assert delta == [(0.005, 0.0), (0.01, 0.0), (0.025, 40.0), (0.1, 89.0), (math.inf, 90.0)]
    assert bench.histogram_max_bucket(delta) == math.inf
    assert bench.histogram_max_bucket(delta[:4]) == 0.1


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert bench.percentile(values, 0.5) == 50.0
    assert bench.percentile(values, 0.99) == 99.0
    assert bench.percentile(values, 1.0) == 100.0
    assert bench.percentile([], 0.5) is None


def test_match_latencies_uses_first_write_at_or_after_send() -> None:
    sends = [("a", 10.0), ("a", 12.0), ("b", 5.0), ("c", 1.0)]
    writes = {"a": [9.0, 10.05, 12.2], "b": [4.0]}
    assert bench.match_latencies(sends, writes) == pytest.approx([0.05, 0.2])


def test_with_send_time_rewrites_ts_only() -> None:
    event = {"event_id": "e1", "type": "page_view", "user_id": "u1", "ts": "2026-01-01T00:00:00+00:00"}
    raw = orjson.loads(bench.with_send_time(event, 1_800_000_000.25))
    assert raw["ts"] == "2027-01-15T08:00:00.250000+00:00"
    assert {k: v for k, v in raw.items() if k != "ts"} == {k: v for k, v in event.items() if k != "ts"}
    assert event["ts"] == "2026-01-01T00:00:00+00:00"  # the input is not modified


def _runs(rates: list[float], foreign: float | None = None) -> list[dict[str, object]]:
    return [{"rep": i + 1, "rate": r, "foreign_cpu": foreign} for i, r in enumerate(rates)]


def test_result_document_shape_ratios_and_targets() -> None:
    runs = {
        "noop": _runs([9000.0, 8000.0, 10000.0], foreign=0.02),
        "raw": _runs([400000.0, 410000.0, 390000.0]),
        "pipeline1": _runs([4000.0, 4500.0, 3500.0]),
        "pipeline1f": _runs([2000.0, 1900.0, 2100.0]),
        "pipeline2": _runs([6000.0, 7000.0, 6500.0]),
    }
    latency = {"rate": 2000.0, "events": 100, "p99_ms": 80.0, "p50_ms": 20.0, "max_ms": 120.0}
    memory = {"users": 1000, "used_memory_per_user": 3000.0, "method": "pure engine"}
    doc = bench.result_document(
        config={"events": 50000}, environment={"cpus": 2}, runs=runs, latency=latency, memory=memory
    )
    json.dumps(doc)  # serialisable
    assert doc["schema"] == "portrait-bench/1"
    assert set(doc) >= {"config", "environment", "scenarios", "ratios", "latency", "memory", "targets"}
    assert list(doc["scenarios"]) == [
        "noop",
        "noopb",
        "raw",
        "pipeline1",
        "pipeline1f",
        "pipeline2",
        "envelope",
        "quixnoop",
        "quix",
    ]
    assert doc["scenarios"]["pipeline1"]["summary"] == {
        "values": [4000.0, 4500.0, 3500.0],
        "median": 4000.0,
        "min": 3500.0,
        "max": 4500.0,
    }
    assert doc["ratios"]["pipeline_vs_noop"] == pytest.approx(4000 / 9000)
    assert doc["ratios"]["two_vs_one"] == pytest.approx(6500 / 4000)
    assert doc["ratios"]["batch_vs_faust_consumer"] == pytest.approx(4000 / 2000)
    met = {t["name"]: t["met"] for t in doc["targets"]}
    assert met == {
        "full pipeline vs Faust no-op": False,
        "two workers vs one": False,
        "p99 event -> profile at half rate": True,
        "Redis memory per user": False,
        "stretch: full pipeline throughput": False,
        "(6) >= 1.0x the Quix Streams reference per worker": None,
    }
    table = bench.format_table(doc)
    assert "| (3) full pipeline, 1 worker | 4,000 | 3,500 | 4,500 | 3 | — |" in table
    assert "0.44×" in table and "1.62×" in table
    assert "| 9,000 | 8,000 | 10,000 | 3 | 2.0 % |" in table


def test_result_document_with_missing_scenarios() -> None:
    doc = bench.result_document(
        config={}, environment={}, runs={"pipeline1": _runs([100.0])}, latency=None, memory=None
    )
    assert doc["scenarios"]["noop"]["summary"] is None
    assert doc["ratios"]["pipeline_vs_noop"] is None
    assert all(t["met"] is None for t in doc["targets"] if t["name"] != "stretch: full pipeline throughput")
    assert "| (1) Faust no-op agent (framework floor) | — | — | — | 0 | — |" in bench.format_table(doc)


def test_trigger_latency_by_what_decided_the_firing() -> None:
    from portrait_dev.bench import trigger_latencies

    sends = [("a", 100.0), ("a", 105.0), ("a", 110.0), ("b", 100.0), ("d", 50.0)]
    writes = {"a": [100.1, 105.2, 110.1], "b": [100.6], "d": [50.1]}
    triggers = [("a", 105.1, 106.25), ("b", 100.5, 100.75), ("c", 1.0, 2.0), ("d", 60.0, 60.5)]
    # a: latest send at or before 105.1 is 105.0, decided before its profile write (105.2): from
    # the event, 1.25 s; b: 0.75 s; c: no send, left out; d: decided at 60.0, after its event's
    # write (50.1): time-driven, decision -> topic 0.5 s
    assert trigger_latencies(sends, triggers, writes) == {"event": [1.25, 0.75], "time": [0.5]}


def test_ownwork_messages_are_partitioned_by_user_with_rising_offsets() -> None:
    from portrait_dev.bench_ownwork import messages_of

    events = [
        {"event_id": f"e{i}", "type": kind, "user_id": user, "ts": "2026-11-01T10:00:00+00:00", "query": "q"}
        for i, (kind, user) in enumerate([("search", "a"), ("search", "b"), ("search", "a"), ("identify", "a")])
    ]
    messages = messages_of(events, 4)
    assert [m.topic for m in messages] == ["portrait.clickstream"] * 3 + ["portrait.identify"]
    assert [m.key for m in messages] == [b"a", b"b", b"a", b"a"]
    a = [m for m in messages[:3] if m.key == b"a"]
    assert a[0].partition == a[1].partition and [m.offset for m in a] == [0, 1]
    assert messages[3].offset == 0 and orjson.loads(messages[1].value)["event_id"] == "e1"


def test_ownwork_baselines_restore_the_levers() -> None:
    from portrait_dev.bench_ownwork import BASELINES

    from stream.contracts.events import EventBase
    from stream.models.runtime import Models
    from stream.rules import conditions, evaluate
    from stream.rules.config import RuleSet
    from stream.service import processor
    from stream.tagging.definitions import TagCatalogue

    def current() -> list[object]:
        return [
            EventBase.__dict__["epoch"],
            evaluate._conditions,
            conditions.as_number,
            Models.segment_features,
            Models.churn_tags,
            processor.record_batch,  # type: ignore[attr-defined]
            processor.record_decisions,  # type: ignore[attr-defined]
            TagCatalogue.__dict__["names"],
            RuleSet.__dict__["active"],
        ]

    before = current()
    for name, patch in BASELINES.items():
        with patch():
            assert current() != before, name
        assert current() == before, name


def _cpu_runs(rates: list[float], cpu: list[float]) -> list[dict[str, object]]:
    return [{"rep": i + 1, "rate": r, "cpu_us_per_event": c} for i, (r, c) in enumerate(zip(rates, cpu, strict=True))]


def test_result_document_quix_ratios_and_goal_6() -> None:
    runs = {
        "noop": _cpu_runs([8000.0, 7000.0, 9000.0], [130.0, 120.0, 140.0]),
        "pipeline1": _cpu_runs([4000.0, 3000.0, 5000.0], [250.0, 280.0, 275.0]),
        "quixnoop": _cpu_runs([10000.0, 11000.0, 9000.0], [15.0, 14.0, 16.0]),
        "quix": _cpu_runs([6000.0, 6500.0, 5500.0], [50.0, 55.0, 45.0]),
    }
    doc = bench.result_document(config={}, environment={}, runs=runs, latency=None, memory=None)
    assert doc["ratios"]["pipeline_vs_quix"] == pytest.approx(4000 / 6000)
    assert doc["ratios"]["quixnoop_vs_noop"] == pytest.approx(10000 / 8000)
    assert doc["ratios"]["pipeline_vs_quix_cpu"] == pytest.approx(50 / 275)
    goal = next(t for t in doc["targets"] if t["name"].startswith("(6)"))
    assert goal["target"] == ">= 1.0x" and goal["met"] is False
    assert goal["measured"] == pytest.approx(4000 / 6000)
    table = bench.format_table(doc)
    assert "| (Q) Quix Streams reference of the core tag job | 6,000 | 5,500 | 6,500 | 3 | — | 50 |" in table
    assert "full pipeline / Quix ref    : 0.67×" in table
    assert "Quix no-op / Faust no-op   : 1.25×" in table
    assert "| (6) >= 1.0x the Quix Streams reference per worker | >= 1.0x | 0.67× | **no** |" in table


def test_quix_reference_state_and_profile_by_hand() -> None:
    from datetime import UTC, datetime

    from portrait_dev import bench_quix

    def at(*args: int) -> float:
        return datetime(*args, tzinfo=UTC).timestamp()

    events = [
        {"type": "order_paid", "ts": "2026-10-15T10:00:00+00:00", "amount": 20.0},  # 47 days before now
        {"type": "order_paid", "ts": "2026-11-30T09:00:00+00:00", "amount": 10.55},  # yesterday
        {"type": "page_view", "ts": "2026-12-01T08:00:00+00:00", "page": "/"},
        # 122 days before the newest event: counted, but its day is past the 90 kept
        {"type": "order_paid", "ts": "2026-08-01T00:00:00+00:00", "amount": 99.99},
    ]
    state = None
    for event in events:
        state = bench_quix.ref_update(state, event)
    assert state is not None
    assert state["n"] == {"order_paid": 3, "page_view": 1}
    assert state["fs"] == at(2026, 8, 1) and state["ls"] == at(2026, 12, 1, 8)
    assert sorted(state["d"].values()) == [[1, 1055], [1, 2000]]
    now = at(2026, 12, 1, 12)
    assert bench_quix.ref_profile(state, now) == {
        "events": "4",
        "n_order_paid": "3",
        "n_page_view": "1",
        "orders_30d": "1",
        "spend_30d": "10.55",
        "orders_90d": "2",
        "spend_90d": "30.55",
        "buyer_90d": "1",
        "first_seen": f"{at(2026, 8, 1):.3f}",
        "last_seen": f"{at(2026, 12, 1, 8):.3f}",
        "days_since_seen": "0",
        "_updated_at": f"{now:.3f}",
    }
    # 50 days later: no order within 30 days; within 90 only November's (October's aged out)
    later = bench_quix.ref_profile(state, at(2027, 1, 20, 12))
    assert (later["orders_30d"], later["orders_90d"], later["spend_90d"], later["buyer_90d"]) == (
        "0",
        "1",
        "10.55",
        "1",
    )
    assert later["days_since_seen"] == "50"


def test_a_child_that_exits_ends_the_wait_with_its_last_log_line(tmp_path: Path) -> None:
    import asyncio
    import subprocess
    import sys

    log = tmp_path / "quix-1.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "print('starting'); print('KeyError: x'); raise SystemExit(3)"], stdout=out
        )
    proc.wait(30)

    async def forever() -> dict[str, object]:
        await asyncio.sleep(3600)
        return {}

    with pytest.raises(RuntimeError, match=r"the quix-1 child exited with 3: KeyError: x \(log: "):
        asyncio.run(asyncio.wait_for(bench._unless_exited(forever(), proc, log), 30))
