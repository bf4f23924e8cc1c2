"""``portrait bench``: throughput, latency and memory of the service on one broker, in one run.

Everything runs on the same broker (embedded Tansu by default, real Apache Kafka with
``--broker kafka``), the same Valkey and the same event bytes (single-event messages, the seeded
realistic mix of ``portrait_dev.synth.generate``). For each repetition every throughput scenario gets
fresh topics, a fresh consumer group and a fresh Redis key prefix; the backlog is produced before
the consumer starts and the rate is measured from the first processed message to the last:

1. ``noop``      framework floor: a Faust agent with the worker's transport, settings and
                 ``take_events`` batching that only counts (``python -m portrait_dev.bench noop``);
   ``noopb``     the same agent fed by the worker's batch delivery (``stream.kafka.batches``);
2. ``raw``       a bare aiokafka consumer in this process (transport ceiling);
3. ``pipeline1`` the full worker (``portrait_dev.harness.start_worker``), one process;
   ``pipeline1f`` the same with Faust's per-message consumer path (``PORTRAIT_CONSUMER=faust``:
                 an Event per message and ``take_events``) instead of batch delivery;
4. ``pipeline2`` two worker processes in the same consumer group;
5. ``latency``   one worker in wall-clock mode fed at half of (3)'s median rate with events
                 timestamped at send time; event time → profile written percentiles from the
                 worker's ``portrait_event_to_profile_seconds`` histogram (bucket-interpolated) and,
                 exactly, from Valkey keyspace notifications of profile writes;
6. ``memory``    Redis bytes per user with 90-day histories: template states from the offline
                 driver (the worker's code in event time), cloned and written with ``Store.write``
                 (not through Kafka);
7. ``api``       p50/p95/p99 of every read-API endpoint over HTTP with ``--api-users`` users
                 (1,000,000 by default) in Valkey, cloned the same way (``portrait_dev.bench_api``).
8. ``backfill``  an event-time backfill of a purchase history (100,000 orders of 25,000
                 customers over 18 months by default) until every profile is at the final clock
                 (``portrait_dev.bench_backfill``);
9. ``quixnoop``, ``quix``: a Quix Streams no-op and a Quix Streams reference of the core tag job
                 (state + batched Valkey writes), one process each, measured like (1)
                 (``portrait_dev.bench_quix`` says exactly what the reference computes).

Results: a table on stdout, ``results/bench-<stamp>.json`` and ``results/bench-<stamp>.png``.
Everything started is stopped at the end, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from portrait_dev.bench_data import build_templates, percentile
from stream.settings import Settings
from stream.tagging.engine import LONGEST_WINDOW_DAYS
from stream.tagging.state import UserState as UserStateBase

log = logging.getLogger(__name__)

THROUGHPUT_SCENARIOS: tuple[tuple[str, str], ...] = (
    ("noop", "(1) Faust no-op agent (framework floor)"),
    ("noopb", "(1b) no-op agent, batch delivery"),
    ("raw", "(2) raw aiokafka consumer (transport ceiling)"),
    ("pipeline1", "(3) full pipeline, 1 worker"),
    ("pipeline1f", "(3f) full pipeline, 1 worker, Faust consumer"),
    ("pipeline2", "(4) full pipeline, 2 workers"),
    ("envelope", "(3e) full pipeline, 1 worker, envelopes"),
    ("quixnoop", "(Q0) Quix Streams no-op (its framework floor)"),
    ("quix", "(Q) Quix Streams reference of the core tag job"),
)
QUIX_SCENARIOS = frozenset({"quixnoop", "quix"})  # portrait_dev.bench_quix
# events per batch envelope in scenario (3e): a web collector's typical flush
ENVELOPE_EVENTS = 50
TARGETS = {
    "pipeline_vs_noop": 0.8,
    "two_vs_one": 1.7,
    "p99_ms": 100.0,
    "bytes_per_user": 2048.0,
    "stretch_events_per_s": 10_000.0,
    "pipeline_vs_quix": 1.0,
}
PROFILE_HISTOGRAM = "portrait_event_to_profile_seconds"
OWNWORK_MIN_REPS = 5  # scenario ownwork reports medians of at least this many runs
FOREIGN_WARN = 0.10  # warn when processes not started by the bench use more of the CPU than this


# =============================================================================================
# Pure helpers (unit-tested)
# =============================================================================================


@dataclass(frozen=True)
class Summary:
    """Median, min and max of repeated measurements."""

    values: tuple[float, ...]
    median: float
    min: float
    max: float

    def as_dict(self) -> dict[str, Any]:
        return {"values": list(self.values), "median": self.median, "min": self.min, "max": self.max}


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("no values to summarize")
    vals = tuple(float(v) for v in values)
    return Summary(vals, statistics.median(vals), min(vals), max(vals))


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``; None when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def fmt_rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 1024 * 1024:
        return f"{value / 1024 / 1024:.1f} MiB"
    if value >= 1024:
        return f"{value / 1024:.2f} KiB"
    return f"{value:.0f} B"


def parse_histogram(text: str, name: str) -> list[tuple[float, float]]:
    """Cumulative ``(upper bound, count)`` buckets of an unlabelled Prometheus histogram, sorted."""
    pattern = re.compile(rf'^{re.escape(name)}_bucket\{{le="([^"]+)"\}} ([0-9.eE+-]+)$')
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        match = pattern.match(line.strip())
        if match:
            buckets.append((float(match.group(1)), float(match.group(2))))
    return sorted(buckets)


def diff_histogram(after: list[tuple[float, float]], before: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Observations made between two snapshots of the same histogram."""
    earlier = dict(before)
    return [(le, count - earlier.get(le, 0.0)) for le, count in after]


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus-style quantile: linear interpolation inside the bucket holding rank ``q * total``.

    Returns the last finite bound when the rank falls in the ``+Inf`` bucket; None without data."""
    if not buckets or not 0 <= q <= 1:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_bound
            if count == lower_count:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = le, count
    return lower_bound


def histogram_share_within(limit: float, buckets: list[tuple[float, float]]) -> float | None:
    """Share of observations ≤ ``limit`` (exact when ``limit`` is a bucket bound)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    below = [count for le, count in buckets if le <= limit]
    return (below[-1] if below else 0.0) / buckets[-1][1]


def histogram_max_bucket(buckets: list[tuple[float, float]]) -> float | None:
    """The upper bound of the highest non-empty bucket (``inf`` when the +Inf bucket has data)."""
    previous = 0.0
    top: float | None = None
    for le, count in buckets:
        if count > previous:
            top = le
        previous = count
    return top


def match_latencies(sends: Sequence[tuple[str, float]], writes: dict[str, list[float]]) -> list[float]:
    """Latency of each sent event: the first profile write of its user at or after its send time.

    ``sends``: (user, event time = send time); ``writes``: user -> sorted profile write times.
    Events whose user has no later write are left out (see ``unmatched``)."""
    import bisect

    out: list[float] = []
    for uid, sent in sends:
        times = writes.get(uid)
        if not times:
            continue
        i = bisect.bisect_left(times, sent)
        if i < len(times):
            out.append(times[i] - sent)
    return out


def targets_report(
    ratios: dict[str, float | None],
    best_rate: float | None,
    p99_ms: float | None,
    bytes_per_user: float | None,
) -> list[dict[str, Any]]:
    """One row per target: name, target, measured, met (None when not measured)."""

    def row(name: str, target: str, measured: float | None, met: bool | None) -> dict[str, Any]:
        return {"name": name, "target": target, "measured": measured, "met": met}

    r1, r2, rq = ratios.get("pipeline_vs_noop"), ratios.get("two_vs_one"), ratios.get("pipeline_vs_quix")
    return [
        row(
            "full pipeline vs Faust no-op",
            f">= {TARGETS['pipeline_vs_noop']}x",
            r1,
            None if r1 is None else r1 >= TARGETS["pipeline_vs_noop"],
        ),
        row(
            "two workers vs one",
            f">= {TARGETS['two_vs_one']}x",
            r2,
            None if r2 is None else r2 >= TARGETS["two_vs_one"],
        ),
        row(
            "p99 event -> profile at half rate",
            f"<= {TARGETS['p99_ms']:.0f} ms",
            p99_ms,
            None if p99_ms is None else p99_ms <= TARGETS["p99_ms"],
        ),
        row(
            "Redis memory per user",
            f"<= {TARGETS['bytes_per_user']:.0f} B",
            bytes_per_user,
            None if bytes_per_user is None else bytes_per_user <= TARGETS["bytes_per_user"],
        ),
        row(
            "stretch: full pipeline throughput",
            f">= {TARGETS['stretch_events_per_s']:,.0f} ev/s",
            best_rate,
            None if best_rate is None else best_rate >= TARGETS["stretch_events_per_s"],
        ),
        row(
            "(6) >= 1.0x the Quix Streams reference per worker",
            f">= {TARGETS['pipeline_vs_quix']}x",
            rq,
            None if rq is None else rq >= TARGETS["pipeline_vs_quix"],
        ),
    ]


