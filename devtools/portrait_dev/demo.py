"""``portrait demo``: the whole service on embedded infrastructure, start to summary.

Starts an embedded broker and Valkey, a worker process in event-time mode, replays a seeded
synthetic dataset plus a handful of malformed messages, waits until everything is processed
and re-evaluated, prints a summary and three sample profiles, and stops what it started.

With ``serve`` (the default in a terminal, never under ``CI``) the read API and dashboard
(``portrait api``) run next to the worker from the start, so the dashboard's trends fill in as
the replay moves the event clock; the demo then prints the dashboard's URL and keeps everything
up until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import Progress

from portrait_dev import infra, synth
from portrait_dev.harness import (
    Stalled,
    settle,
    start_worker,
    stop_worker,
    wait_healthy,
    wait_http,
    wait_processed,
)
from stream.cli.main import format_profile
from stream.contracts.events import EVENT_TYPES
from stream.contracts.topics import Topics
from stream.kafka import replay
from stream.settings import Settings
from stream.storage.store import Store
from stream.tagging.definitions import load_catalogue

# With --serve, after the summary: the same users' next days of events, time-lapsed, so the
# dashboard visibly moves (events/s, trends, churn warnings).
LIVE_DAYS = 14
LIVE_EVENTS_PER_USER = 6
LIVE_RATE = 25.0

# The demo waits as long as the worker makes progress (a slow, busy machine is fine) and gives up
# only after this long without any (``--stall-timeout``).
STALL_S = 180.0

SUMMARY_TAGS = (
    "rfm_segment",
    "value_tier",
    "activity_level",
    "activity_trend",
    "funnel_stage_7d",
    "cart_abandoned",
    "night_owl",
    "preferred_daypart",
    "satisfaction",
    "behaviour_segment",
    "churn_band",
)


async def _send_malformed(settings: Settings, seed: int) -> int:
    topics = Topics(settings.topic_prefix)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers(), acks="all", **settings.kafka_client_kwargs()
    )
    await producer.start()
    try:
        bad = synth.malformed_messages(seed)
        for hint, raw, _reason in bad:
            if hint in EVENT_TYPES:
                topic = topics.for_event_type(hint)
            elif f"{topics.prefix}.{hint}" in topics.inputs:
                topic = f"{topics.prefix}.{hint}"
            else:
                topic = topics.clickstream
            await producer.send_and_wait(topic, raw, key=b"malformed")
        return len(bad)
    finally:
        await producer.stop()


def _trigger_summary(settings: Settings) -> list[str]:
    """Triggers per rule from the worker's /metrics (the same numbers an SRE sees)."""
    url = f"http://{settings.web_host}:{settings.web_port}/metrics"
    with urllib.request.urlopen(url, timeout=60) as resp:  # a busy worker answers late
        text = resp.read().decode()
    sent: Counter[str] = Counter()
    suppressed: dict[str, Counter[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "portrait_triggers_sent_total":
                sent[sample.labels["rule"]] += int(sample.value)
            elif sample.name == "portrait_triggers_suppressed_total":
                suppressed.setdefault(sample.labels["rule"], Counter())[sample.labels["reason"]] += int(sample.value)
    rules = sorted(set(sent) | set(suppressed))
    if not rules:
        return ["no rule fired"]
    lines = []
    for rule in rules:
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(suppressed.get(rule, Counter()).items())) or "none"
        lines.append(f"{rule:<26} sent {sent[rule]:>5}   suppressed: {reasons}")
    return lines


async def _audiences(store: Store, tags: tuple[str, ...]) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {t: Counter() for t in tags}
    for (tag, value), size in (await store.audience_sizes()).items():
        if tag in out:
            out[tag][value] = size
    return out


def should_serve(serve: bool | None) -> bool:
    """``--serve``/``--no-serve`` as given; by default serve in a terminal, never under CI."""
    if serve is not None:
        return serve
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    return sys.stdin.isatty() and sys.stdout.isatty()


def dashboard_url(settings: Settings) -> str:
    return f"http://{settings.api_host}:{settings.api_port}/"


@contextlib.contextmanager
def serving(settings: Settings, log_path: Path, enabled: bool) -> Iterator[str | None]:
    """``portrait api`` (the read API and dashboard) as a child process for the block; its URL, or
    None when not ``enabled``."""
    if not enabled:
        yield None
        return
    proc = start_worker(settings, log_path, command="api")
    try:
        try:
            wait_http(f"{dashboard_url(settings)}healthz", proc, timeout=60)
        except RuntimeError:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-10:])
            raise SystemExit(f"the dashboard (portrait api) exited with {proc.returncode}:\n{tail}") from None
        except TimeoutError:
            raise SystemExit(
                f"the dashboard did not answer at {dashboard_url(settings)} within 60 s (log: {log_path})"
            ) from None
        yield dashboard_url(settings)
    finally:
        stop_worker(proc)