# (category, path markers) in priority order; a sample goes to the innermost frame that matches.
PROFILE_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("idle (select/epoll wait)", ("EpollSelector.select",)),
    ("pydantic validation (parse_event)", ("pydantic/", "stream/contracts/events.py")),
    ("rules (stream/rules)", ("stream/rules/",)),
    ("models (stream/models, river)", ("stream/models/", "river/", "scipy/", "numpy/")),
    ("state (de)serialisation", ("stream/tagging/state.py",)),
    ("engine apply_event", ("apply_event",)),
    ("evaluate + plan_write", ("stream/tagging/engine.py", "stream/core/pipeline.py", "stream/core/intake.py")),
    ("Redis client + Lua write (redis-py, store)", ("redis/", "stream/storage/store.py")),
    ("Faust / mode / aiokafka", ("faust/", "mode/", "aiokafka/", "kafka/")),
    (
        "processor glue (stream/service, agents, metrics)",
        (
            "stream/service/",
            "stream/core/batch.py",
            "stream/core/identity.py",
            "stream/core/progress.py",
            "tenacity/",
            "stream/agents/",
            "stream/metrics.py",
            "stream/contracts/",
            "prometheus_client/",
        ),
    ),
)
STARTUP_MARKERS = ("_find_and_load", "create_app (")


def profile_breakdown(raw: str) -> tuple[int, list[tuple[str, float]]]:
    """Share of py-spy samples per category from ``py-spy record --format raw`` (collapsed stacks).

    Start-up samples (imports, app creation) are left out. Returns (samples counted, shares)."""
    counts: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, number = line.rstrip().rpartition(" ")
        if not stack or not number.isdigit():
            continue
        frames = stack.split(";")
        if any(marker in frame for frame in frames for marker in STARTUP_MARKERS):
            continue
        n = int(number)
        total += n
        category = "other (asyncio loop, threads, stdlib)"
        for frame in reversed(frames):
            found = next((name for name, marks in PROFILE_CATEGORIES if any(m in frame for m in marks)), None)
            if found is not None:
                category = found
                break
        counts[category] = counts.get(category, 0) + n
    shares = sorted(((k, v / total) for k, v in counts.items()), key=lambda kv: -kv[1]) if total else []
    return total, shares


def result_document(
    *,
    config: dict[str, Any],
    environment: dict[str, Any],
    runs: dict[str, list[dict[str, Any]]],
    latency: dict[str, Any] | None,
    memory: dict[str, Any] | None,
) -> dict[str, Any]:
    """The results JSON: config, environment, per-scenario runs and summaries, ratios, targets."""
    scenarios: dict[str, Any] = {}
    medians: dict[str, float | None] = {}
    cpu_medians: dict[str, float | None] = {}
    for key, label in THROUGHPUT_SCENARIOS:
        rates = [float(r["rate"]) for r in runs.get(key, []) if r.get("rate")]
        summary = summarize(rates).as_dict() if rates else None
        scenarios[key] = {"label": label, "unit": "events/s", "runs": runs.get(key, []), "summary": summary}
        medians[key] = summary["median"] if summary else None
        cpu = [float(r["cpu_us_per_event"]) for r in runs.get(key, []) if r.get("cpu_us_per_event") is not None]
        cpu_medians[key] = statistics.median(cpu) if cpu else None
    ratios = {
        "pipeline_vs_noop": ratio(medians["pipeline1"], medians["noop"]),
        "two_vs_one": ratio(medians["pipeline2"], medians["pipeline1"]),
        "noop_vs_raw": ratio(medians["noop"], medians["raw"]),
        "envelope_vs_single": ratio(medians["envelope"], medians["pipeline1"]),
        "batch_vs_faust_consumer": ratio(medians["pipeline1"], medians["pipeline1f"]),
        "noop_batch_vs_faust": ratio(medians["noopb"], medians["noop"]),
        "pipeline_vs_quix": ratio(medians["pipeline1"], medians["quix"]),
        "quixnoop_vs_noop": ratio(medians["quixnoop"], medians["noop"]),
        # CPU per event, reference / Portrait (> 1: Portrait spends less per event); steadier than
        # the rates when the box is shared
        "pipeline_vs_quix_cpu": ratio(cpu_medians["quix"], cpu_medians["pipeline1"]),
    }
    best = max((m for m in (medians["pipeline1"], medians["pipeline2"]) if m), default=None)
    p99 = latency.get("p99_ms") if latency else None
    per_user = memory.get("used_memory_per_user") if memory else None
    return {
        "schema": "portrait-bench/1",
        "config": config,
        "environment": environment,
        "scenarios": scenarios,
        "ratios": ratios,
        "latency": latency,
        "memory": memory,
        "targets": targets_report(ratios, best, p99, per_user),
    }