def live_events(users: int, seed: int) -> list[dict[str, Any]]:
    """The same users' next ``LIVE_DAYS`` days (same seed, so the same personas), without identify
    events (their traits stay), with event ids of their own."""
    end = synth.DEFAULT_END + timedelta(days=LIVE_DAYS)
    data = synth.generate(users=users, events=users * LIVE_EVENTS_PER_USER, seed=seed, end=end, days=LIVE_DAYS + 1)
    start = synth.DEFAULT_END.timestamp()
    return [
        {**e, "event_id": f"live-{e['event_id']}"}
        for e in data
        if e["type"] != "identify" and datetime.fromisoformat(e["ts"]).timestamp() > start
    ]


async def serve_until_ctrl_c(url: str, settings: Settings, users: int, seed: int) -> None:
    """Print where the dashboard is, stream the live events in the background and wait for Ctrl-C
    (asyncio cancels the wait on SIGINT), SIGTERM or SIGHUP."""
    live = live_events(users, seed)
    print(f"\ndashboard: {url}   (read API documentation: {url}docs)")
    print(
        f"live: {len(live):,} more events ({LIVE_DAYS} days of the same users, time-lapsed) stream in at "
        f"{LIVE_RATE:.0f} events/s; the worker, broker and Valkey keep running "
        f"(PORTRAIT_BROKER_URL={settings.broker_url} PORTRAIT_REDIS_URL={settings.redis_url} for other commands)"
    )
    print("press Ctrl-C to stop")
    streaming = asyncio.create_task(replay.replay(settings, live, progress=False, rate=LIVE_RATE))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP):  # a closed terminal or a kill stops cleanly too
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(asyncio.CancelledError):
        await stop.wait()
    print("\nstopping")
    streaming.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await streaming


def delivery_note(settings: Settings) -> str:
    """Which delivery setting applies to the replayed history (docs/rules.md, "Backfills")."""
    if settings.delivery == "off":
        return "delivery: off (PORTRAIT_DELIVERY): no firing is decided"
    if settings.delivery == "dry-run":
        return "delivery: dry-run (PORTRAIT_DELIVERY): every firing is recorded as dry_run, none sent"
    if settings.delivery_horizon_s <= 0:
        return "delivery: live, no horizon: firings of the history are sent"
    return (
        f"delivery: live; firings more than {settings.delivery_horizon_s / 3600:g} h behind the wall clock "
        "(this whole history) are recorded as backfill suppressions, not sent"
    )