def format_table(doc: dict[str, Any]) -> str:
    """The human-readable summary of a results document (Markdown-compatible)."""
    lines = [
        "| scenario | median ev/s | min | max | runs | max CPU used by others | consumer CPU µs/event (median) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, _ in THROUGHPUT_SCENARIOS:
        sc = doc["scenarios"][key]
        s = sc["summary"]
        if s is None:
            lines.append(f"| {sc['label']} | — | — | — | 0 | — | — |")
            continue
        foreign = [float(r["foreign_cpu"]) for r in sc["runs"] if r.get("foreign_cpu") is not None]
        cpu = [float(r["cpu_us_per_event"]) for r in sc["runs"] if r.get("cpu_us_per_event") is not None]
        lines.append(
            f"| {sc['label']} | {fmt_rate(s['median'])} | {fmt_rate(s['min'])} | {fmt_rate(s['max'])} "
            f"| {len(s['values'])} | {_pct(max(foreign)) if foreign else '—'} "
            f"| {f'{statistics.median(cpu):,.0f}' if cpu else '—'} |"
        )
    r = doc["ratios"]
    lines.append("")
    lines.append(f"ratio (3)/(1) full pipeline / Faust no-op : {fmt_ratio(r['pipeline_vs_noop'])}")
    lines.append(f"ratio (4)/(3) two workers / one           : {fmt_ratio(r['two_vs_one'])}")
    lines.append(f"ratio (1)/(2) Faust no-op / raw aiokafka  : {fmt_ratio(r['noop_vs_raw'])}")
    lines.append(f"ratio (3e)/(3) envelopes / single events  : {fmt_ratio(r.get('envelope_vs_single'))}")
    lines.append(f"ratio (3)/(3f) batch / Faust consumer     : {fmt_ratio(r.get('batch_vs_faust_consumer'))}")
    lines.append(f"ratio (1b)/(1) no-op batch / Faust        : {fmt_ratio(r.get('noop_batch_vs_faust'))}")
    lines.append(f"ratio (3)/(Q) full pipeline / Quix ref    : {fmt_ratio(r.get('pipeline_vs_quix'))}")
    lines.append(f"ratio (Q0)/(1) Quix no-op / Faust no-op   : {fmt_ratio(r.get('quixnoop_vs_noop'))}")
    lines.append(f"CPU/event (Q)/(3) Quix ref / pipeline     : {fmt_ratio(r.get('pipeline_vs_quix_cpu'))}")
    lat = doc.get("latency")
    if lat:
        lines.append("")
        lines.append(
            f"(5) latency at {fmt_rate(lat['rate'])} ev/s (half of (3)), {lat['events']} events, wall clock, "
            f"batch_within {lat.get('batch_within_s')} s: "
            f"p50 {_ms(lat.get('p50_ms'))}, p99 {_ms(lat.get('p99_ms'))}, max {_ms(lat.get('max_ms'))} "
            f"(keyspace notifications, {lat.get('matched', 0)} matched); histogram: "
            f"p50 ≈ {_ms(lat.get('hist_p50_ms'))}, p99 ≈ {_ms(lat.get('hist_p99_ms'))}, "
            f"≤ 100 ms {_pct(lat.get('hist_share_within_100ms'))}, max ≤ {_ms(lat.get('hist_max_bucket_ms'))}"
        )
        if lat.get("trigger_count"):
            lines.append(
                f"    event → trigger on its topic ({lat['trigger_count']} firings decided on the event): "
                f"p50 {_ms(lat.get('trigger_p50_ms'))}, p99 {_ms(lat.get('trigger_p99_ms'))}, "
                f"max {_ms(lat.get('trigger_max_ms'))}"
            )
        if lat.get("time_trigger_count"):
            lines.append(
                f"    time-driven firings ({lat['time_trigger_count']}: RFM refreshes, windows), decision → "
                f"topic: p50 {_ms(lat.get('time_trigger_p50_ms'))}, p99 {_ms(lat.get('time_trigger_p99_ms'))}"
            )
    mem = doc.get("memory")
    if mem:
        lines.append("")
        lines.append(
            f"(6) Redis memory: {fmt_bytes(mem['used_memory_per_user'])} per user (INFO used_memory delta / "
            f"{mem['users']:,} users); sampled MEMORY USAGE state {fmt_bytes(mem.get('state_key_bytes'))} + profile "
            f"{fmt_bytes(mem.get('profile_key_bytes'))} per user; built with {mem['method']}"
        )
        plain = mem.get("plain_json_state")
        if plain:
            lines.append(
                f"    baseline, state as plain JSON: {fmt_bytes(plain['used_memory_per_user'])} per user "
                f"(state key {fmt_bytes(plain.get('state_key_bytes'))}); compressed / plain = "
                f"{mem['ratio_to_plain_json']:.2f}x"
            )
        defaults = mem.get("valkey_default_listpack")
        if defaults:
            lines.append(
                f"    baseline, Valkey's default listpack limits: {fmt_bytes(defaults['used_memory_per_user'])} "
                f"per user (shipped: {', '.join(f'{k} {v}' for k, v in mem.get('listpack_settings', {}).items())})"
            )
    lines.append("")
    lines.append("| target | goal | measured | met |")
    lines.append("|---|---|---:|---|")
    for t in doc["targets"]:
        measured = t["measured"]
        if measured is None:
            shown = "—"
        elif "ms" in t["target"]:
            shown = f"{measured:.1f} ms"
        elif "B" in t["target"]:
            shown = f"{measured:,.0f} B"
        elif "ev/s" in t["target"]:
            shown = f"{measured:,.0f} ev/s"
        else:
            shown = f"{measured:.2f}×"
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['name']} | {t['target']} | {shown} | {met} |")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} ms"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def with_send_time(event: dict[str, Any], now: float) -> bytes:
    """The event's bytes with ``ts`` rewritten to ``now`` (ISO-8601, UTC, microseconds)."""
    stamped = dict(event)
    stamped["ts"] = datetime.fromtimestamp(now, UTC).isoformat()
    return orjson.dumps(stamped)


# =============================================================================================
# The Faust no-op worker (child process: ``python -m portrait_dev.bench noop``)
# =============================================================================================


def create_noop_app(settings: Settings) -> Any:
    """A Faust app configured like ``stream.app.create_app`` whose agent only counts messages.

    Per batch it adds the batch size to the ``messages`` counter of the stats hash (one Redis call
    per batch), so ``portrait_dev.harness.wait_processed`` measures it the same way as the worker.
    ``settings.consumer`` picks Faust's ``take_events`` or the worker's batch delivery."""
    import redis.asyncio as aioredis

    from stream.app import faust_app
    from stream.contracts.topics import Topics
    from stream.storage.keys import Keys

    topics = Topics(settings.topic_prefix)
    app = faust_app(settings, datadir_prefix="portrait-noop-")
    client = aioredis.Redis.from_url(settings.resolved_redis_url())
    stats_key = Keys(settings.key_prefix).stats
    topic = app.topic(*topics.inputs, value_type=bytes, value_serializer="raw", key_serializer="raw")
    if settings.consumer == "batch":
        from stream.kafka.batches import Inbox

        inbox = Inbox(topics.inputs, bound=4 * settings.batch_size)
        app.portrait_inbox = inbox

        async def noop_batches(stream: Any) -> None:
            while True:
                batches = await inbox.take(settings.batch_size)
                await client.hincrby(stats_key, "messages", sum(len(b.records) for b in batches))
                inbox.done(batches)

        app.topics.add(topic)
        app.agent(app.channel(), name="bench-noop")(noop_batches)
        return app

    async def noop(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_size, within=settings.batch_within):
            await client.hincrby(stats_key, "messages", len(events))

    app.agent(topic, name="bench-noop")(noop)
    return app


def noop_main() -> int:
    from faust.worker import Worker

    settings = Settings()
    Worker(create_noop_app(settings), loglevel=settings.log_level).execute_from_commandline()
    return 0


# =============================================================================================
# Scenarios
# =============================================================================================


@dataclass
class Bench:
    """One bench invocation: shared infrastructure, payloads and every child process started."""

    bootstrap: str
    broker_url: str
    redis_url: str
    workdir: Path
    partitions: int
    payloads: list[tuple[str, bytes, bytes]]  # (event type, key, value): the same bytes every run
    events: list[dict[str, Any]]
    timeout: float
    clock: str = "wall"  # clock of the pipeline runs (3) and (4)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    service_pids: list[int] = field(default_factory=list)  # broker and Valkey
    backfill: dict[str, Any] | None = None  # the result of scenario (8)
    seq: int = 0

    def fresh_settings(self, scenario: str, **overrides: Any) -> Settings:
        """Settings with a fresh topic prefix, app id (consumer group) and key prefix."""
        self.seq += 1
        name = f"b{self.seq:02d}{scenario}"
        values: dict[str, Any] = {
            "broker_url": self.broker_url,
            "redis_url": self.redis_url,
            "app_id": name,
            "topic_prefix": name,
            "key_prefix": name,
            "partitions": self.partitions,
            "state_file": self.workdir / "no-state.json",
            "web_port": _free_port(),
            "log_level": "warning",
        }
        values.update(overrides)
        return Settings(**values)

    def spawn(self, argv: list[str], settings: Settings, log_name: str) -> subprocess.Popen[bytes]:
        from portrait_dev.harness import settings_env

        log_path = self.workdir / log_name
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                argv, env=settings_env(settings), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs.append(proc)
        return proc

    def start_worker(self, settings: Settings, log_name: str, command: str = "worker") -> subprocess.Popen[bytes]:
        from portrait_dev.harness import start_worker

        proc = start_worker(settings, self.workdir / log_name, command)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        from portrait_dev.harness import stop_worker

        for proc in self.procs:
            with contextlib.suppress(Exception):
                stop_worker(proc, timeout=15)
        self.procs.clear()


def _free_port() -> int:
    from portrait_dev.infra import free_port

    return free_port()