async def _run(
    settings: Settings, users: int, events: int, seed: int, workdir: Path, stall_s: float, serve: bool
) -> None:
    store = Store.from_settings(settings)
    worker = start_worker(settings, workdir / "worker.log")
    api = contextlib.ExitStack()
    try:
        url = api.enter_context(serving(settings, workdir / "api.log", serve))
        print(f"worker starting (log: {workdir / 'worker.log'})")
        data = synth.generate(users=users, events=events, seed=seed)
        personas = synth.personas(users=users, seed=seed)
        print(f"generated {len(data)} events for {users} users ({', '.join(sorted(set(personas.values())))})")
        started = time.monotonic()
        report = await replay.replay(settings, data, progress=True)
        bad = await _send_malformed(settings, seed)
        total = report.total + bad
        await asyncio.to_thread(wait_healthy, settings, worker)
        with Progress(console=Console(stderr=True)) as bars:
            task = bars.add_task("processed", total=total)

            class Bar:
                def update(self, n: int) -> None:
                    bars.advance(task, n)

            try:
                throughput = await wait_processed(store, total, timeout=None, progress=Bar(), stall_s=stall_s)
            except Stalled as exc:
                tail = "\n".join((workdir / "worker.log").read_text(errors="replace").splitlines()[-20:])
                raise SystemExit(f"demo stopped, the worker made {exc}; its last log lines:\n{tail}") from None
        elapsed = time.monotonic() - started
        await settle(store, event_clock=True)
        stats = await store.stats()
        audiences = await _audiences(store, SUMMARY_TAGS)
        catalogue = load_catalogue(settings.tags_file)

        print("\n=== summary ===")
        print(f"messages processed : {stats.get('messages', 0)}  (replayed {report.total} events + {bad} malformed)")
        print(f"events applied     : {stats.get('events_applied', 0)}")
        print(f"duplicates skipped : {stats.get('events_duplicate', 0)}")
        print(f"redelivered skipped: {stats.get('events_redelivered', 0)}")
        print(f"re-evaluations     : {stats.get('reevaluations', 0)} (time-driven)")
        print(
            f"throughput         : {throughput.rate:,.0f} events/s worker (first to last message); "
            f"{total / elapsed:,.0f} events/s end to end incl. worker start ({elapsed:.1f}s)"
        )
        dlq = {k[4:]: v for k, v in stats.items() if k.startswith("dlq_")}
        print("dead-lettered      : " + (", ".join(f"{k}={v}" for k, v in sorted(dlq.items())) or "none"))
        print("\n=== tag distribution (audience set sizes) ===")
        for tag in SUMMARY_TAGS:
            counts = audiences[tag]
            print(f"{tag:<18} " + ", ".join(f"{v}={n}" for v, n in counts.most_common()))
        print("\n=== triggers by rule (sent / suppressed by reason) ===")
        print(delivery_note(settings))
        for line in _trigger_summary(settings):
            print(line)
        status = await store.model_status()
        if status:
            churn = status["churn"]
            print("\n=== models ===")
            print(
                f"churn: {churn['examples']} resolved examples, progressive AUC {churn['auc']} "
                f"vs recency-only baseline {churn['baseline_auc']}"
            )
            for seg in sorted(status["segments"], key=lambda d: -d["share"]):
                print(f"  {seg['segment_id']:<4} {seg['share']:6.1%}  {seg['text']}")
        print("\n=== sample profiles ===")
        shown = 0
        for wanted in ("night_owl", "loyal_big_spender", "drifting_away", "window_shopper"):
            uid = next((u for u, p in sorted(personas.items()) if p == wanted), None)
            if uid is None or shown == 3:
                continue
            profile = {k: v for k, v in (await store.profile(uid)).items() if not k.startswith("_")}
            print(f"\n(persona: {wanted})")
            print(format_profile(uid, profile, catalogue))
            shown += 1
        if url is not None:
            await serve_until_ctrl_c(url, settings, users, seed)
    finally:
        api.close()
        stop_worker(worker)
        await store.close()


def run_demo(
    users: int = 2000, events: int = 50000, seed: int = 7, stall_s: float = STALL_S, serve: bool | None = None
) -> int:
    """Run the demo; it fails only when the worker makes no progress for ``stall_s`` seconds.
    ``serve``: keep the dashboard up until Ctrl-C (None: in a terminal, never under CI)."""
    workdir = Path(tempfile.mkdtemp(prefix="portrait-demo-"))
    try:
        return _demo(users, events, seed, workdir, stall_s, should_serve(serve))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # logs, data and state: nothing is left behind


def _api_port() -> int:
    """The API's usual port when it is free, else any free one."""
    usual = int(Settings.model_fields["api_port"].default)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", usual))
        except OSError:
            return infra.free_port()
    return usual


def _demo(users: int, events: int, seed: int, workdir: Path, stall_s: float, serve: bool) -> int:
    began = time.monotonic()
    with infra.embedded(workdir) as handle:
        print(f"embedded {handle.broker_kind} broker at {handle.bootstrap}, Valkey at {handle.redis_url}")
        settings = Settings(
            broker_url=handle.broker_url,
            redis_url=handle.redis_url,
            clock="event",
            web_port=infra.free_port(),
            state_file=workdir / "infra.json",
            api_port=_api_port(),
            api_insights_interval_s=2.0,  # trends get a snapshot for every event-time hour the replay passes
            # synthetic customers on an embedded broker: their history's triggers are sent, so the
            # rules and their measured effect have something to show (production keeps the horizon)
            delivery_horizon_s=0,
        )
        handle.create_topics(Topics(settings.topic_prefix).all, settings.partitions)
        asyncio.run(_run(settings, users, events, seed, workdir, stall_s, serve))
    print(f"\ndemo finished in {time.monotonic() - began:.1f}s; everything it started is stopped")
    return 0