def _busy_jiffies() -> int:
    """Busy CPU time of the whole machine (all cores) in clock ticks, from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0
    values = [int(v) for v in fields]
    return sum(values) - values[3] - (values[4] if len(values) > 4 else 0)  # minus idle and iowait


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return str(pid)


def _pid_jiffies(pid: int) -> int:
    """utime + stime (+ reaped children's) of one process in clock ticks; 0 when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0
    return sum(int(v) for v in stat[11:15])


class ForeignLoad:
    """Share of the machine's CPU used by processes this bench did not start, during a run.

    The box is shared; a busy neighbour (another engineer's demo, a test run) would otherwise
    silently lower the numbers. Counts this process, the broker, Valkey and every child started."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.seen: dict[int, int] = {}

    def _ours(self) -> int:
        pids = {os.getpid(), *self.bench.service_pids, *(p.pid for p in self.bench.procs)}
        for pid in pids:
            value = _pid_jiffies(pid)
            if value:
                self.seen[pid] = max(self.seen.get(pid, 0), value)
        return sum(self.seen.get(pid, 0) for pid in pids | set(self.seen))

    def __enter__(self) -> ForeignLoad:
        self.started = time.monotonic()
        self.busy0 = _busy_jiffies()
        self.seen = {}
        self.ours0 = self._ours()
        self.baseline = dict(self.seen)
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def finish(self) -> float:
        ours = self._ours() - sum(self.baseline.values())
        busy = _busy_jiffies() - self.busy0
        ticks = os.sysconf("SC_CLK_TCK") * (time.monotonic() - self.started) * (os.cpu_count() or 1)
        self.share = max(0.0, (busy - ours) / ticks) if ticks > 0 else 0.0
        return self.share


def _store(settings: Settings) -> Any:
    from stream.storage.store import Store

    return Store.from_settings(settings)


async def produce(settings: Settings, payloads: list[tuple[str, bytes, bytes]]) -> float:
    """Produce the payloads to ``settings``' topics as fast as possible; returns events/s."""
    from aiokafka import AIOKafkaProducer

    from stream.contracts.topics import Topics

    topics = Topics(settings.topic_prefix)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers(), acks="all", linger_ms=5, max_batch_size=256 * 1024
    )
    await producer.start()
    started = time.monotonic()
    try:
        pending: list[Any] = []
        for etype, key, value in payloads:
            pending.append(await producer.send(topics.for_event_type(etype), value, key=key))
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        await producer.flush()
    finally:
        await producer.stop()
    return len(payloads) / max(1e-9, time.monotonic() - started)


def pack(payloads: list[tuple[str, bytes, bytes]], size: int) -> list[tuple[str, bytes, bytes]]:
    """Batch envelopes of ``size`` consecutive events (mixed users), keyed by collector, on the
    clickstream topic, as a web collector would send them."""
    out = []
    for n in range(0, len(payloads), size):
        values = b",".join(value for _, _, value in payloads[n : n + size])
        out.append(("page_view", f"collector-{n // size % 8}".encode(), b'{"batch":[' + values + b"]}"))
    return out


def _prepare_topics(bench: Bench, settings: Settings, configs: dict[str, str] | None = None) -> None:
    from stream.contracts.topics import Topics
    from stream.kafka.admin import create_topics

    create_topics(bench.bootstrap, Topics(settings.topic_prefix).all, settings.partitions, configs=configs)


class CpuMeter:
    """CPU time of the consumer processes from the first counted message to the last, per message:
    unlike the rate, it barely moves when other processes share the cores. ``wait_processed``
    calls ``update`` at every increase of the counter."""

    def __init__(self, pids: list[int], services: list[int] | None = None) -> None:
        self.pids = pids
        self.services = services or []  # broker and Valkey: their share of the cores is reported too
        # (count, monotonic, jiffies per role: "workers", "machine", each service) at the first and
        # the latest increase
        self.first: tuple[int, float, dict[str, int]] | None = None
        self.last: tuple[int, float, dict[str, int]] | None = None
        self.count = 0

    def update(self, n: int) -> None:
        if n <= 0:  # the first poll reports 0 (the worker still starting: not part of the run)
            return
        self.count += n
        roles = {"workers": sum(_pid_jiffies(p) for p in self.pids), "machine": _busy_jiffies()}
        for pid in self.services:
            name = _comm(pid)
            roles[name] = roles.get(name, 0) + _pid_jiffies(pid)
        self.last = (self.count, time.monotonic(), roles)
        self.first = self.first or self.last

    def cores(self) -> dict[str, float] | None:
        """Cores used per role from the first counted message to the last: the workers, each
        service by its command name, ``machine`` (every process, busy jiffies of /proc/stat)."""
        if self.first is None or self.last is None or self.last[1] <= self.first[1]:
            return None
        (_, t0, a), (_, t1, b) = self.first, self.last
        ticks = os.sysconf("SC_CLK_TCK") * (t1 - t0)
        return {role: (b[role] - a.get(role, 0)) / ticks for role in b}

    def us_per_message(self) -> float | None:
        if self.first is None or self.last is None or self.last[0] <= self.first[0]:
            return None
        seconds = (self.last[2]["workers"] - self.first[2]["workers"]) / os.sysconf("SC_CLK_TCK")
        return 1e6 * seconds / (self.last[0] - self.first[0])


async def _wait_count(
    settings: Settings,
    total: int,
    timeout: float,
    counter: str,
    pids: list[int] | None = None,
    services: list[int] | None = None,
) -> dict[str, Any]:
    from portrait_dev.harness import wait_processed

    store = _store(settings)
    meter = CpuMeter(pids or [], services)
    try:
        result = await wait_processed(store, total, timeout=timeout, counter=counter, progress=meter)
        stats = await store.stats()
    finally:
        await store.close()
    return {
        "rate": result.rate,
        "seconds_first_to_last": result.done_at - (result.first_at or 0.0),
        "stats": stats,
        # the Redis commands of this wait (each counter read is one HGETALL per shard and the store's)
        "wait_commands": (result.polls + 1) * (store.keys.shards + 1),
        "cpu_us_per_event": meter.us_per_message() if pids else None,
        "cores": meter.cores() if pids else None,
    }


async def run_noop(bench: Bench, rep: int, consumer: str = "faust") -> dict[str, Any]:
    settings = bench.fresh_settings("noop" if consumer == "faust" else "noopb", consumer=consumer)
    _prepare_topics(bench, settings)
    produced = await produce(settings, bench.payloads)
    proc = bench.spawn([sys.executable, "-m", "portrait_dev.bench", "noop"], settings, f"noop-{rep}.log")
    try:
        with ForeignLoad(bench) as load:
            out = await _wait_count(settings, len(bench.payloads), bench.timeout, "messages", [proc.pid])
    finally:
        _stop(bench, proc)
    out.update(rep=rep, produce_rate=produced, foreign_cpu=load.share)
    return out


async def run_child(
    bench: Bench, rep: int, scenario: str, argv: list[str], topic_configs: dict[str, str] | None = None
) -> dict[str, Any]:
    """A consumer child process (``argv``, e.g. the Quix Streams ones of ``portrait_dev.bench_quix``)
    on a fresh backlog, measured like (1): it adds each batch to the stats hash's ``messages``."""
    settings = bench.fresh_settings(scenario)
    _prepare_topics(bench, settings, topic_configs)
    produced = await produce(settings, bench.payloads)
    log = bench.workdir / f"{scenario}-{rep}.log"
    proc = bench.spawn(argv, settings, log.name)
    try:
        with ForeignLoad(bench) as load:
            wait = _wait_count(settings, len(bench.payloads), bench.timeout, "messages", [proc.pid])
            out = await _unless_exited(wait, proc, log)
    finally:
        _stop(bench, proc)
    out.update(rep=rep, produce_rate=produced, foreign_cpu=load.share)
    return out


async def _unless_exited(
    wait: Coroutine[Any, Any, dict[str, Any]], proc: subprocess.Popen[bytes], log: Path
) -> dict[str, Any]:
    """``wait``'s result; RuntimeError naming the child's last log line as soon as it exits."""
    task = asyncio.ensure_future(wait)
    try:
        while not task.done():
            if proc.poll() is not None:
                lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
                raise RuntimeError(
                    f"the {log.stem} child exited with {proc.returncode}: {lines[-1] if lines else 'no output'} "
                    f"(log: {log})"
                )
            await asyncio.wait([task], timeout=0.5)
        return task.result()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def run_raw(bench: Bench, rep: int) -> dict[str, Any]:
    """A bare aiokafka consumer (no group, all partitions assigned) reading the backlog."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from stream.contracts.topics import Topics

    settings = bench.fresh_settings("raw")
    _prepare_topics(bench, settings)
    produced = await produce(settings, bench.payloads)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,
    )
    await consumer.start()
    total = len(bench.payloads)
    count = 0
    try:
        parts = [TopicPartition(t, p) for t in Topics(settings.topic_prefix).inputs for p in range(settings.partitions)]
        # timed from the assignment (first fetch included): aiokafka prefetches, so "first record to
        # last" would only time decoding of already-buffered data
        load = ForeignLoad(bench).__enter__()
        started = time.monotonic()
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        deadline = started + bench.timeout
        while count < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"raw consumer read {count} of {total} messages")
            batches = await consumer.getmany(timeout_ms=1000, max_records=settings.batch_size)
            count += sum(len(records) for records in batches.values())
        seconds = time.monotonic() - started
        load.finish()
    finally:
        await consumer.stop()
    return {
        "rep": rep,
        "rate": count / seconds,
        "seconds_first_to_last": seconds,
        "produce_rate": produced,
        "foreign_cpu": load.share,
    }


async def run_pipeline(
    bench: Bench,
    rep: int,
    workers: int,
    profile_dir: Path | None = None,
    envelope: int = 0,
    redis_url: str | None = None,
    consumer: str = "batch",
) -> dict[str, Any]:
    """``workers`` worker processes started together on a pre-produced backlog; with ``envelope``,
    the same events packed that many to a message (rates stay in events/s); ``redis_url``: another
    Redis than the bench's (a cluster: scenario ``cluster``); ``consumer``: ``Settings.consumer``."""
    extra: dict[str, Any] = {"redis_url": redis_url} if redis_url else {}
    tag = f"p{workers}{'e' if envelope else ''}{'f' if consumer == 'faust' else ''}"
    settings = bench.fresh_settings(tag, clock=bench.clock, consumer=consumer, **extra)
    _prepare_topics(bench, settings)
    produced = await produce(settings, pack(bench.payloads, envelope) if envelope else bench.payloads)
    if envelope:
        produced *= envelope  # messages/s -> events/s
    procs = []
    spies: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(workers):
            s = settings if i == 0 else settings.model_copy(update={"web_port": _free_port()})
            procs.append(bench.start_worker(s, f"pipeline{workers}-{rep}-w{i}.log"))
        if profile_dir is not None:
            spies += [_start_py_spy(bench, p.pid, profile_dir, f"worker{i}.txt") for i, p in enumerate(procs)]
        with ForeignLoad(bench) as load:
            pids = [p.pid for p in procs]
            out = await _wait_count(
                settings, len(bench.payloads), bench.timeout, "events_applied", pids, bench.service_pids
            )
    finally:
        for spy in spies:
            _stop_py_spy(spy)
        for proc in procs:
            _stop(bench, proc)
    out.update(rep=rep, workers=workers, produce_rate=produced, foreign_cpu=load.share)
    return out


def _stop(bench: Bench, proc: subprocess.Popen[bytes]) -> None:
    from portrait_dev.harness import stop_worker

    stop_worker(proc, timeout=15)
    with contextlib.suppress(ValueError):
        bench.procs.remove(proc)


def _py_spy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else None


def _start_py_spy(bench: Bench, pid: int, out_dir: Path, name: str = "worker0.txt") -> subprocess.Popen[bytes]:
    exe = _py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed in this environment (pip install py-spy)")
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = [exe, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "-o", str(out_dir / name)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=(out_dir / "py-spy.log").open("ab"))
    bench.procs.append(proc)
    return proc


def _print_profiles(profile_dir: Path) -> None:
    """The breakdown of every worker profile recorded (``--profile``: rep 1 of each pipeline scenario)."""
    for raw in sorted(profile_dir.glob("*/worker*.txt")):
        samples, shares = profile_breakdown(raw.read_text())
        raw.with_suffix(".json").write_text(json.dumps({"samples": samples, "shares": shares}, indent=2))
        print(f"  py-spy profile, {raw.parent.name} {raw.stem} (rep 1, {samples} samples, start-up excluded):")
        for name, share in shares:
            print(f"    {100 * share:5.1f} %  {name}", flush=True)


def _stop_py_spy(proc: subprocess.Popen[bytes]) -> None:
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _metrics_text(settings: Settings) -> str:
    url = f"http://{settings.web_host}:{settings.web_port}/metrics"

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body: bytes = resp.read()
            return body.decode()

    return await asyncio.to_thread(fetch)


class _ProfileWrites:
    """Wall-clock times of profile writes per user, from Valkey keyspace notifications."""

    def __init__(self, redis_url: str, key_prefix: str) -> None:
        import redis.asyncio as aioredis

        from stream.storage.keys import Keys

        self.client = aioredis.Redis.from_url(redis_url)
        self.base = Keys(key_prefix).base
        self.times: dict[str, list[float]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        await self.client.config_set("notify-keyspace-events", "Kh")
        self._task = asyncio.create_task(self._listen())
        await asyncio.wait_for(self._ready.wait(), 10)

    async def _listen(self) -> None:
        pubsub = self.client.pubsub()
        prefix = f"__keyspace@0__:{self.base}:"
        await pubsub.psubscribe(f"__keyspace@0__:{self.base}:{{s*}}:profile:*")
        self._ready.set()
        try:
            while True:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is None:
                    continue
                now = time.time()
                if msg.get("data") != b"hset":
                    continue
                channel = msg["channel"].decode()
                uid = channel[len(prefix) :].partition("}:profile:")[2]
                self.times.setdefault(uid, []).append(now)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed in newer redis-py (8.2.0 is)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self.client.config_set("notify-keyspace-events", "")
        await self.client.aclose()


async def _read_trigger_records(settings: Settings, idle_s: float = 2.0) -> list[tuple[str, float, float]]:
    """(user, trigger event_time, record timestamp) of every trigger produced so far."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from stream.contracts.topics import Topics

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers(), enable_auto_commit=False)
    await consumer.start()
    out: list[tuple[str, float, float]] = []
    try:
        await consumer._client.force_metadata_update()
        tps = [
            TopicPartition(t, p)
            for t in Topics(settings.topic_prefix).triggers
            for p in consumer.partitions_for_topic(t) or []
        ]
        if not tps:
            return out
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while batch := await consumer.getmany(timeout_ms=int(idle_s * 1000)):
            for records in batch.values():
                for r in records:
                    doc = orjson.loads(r.value)
                    out.append((doc["user_id"], float(doc["event_time"]), r.timestamp / 1000))
    finally:
        await consumer.stop()
    return out


def trigger_latencies(
    sends: list[tuple[str, float]], triggers: list[tuple[str, float, float]], writes: dict[str, list[float]]
) -> dict[str, list[float]]:
    """Trigger latencies by what decided the firing. ``sends``: (user, send time = event time);
    ``triggers``: (user, the firing's evaluation time ``event_time``, record timestamp on the topic);
    ``writes``: user -> sorted profile write times.

    - ``"event"``: the batch that applied the user's latest event before the firing decided it
      (its evaluation began no later than that event's profile write): event → trigger on its topic,
      from that event's send time (goal 4).
    - ``"time"``: a later time-driven evaluation decided it (an RFM refresh moved a segment, a
      window passed): no event caused it, so decision → trigger on its topic.
    Firings of users with no send before them are left out."""
    import bisect

    by_user: dict[str, list[float]] = {}
    for user, sent in sends:
        by_user.setdefault(user, []).append(sent)
    for times in by_user.values():
        times.sort()
    out: dict[str, list[float]] = {"event": [], "time": []}
    for user, decided, on_topic in triggers:
        times = by_user.get(user, [])
        i = bisect.bisect_right(times, decided)
        if not i:
            continue
        sent = times[i - 1]
        written = writes.get(user, [])
        j = bisect.bisect_left(written, sent)
        applied = written[j] if j < len(written) else float("inf")
        if decided <= applied:
            out["event"].append(on_topic - sent)
        else:
            out["time"].append(on_topic - decided)
    return out


async def run_latency(bench: Bench, rate: float, seconds: float, batch_within: float | None = None) -> dict[str, Any]:
    """One wall-clock worker fed at ``rate`` events/s with events stamped at send time."""
    from portrait_dev.harness import wait_healthy
    from stream.kafka import replay

    overrides: dict[str, Any] = {} if batch_within is None else {"batch_within": batch_within}
    settings = bench.fresh_settings("lat", clock="wall", **overrides)
    _prepare_topics(bench, settings)
    count = max(100, min(len(bench.events), int(rate * seconds)))
    warmup = bench.events[-200:]
    chosen = bench.events[:count]
    proc = bench.start_worker(settings, "latency-worker.log")
    writes = _ProfileWrites(bench.redis_url, settings.key_prefix)
    sends: list[tuple[str, float]] = []
    try:
        await asyncio.to_thread(wait_healthy, settings, proc)
        # warm up until the group is formed and the worker is processing fresh events
        warm = [with_send_time(e, time.time()) for e in warmup]
        await replay.replay(settings, warm, progress=False)
        await _wait_count(settings, len(warm), bench.timeout, "messages")
        before = parse_histogram(await _metrics_text(settings), PROFILE_HISTOGRAM)
        await writes.start()

        def stamped() -> Iterator[bytes]:
            for event in chosen:
                now = time.time()
                sends.append((str(event.get("user_id") or event.get("anonymous_id")), now))
                yield with_send_time(event, now)

        with ForeignLoad(bench) as load:
            report = await replay.replay(settings, stamped(), progress=False, rate=rate)
            await _wait_count(settings, len(warm) + count, bench.timeout, "messages")
        await asyncio.sleep(0.5)  # last notifications and metrics
        after = parse_histogram(await _metrics_text(settings), PROFILE_HISTOGRAM)
        trigger_records = await _read_trigger_records(settings)
    finally:
        await writes.stop()
        _stop(bench, proc)
    hist = diff_histogram(after, before)
    latencies = match_latencies(sends, {u: sorted(t) for u, t in writes.times.items()})

    def ms(value: float | None) -> float | None:
        return None if value is None else value * 1000

    by_cause = trigger_latencies(sends, trigger_records, writes.times)
    on_event, on_time = by_cause["event"], by_cause["time"]
    return {
        "trigger_count": len(on_event),
        "trigger_p50_ms": ms(percentile(on_event, 0.5)),
        "trigger_p99_ms": ms(percentile(on_event, 0.99)),
        "trigger_max_ms": ms(max(on_event) if on_event else None),
        "time_trigger_count": len(on_time),
        "time_trigger_p50_ms": ms(percentile(on_time, 0.5)),
        "time_trigger_p99_ms": ms(percentile(on_time, 0.99)),
        "rate": rate,
        "batch_within_s": settings.batch_within,
        "achieved_send_rate": report.events_per_s,
        "events": count,
        "matched": len(latencies),
        "p50_ms": ms(percentile(latencies, 0.5)),
        "p99_ms": ms(percentile(latencies, 0.99)),
        "max_ms": ms(max(latencies) if latencies else None),
        "hist_events": hist[-1][1] if hist else 0,
        "hist_p50_ms": ms(histogram_quantile(0.5, hist)),
        "hist_p99_ms": ms(histogram_quantile(0.99, hist)),
        "hist_share_within_100ms": histogram_share_within(0.1, hist),
        "hist_max_bucket_ms": ms(histogram_max_bucket(hist)),
        "histogram": [[le, c] for le, c in hist],
        "foreign_cpu": load.share,
        "method": (
            "event ts = send time; exact: first profile HSET of the event's user at or after the send "
            "(Valkey keyspace notifications, received by the bench); histogram: the worker's "
            f"{PROFILE_HISTOGRAM} (bucket-interpolated)"
        ),
    }


# Valkey's own listpack limits: the memory scenario's same-run baseline for the encoding settings
# that deploy/valkey/valkey.conf and the embedded Valkey ship (portrait_dev.valkey_conf.VALKEY_TUNING)
VALKEY_DEFAULT_LISTPACK = {
    "hash-max-listpack-value": "64",
    "set-max-listpack-entries": "128",
    "zset-max-listpack-entries": "128",
}


async def run_memory(bench: Bench, users: int, seed: int, sample: int = 300, templates_n: int = 2000) -> dict[str, Any]:
    """Bytes per user with 90-day histories. The template states are the worker's
    (``build_templates``), cloned under new user ids and written with ``Store.write`` (the worker's
    Lua script). Two baselines in the same run: the state blob as plain JSON, and the server's
    listpack limits at Valkey's defaults instead of the shipped ones."""
    settings = bench.fresh_settings("mem", clock="event")
    built = await build_templates(settings, min(users, templates_n), seed)
    templates, now, driver_state_bytes = built.writes, built.now, built.state_key_bytes
    store = _store(settings)
    try:
        encoding = await _listpack_settings(store)
        measured = await _measure_memory(store, templates, users, now, sample)
        # baseline in the same run: the same users with the state stored as plain JSON, as before
        # compression (docs/performance.md)
        plain = [dataclasses.replace(t, state=_PlainJsonState.of(t.state)) if t.state else t for t in templates]
        baseline = await _measure_memory(store, plain, users, now, sample)
        await _set_config(store, VALKEY_DEFAULT_LISTPACK)
        try:
            default_encoding = await _measure_memory(store, templates, users, now, sample)
        finally:
            await _set_config(store, encoding)
    finally:
        await store.close()
    return {
        "users": users,
        "template_users": len(templates),
        "events_per_template_user": built.events / max(1, len(templates)),
        "driver_state_key_bytes": statistics.mean(driver_state_bytes) if driver_state_bytes else None,
        "driver_seconds": built.driver_seconds,
        "listpack_settings": encoding,
        **measured,
        "plain_json_state": baseline,
        "ratio_to_plain_json": measured["used_memory_per_user"] / baseline["used_memory_per_user"],
        "valkey_default_listpack": {"settings": VALKEY_DEFAULT_LISTPACK, **default_encoding},
        "method": (
            f"offline driver (the worker's processor in event time, default rules and models) on "
            f"{len(templates)} synthetic users x 90 days, states read back from Valkey, cloned to "
            f"{users:,} user ids and written with Store.write (not through Kafka); baselines: the same "
            "with the state blob as plain JSON, and with Valkey's default listpack limits"
        ),
    }


async def _listpack_settings(store: Any) -> dict[str, str]:
    """The server's values of the listpack limits ``VALKEY_DEFAULT_LISTPACK`` names."""
    out: dict[str, str] = {}
    for name in VALKEY_DEFAULT_LISTPACK:
        out.update({str(k): str(v) for k, v in (await store.client.config_get(name)).items()})
    return out


async def _set_config(store: Any, values: dict[str, str]) -> None:
    for name, value in values.items():
        await store.client.config_set(name, value)


class _PlainJsonState(UserStateBase):
    """A state stored the way states were before compression (the memory baseline)."""

    @classmethod
    def of(cls, state: UserStateBase) -> _PlainJsonState:
        return cls(**{f.name: getattr(state, f.name) for f in dataclasses.fields(state)})

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_doc())


async def _settled_memory(store: Any) -> int:
    """``used_memory`` once the server has no lazily freed objects pending (an earlier pass's
    ``UNLINK``s are freed in the background and would otherwise count against this one), waiting at
    most a minute."""
    for _ in range(600):
        info = await store.client.info("memory")
        if not int(info.get("lazyfree_pending_objects", 0)):
            break
        await asyncio.sleep(0.1)
    return int(info["used_memory"])


async def _measure_memory(store: Any, templates: list[Any], users: int, now: float, sample: int) -> dict[str, Any]:
    before = await _settled_memory(store)
    batch: list[Any] = []
    for i in range(users):
        template = templates[i % len(templates)]
        batch.append(dataclasses.replace(template, uid=f"m{i:07d}"))
        if len(batch) >= 500:
            await store.write(batch, now, {"memory_users": len(batch)})
            batch = []
    if batch:
        await store.write(batch, now, {"memory_users": len(batch)})
    after = await _settled_memory(store)
    step = max(1, users // sample)
    state_sizes, profile_sizes = [], []
    for i in range(0, users, step):
        uid = f"m{i:07d}"
        state_sizes.append(int(await store.client.memory_usage(store.keys.state(uid)) or 0))
        profile_sizes.append(int(await store.client.memory_usage(store.keys.profile(uid)) or 0))
    shared = 0
    families: dict[str, int] = {}  # shared bytes by key family (aud, rank, due, outbox, ...)
    async for key in store.client.scan_iter(match=f"{store.keys.base}:*", count=1000):
        name = key.decode()
        family = name.partition("}:")[2].split(":")[0]  # after the shard's (or {g}'s) hash tag
        if family not in ("state", "profile", "alias"):
            size = int(await store.client.memory_usage(name) or 0)
            shared += size
            families[family] = families.get(family, 0) + size
    await store.delete_namespace()
    return {
        "shared_bytes_per_user_by_family": {k: v / users for k, v in sorted(families.items())},
        "used_memory_before": before,
        "used_memory_after": after,
        "used_memory_per_user": (after - before) / users,
        "state_key_bytes": statistics.mean(state_sizes),
        "profile_key_bytes": statistics.mean(profile_sizes),
        "shared_keys_bytes_per_user": shared / users,
        "sampled_users": len(state_sizes),
    }


# =============================================================================================
# Orchestration
# =============================================================================================


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", choices=["tansu", "kafka"], default="tansu", help="embedded broker to use")
    parser.add_argument("--users", type=int, default=2000, help="synthetic users (throughput runs)")
    parser.add_argument("--events", type=int, default=50000, help="events per throughput run")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--clock",
        choices=["wall", "event"],
        default="wall",
        help="worker clock for (3)/(4): wall (production; data ends now) or event (replay of a fixed 90 days)",
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions of scenarios 1-4")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--latency-seconds", type=float, default=15.0, help="length of the paced run (5)")
    parser.add_argument("--latency-rate", type=float, help="events/s of (5) (default: half of (3)'s median)")
    parser.add_argument(
        "--batch-within", type=float, help="PORTRAIT_BATCH_WITHIN of the latency worker (5) (default: the setting's)"
    )
    parser.add_argument("--memory-users", type=int, default=100_000, help="users loaded for (6)")
    parser.add_argument(
        "--memory-templates",
        type=int,
        default=2000,
        help="offline-driver users cloned in (6) (fewer: a faster run, e.g. 400)",
    )
    parser.add_argument("--api-users", type=int, default=1_000_000, help="users loaded for the read API run (7)")
    parser.add_argument("--api-requests", type=int, default=200, help="calls per endpoint in (7)")
    parser.add_argument(
        "--only",
        default="noop,noopb,raw,pipeline1,pipeline1f,pipeline2,envelope,quixnoop,quix,latency,memory,api,backfill",
        help="comma-separated scenarios to run (noop,noopb,raw,pipeline1,pipeline1f,pipeline2,envelope,quixnoop,quix,"
        "latency,memory,api,backfill; "
        "also cluster: 2 workers on a 3-master cluster vs standalone, commands per event; "
        "ownwork: the processor's own work per event without Kafka, and each lever of issue 16 undone)",
    )
    parser.add_argument("--backfill-customers", type=int, default=25_000, help="customers of the backfill (8)")
    parser.add_argument("--backfill-orders", type=int, default=100_000, help="orders of the backfill (8)")
    parser.add_argument("--backfill-months", type=int, default=18, help="months of history of the backfill (8)")
    parser.add_argument(
        "--backfill-steps",
        choices=["needed", "every"],
        default="needed",
        help="PORTRAIT_TIME_STEPS of the backfill (8): needed (fast) or every (the per-day path)",
    )
    parser.add_argument("--backfill-workers", type=int, default=1, help="workers of the backfill (8)")
    parser.add_argument(
        "--backfill-rfm",
        choices=["tick", "batches"],
        default="tick",
        help="PORTRAIT_RFM_EVENT_REFRESH of the backfill (8): tick (fast) or batches (exact RFM rules)",
    )
    parser.add_argument(
        "--backfill-trainer",
        choices=["embedded", "external"],
        default="embedded",
        help="PORTRAIT_TRAINER of the backfill (8): on the worker's event loop, or `portrait trainer` beside it",
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy every worker in rep 1 of pipeline1, pipeline2, envelope"
    )
    parser.add_argument("--out", default="results", help="directory for the JSON and PNG")
    parser.add_argument("--timeout", type=float, default=300.0, help="max seconds to wait for one run")


def _version_of(distribution: str) -> str | None:
    """The installed version of ``distribution``; None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _environment(handle: Any) -> dict[str, Any]:
    import aiokafka
    import faust

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "faust": getattr(faust, "__version__", "?"),
        "aiokafka": getattr(aiokafka, "__version__", "?"),
        "quixstreams": _version_of("quixstreams"),
        "broker": handle.broker_kind,
        "broker_version": handle.broker_version,
    }


def run(args: argparse.Namespace) -> int:
    from portrait_dev import infra, synth

    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = (
        only - {k for k, _ in THROUGHPUT_SCENARIOS} - {"latency", "memory", "api", "backfill", "cluster", "ownwork"}
    )
    if unknown:
        print(f"unknown scenarios: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if only & QUIX_SCENARIOS:
        from portrait_dev.bench_quix import quix_available

        missing = quix_available()
        if missing is not None:
            print(f"bench: skipping {', '.join(sorted(only & QUIX_SCENARIOS))}: {missing}", flush=True)
            only -= QUIX_SCENARIOS
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix="portrait-bench-"))
    began = time.monotonic()
    # wall clock (production): the synthetic 90 days end now, so every event is inside the windows;
    # event clock (replays/backfills): the generator's fixed end date.
    end = datetime.fromtimestamp(int(time.time()) // 60 * 60, UTC) if args.clock == "wall" else synth.DEFAULT_END
    # in wall time the window is whole days back from today: 90 days ending now would put the first
    # day's events outside it (dead-lettered as too_old, depending on the hour the bench runs)
    days = LONGEST_WINDOW_DAYS - 1 if args.clock == "wall" else synth.DEFAULT_DAYS
    events = synth.generate(users=args.users, events=args.events, seed=args.seed, end=end, days=days)
    payloads = [
        (str(e["type"]), str(e.get("user_id") or e.get("anonymous_id")).encode(), orjson.dumps(e)) for e in events
    ]
    print(
        f"bench: {len(payloads):,} single-event messages ({args.users:,} users, seed {args.seed}, "
        f"{sum(len(p[2]) for p in payloads) / len(payloads):.0f} B avg), {args.reps} reps, logs in {workdir}",
        flush=True,
    )
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not callable(v)}
    config["argv"] = sys.argv[1:]
    if "ownwork" in only:
        from portrait_dev.bench_ownwork import format_ownwork, run_ownwork

        ownwork = run_ownwork(workdir, events, max(args.reps, OWNWORK_MIN_REPS))
        print(format_ownwork(ownwork), flush=True)
        ownwork_path = out_dir / f"ownwork-{stamp}.json"
        ownwork_path.write_text(json.dumps({"config": config, "ownwork": ownwork}, indent=2, default=str) + "\n")
        print(f"results: {ownwork_path}", flush=True)
        only = only - {"ownwork"}
        if not only:
            return 0
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k, _ in THROUGHPUT_SCENARIOS}
    latency: dict[str, Any] | None = None
    memory: dict[str, Any] | None = None
    api: dict[str, Any] | None = None
    cluster: dict[str, Any] | None = None
    with infra.embedded(workdir, broker=args.broker) as handle:
        print(f"broker {handle.describe()} at {handle.bootstrap}; Valkey {handle.redis_url}", flush=True)
        environment = _environment(handle)
        bench = Bench(
            bootstrap=handle.bootstrap,
            broker_url=handle.broker_url,
            redis_url=handle.redis_url,
            workdir=workdir,
            partitions=args.partitions,
            payloads=payloads,
            events=events,
            timeout=args.timeout,
            clock=args.clock,
            service_pids=[p.pid for p in handle.processes],
        )
        try:
            latency, memory = asyncio.run(_run_all(bench, args, only, runs, out_dir / f"profile-{stamp}"))
            if "api" in only and args.api_users > 0:
                from portrait_dev.bench_api import run_api

                api = asyncio.run(run_api(bench, args.api_users, args.api_requests, args.seed))
            cluster = asyncio.run(_run_cluster(bench, args)) if "cluster" in only else None
        finally:
            bench.stop_all()
    doc = result_document(config=config, environment=environment, runs=runs, latency=latency, memory=memory)
    doc["api"] = api
    doc["backfill"] = bench.backfill
    doc["cluster"] = cluster
    doc["seconds"] = time.monotonic() - began
    json_path = out_dir / f"bench-{stamp}.json"
    json_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print()
    print(format_table(doc))
    if api is not None:
        from portrait_dev.bench_api import format_api

        print()
        print(format_api(api))
    chart = write_chart(doc, out_dir / f"bench-{stamp}")
    print(f"\nresults: {json_path}  chart: {chart}  ({doc['seconds']:.0f}s; everything started is stopped)")
    return 0


main = run


async def _run_all(
    bench: Bench, args: argparse.Namespace, only: set[str], runs: dict[str, list[dict[str, Any]]], profile_dir: Path
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    for rep in range(1, args.reps + 1):
        for key, label in THROUGHPUT_SCENARIOS:
            if key not in only:
                continue
            if key in QUIX_SCENARIOS:
                from portrait_dev.bench_quix import TOPIC_CONFIGS, child_argv

                argv = child_argv("noop" if key == "quixnoop" else "ref")
                result = await run_child(bench, rep, key, argv, TOPIC_CONFIGS)
            elif key == "noop":
                result = await run_noop(bench, rep)
            elif key == "noopb":
                result = await run_noop(bench, rep, consumer="batch")
            elif key == "raw":
                result = await run_raw(bench, rep)
            elif key == "pipeline1f":
                result = await run_pipeline(bench, rep, 1, consumer="faust")
            else:
                spy = profile_dir / key if args.profile and rep == 1 else None
                envelope = ENVELOPE_EVENTS if key == "envelope" else 0
                result = await run_pipeline(bench, rep, 2 if key == "pipeline2" else 1, spy, envelope=envelope)
            runs[key].append(result)
            busy = result.get("foreign_cpu", 0.0)
            warn = f"  WARNING: other processes used {100 * busy:.0f} % of the CPU" if busy > FOREIGN_WARN else ""
            cpu = result.get("cpu_us_per_event")
            cores = result.get("cores")
            print(
                f"  rep {rep} {label:<46} {result['rate']:>9,.0f} ev/s"
                f"{f', {cpu:,.0f} µs CPU/event' if cpu is not None else ''}"
                f"  (produced at {result['produce_rate']:,.0f} ev/s){warn}",
                flush=True,
            )
            if cores:
                print("        cores used: " + ", ".join(f"{k} {v:.2f}" for k, v in cores.items()), flush=True)
    if args.profile:
        _print_profiles(profile_dir)
    latency = memory = None
    if "backfill" in only:
        from portrait_dev.bench_backfill import run_backfill

        bench.backfill = await run_backfill(
            bench,
            args.backfill_customers,
            args.backfill_orders,
            args.backfill_months,
            args.backfill_steps,
            args.seed,
            args.backfill_workers,
            args.backfill_rfm,
            args.backfill_trainer,
        )
        b = bench.backfill
        print(
            f"  backfill ({b['steps']}, RFM refresh {b['rfm']}, {b['workers']} worker(s), trainer {b['trainer']}): "
            f"{b['orders']:,} orders of "
            f"{b['customers']:,} customers over "
            f"{b['months']} months in {b['seconds']:.1f} s ({b['rate']:,.0f} ev/s), "
            f"workers' CPU {b['worker_cpu_s']:.1f} s (all applied after {b['ingest_s']:.1f} s, "
            f"{b['ingest_cpu_s']:.1f} s of CPU), trainer's CPU {b['trainer_cpu_s']:.1f} s, "
            f"{b['reevaluations']:,} time-driven writes, firings {b['firings']} (by rule {b['firings_by_rule']}), "
            f"dead letters {b['dead_letters']}, churn examples learned {b['churn_examples']}, "
            f"churn bands {b['churn_bands']}",
            flush=True,
        )
    if "latency" in only:
        rates = [r["rate"] for r in runs["pipeline1"]]
        rate = args.latency_rate or (statistics.median(rates) if rates else 4000.0) / 2
        latency = await run_latency(bench, rate, args.latency_seconds, args.batch_within)
        print(
            f"  latency at {latency['rate']:,.0f} ev/s: p50 {_ms(latency['p50_ms'])} p99 {_ms(latency['p99_ms'])} "
            f"max {_ms(latency['max_ms'])}",
            flush=True,
        )
    if "memory" in only and args.memory_users > 0:
        memory = await run_memory(bench, args.memory_users, args.seed, templates_n=args.memory_templates)
        print(
            f"  memory: {fmt_bytes(memory['used_memory_per_user'])} per user "
            f"({fmt_bytes(memory['plain_json_state']['used_memory_per_user'])} with the state as plain JSON, "
            f"{fmt_bytes(memory['valkey_default_listpack']['used_memory_per_user'])} with Valkey's default "
            "listpack limits)",
            flush=True,
        )
    return latency, memory


async def _run_cluster(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    from portrait_dev.bench_cluster import replay_commands, run_cluster, summarise

    runs = []
    for rep in range(1, args.reps + 1):
        result = await run_cluster(bench, rep, run_pipeline)
        runs.append(result)
        for kind in ("standalone", "cluster"):
            r = result[kind]
            print(
                f"  rep {rep} (7) 2 workers on {kind:<10} {r['rate']:>9,.0f} ev/s, "
                f"{r['commands_per_event']:.2f} Redis commands and {r['redis_cpu_us_per_event']:.0f} µs of Redis CPU "
                "per event",
                flush=True,
            )
    replay = await replay_commands(bench, args.seed)
    print(
        f"  (7) event-time replay in-process ({replay['events']:,} events of {replay['users']:,} users): "
        f"{replay['standalone']['commands_per_event']:.2f} Redis commands per event on standalone, "
        f"{replay['cluster']['commands_per_event']:.2f} on the cluster",
        flush=True,
    )
    summary = summarise(runs)
    print(
        f"  (7) medians of {summary['reps']}: cluster/standalone events/s {summary['rate_ratio']:.2f}, "
        f"commands per event {summary['commands_ratio']:.2f} ({summary['cluster']['commands_per_event']:.2f} "
        f"vs {summary['standalone']['commands_per_event']:.2f})",
        flush=True,
    )
    return {"runs": runs, "summary": summary, "replay": replay}


def write_chart(doc: dict[str, Any], stem: Path) -> Path:
    """A bar chart of median events/s with min–max whiskers (PNG; SVG without matplotlib)."""
    labels, medians, lows, highs = [], [], [], []
    for key, label in THROUGHPUT_SCENARIOS:
        s = doc["scenarios"][key]["summary"]
        if s is None:
            continue
        labels.append(label.split(" ", 1)[1].replace(" (", "\n(").replace(", ", ",\n"))
        medians.append(s["median"])
        lows.append(s["median"] - s["min"])
        highs.append(s["max"] - s["median"])
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        path = stem.with_suffix(".svg")
        path.write_text(_svg_chart(labels, medians))
        return path
    fig, ax = plt.subplots(figsize=(9, 4.5))
    bars = ax.bar(range(len(labels)), medians, yerr=[lows, highs], capsize=6, color="#4C72B0")
    for bar, value in zip(bars, medians, strict=True):
        ax.annotate(f"{value:,.0f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_yscale("log")  # the raw consumer is ~50x the rest: a linear axis flattens them
    ax.set_ylabel("events/s (median, min-max; log scale)")
    env = doc["environment"]
    ax.set_title(f"portrait bench: {env['broker_version']}, {env['cpus']} cores, {env['date'][:10]}")
    ax.axhline(TARGETS["stretch_events_per_s"], color="grey", linestyle=":", linewidth=1, label="stretch goal 10k ev/s")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path = stem.with_suffix(".png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _svg_chart(labels: list[str], values: list[float]) -> str:
    top = max(values, default=1.0) or 1.0
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="640" height="300" font-family="sans-serif">']
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        h = 220 * value / top
        x = 20 + i * 155
        parts.append(f'<rect x="{x}" y="{250 - h:.0f}" width="120" height="{h:.0f}" fill="#4C72B0"/>')
        parts.append(f'<text x="{x}" y="{245 - h:.0f}" font-size="12">{value:,.0f} ev/s</text>')
        parts.append(f'<text x="{x}" y="270" font-size="10">{label.splitlines()[0]}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


if __name__ == "__main__":
    if sys.argv[1:2] == ["noop"]:
        raise SystemExit(noop_main())
    cli = argparse.ArgumentParser(prog="python -m portrait_dev.bench")
    add_arguments(cli)
    raise SystemExit(run(cli.parse_args()))
