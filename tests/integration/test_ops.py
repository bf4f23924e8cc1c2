"""Operations artefacts against real servers: promtool, a real Prometheus scraping a real worker,
every dashboard and alert expression evaluated, consumer lag read from the real broker, and the
Valkey ACL example loaded into a real Valkey.

Prometheus comes from the Debian ``prometheus`` package, installed on first use; a machine that
cannot install it fails these tests (it does not skip them).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import yaml
from portrait_dev import synth
from portrait_dev.infra import free_port, start_valkey

from stream.contracts.topics import Topics
from stream.core.writes import UserWrite
from stream.kafka.lag import consumer_lag, record_lag
from stream.kafka.replay import replay
from stream.metrics import Metrics
from stream.settings import Settings
from stream.storage.keys import Keys
from stream.storage.store import Store
from tests.integration.helpers import processed_and_settled, worker
from tests.ops_tools import (
    ALERTS,
    DEPLOY,
    LEAD_METRICS,
    PROMETHEUS_CONFIG,
    WORKER_JOB,
    PrometheusUnavailable,
    Query,
    alert_queries,
    dashboard_queries,
    ensure_prometheus,
    metric_names,
    promtool,
    running_prometheus,
    scrape_config,
)

# Dashboard panels the replay must fill (throughput, DLQ, latency, batches, tags' time path).
MUST_HAVE_DATA = {
    "Throughput by topic (events/s)",
    "Events by type (events/s)",
    "Apply outcomes (events/s)",
    "Dead letters by reason (msg/s)",
    "Dead-letter ratio",
    "Batch size",
    "Consume → profile written",
    "Event time → profile written (wall clock)",
    "Redis p99 by op",
    "Tag freshness (oldest due re-evaluation)",
    "Re-evaluations",
    "Workers up",
}


@pytest.fixture(scope="module")
def prometheus_bins() -> tuple[str, str]:
    try:
        return ensure_prometheus()
    except PrometheusUnavailable as exc:
        pytest.fail(f"Prometheus is required for the operations tests: {exc}", pytrace=False)


def _ok(done: object) -> None:
    assert getattr(done, "returncode", 1) == 0, f"{getattr(done, 'args', '')}:\n{done}"


def test_promtool_accepts_alerts_and_configs(prometheus_bins: tuple[str, str], tmp_path: Path) -> None:
    _, tool = prometheus_bins
    _ok(promtool(tool, "check", "rules", ALERTS))
    # the compose config (relative rule file) and a generated one (absolute rule file, static target)
    _ok(promtool(tool, "check", "config", PROMETHEUS_CONFIG))
    generated = tmp_path / "prometheus.yml"
    generated.write_text(yaml.safe_dump(scrape_config(["127.0.0.1:6066"], interval="15s")))
    _ok(promtool(tool, "check", "config", generated))


def _exp(alert: str, summary: str, severity: str = "warning", **labels: str) -> dict[str, object]:
    """An expected alert with its rendered annotations (so the templates are tested too)."""
    return {
        "exp_labels": {"severity": severity, **labels},
        "exp_annotations": {"summary": summary, "runbook_url": f"docs/runbook.md#{alert.lower()}"},
    }


def test_alerts_fire_on_synthetic_series(prometheus_bins: tuple[str, str], tmp_path: Path) -> None:
    """promtool's rule unit tests: the main stream alerts fire when they should, and only then."""
    _, tool = prometheus_bins
    worker_up = {"series": f'up{{job="{WORKER_JOB}", instance="w1:6066"}}', "values": "1+0x40"}
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {  # 10% of messages dead-lettered for 20 minutes
                "interval": "1m",
                "input_series": [
                    worker_up,
                    {"series": 'portrait_events_consumed_total{topic="c", type="page_view"}', "values": "0+90x40"},
                    {"series": 'portrait_dead_letters_total{reason="invalid_json"}', "values": "0+10x40"},
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "25m",
                        "alertname": "PortraitDeadLetterRatioHigh",
                        "exp_alerts": [_exp("PortraitDeadLetterRatioHigh", "10% of messages are dead-lettered")],
                    },
                    {"eval_time": "25m", "alertname": "PortraitNoEventsConsumed", "exp_alerts": []},
                    {"eval_time": "25m", "alertname": "PortraitWorkerDown", "exp_alerts": []},
                ],
            },
            {  # a worker up but nothing consumed; another worker down
                "interval": "1m",
                "input_series": [
                    worker_up,
                    {"series": f'up{{job="{WORKER_JOB}", instance="w2:6066"}}', "values": "0+0x40"},
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "30m",
                        "alertname": "PortraitNoEventsConsumed",
                        "exp_alerts": [
                            _exp(
                                "PortraitNoEventsConsumed", "Workers are up but consumed no valid event for 20 minutes"
                            )
                        ],
                    },
                    {
                        "eval_time": "30m",
                        "alertname": "PortraitWorkerDown",
                        "exp_alerts": [
                            _exp(
                                "PortraitWorkerDown",
                                "Portrait worker w2:6066 is not answering /metrics",
                                severity="critical",
                                job=WORKER_JOB,
                                instance="w2:6066",
                            )
                        ],
                    },
                ],
            },
            {  # one worker's broker check failing for 5 minutes, the other's passing; a short blip
                "interval": "1m",
                "input_series": [
                    {"series": 'portrait_ready{check="broker", instance="w1"}', "values": "1 1 0 0 0 0 0 0 0"},
                    {"series": 'portrait_ready{check="redis", instance="w1"}', "values": "1 1 1 1 1 1 1 1 1"},
                    {"series": 'portrait_ready{check="broker", instance="w2"}', "values": "1 0 1 1 1 1 1 1 1"},
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "7m",
                        "alertname": "PortraitWorkerNotReady",
                        "exp_alerts": [
                            _exp(
                                "PortraitWorkerNotReady",
                                "Portrait worker w1 is not ready: check broker failing (see /readyz)",
                                severity="critical",
                                check="broker",
                                instance="w1",
                            )
                        ],
                    },
                    {"eval_time": "3m", "alertname": "PortraitWorkerNotReady", "exp_alerts": []},
                ],
            },
            {  # lag growing on one topic, flat on another; replicas report the same partitions
                "interval": "1m",
                "input_series": [
                    {"series": 'portrait_consumer_lag{topic="a", partition="0", instance="w1"}', "values": "0+200x40"},
                    {"series": 'portrait_consumer_lag{topic="a", partition="0", instance="w2"}', "values": "0+200x40"},
                    {"series": 'portrait_consumer_lag{topic="b", partition="0", instance="w1"}', "values": "5000+0x40"},
                    {"series": 'portrait_tag_freshness_seconds{instance="w1"}', "values": "0+60x40"},
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "30m",
                        "alertname": "PortraitConsumerLagGrowing",
                        "exp_alerts": [
                            _exp("PortraitConsumerLagGrowing", "Consumer lag on a is 6k and still growing", topic="a")
                        ],
                    },
                    {
                        "eval_time": "30m",
                        "alertname": "PortraitTagFreshnessBehind",
                        "exp_alerts": [_exp("PortraitTagFreshnessBehind", "Time-driven tag updates are 30m 0s behind")],
                    },
                ],
            },
            {  # the trainer holds the lease for 5 minutes, then dies: only the workers' 0 remain
                "interval": "1m",
                "input_series": [
                    {"series": 'portrait_trainer_lease_held{instance="w1"}', "values": "0+0x40"},
                    {"series": 'portrait_trainer_lease_held{instance="t1"}', "values": "1 1 1 1 1 1"},
                ],
                "alert_rule_test": [
                    {"eval_time": "5m", "alertname": "PortraitNoTrainer", "exp_alerts": []},
                    # its last sample counts for 5 more minutes (staleness), then the 10 minutes of "for"
                    {"eval_time": "14m", "alertname": "PortraitNoTrainer", "exp_alerts": []},
                    {
                        "eval_time": "30m",
                        "alertname": "PortraitNoTrainer",
                        "exp_alerts": [
                            _exp(
                                "PortraitNoTrainer",
                                "No model trainer has held the lease for 10 minutes: models learn nothing, "
                                "checkpoints age",
                            )
                        ],
                    },
                ],
            },
        ],
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    _ok(promtool(tool, "test", "rules", path))


def _now_hour() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def test_prometheus_scrapes_worker_and_every_query_evaluates(
    prometheus_bins: tuple[str, str], make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    binary, _ = prometheus_bins
    settings = make_settings(clock="wall", timer_interval_s=0.5)
    end = _now_hour()
    events = synth.generate(users=50, events=2000, days=20, end=end)
    bad = synth.malformed_messages(end=end)
    messages: list[dict[str, object] | bytes] = [*events, *(raw for _, raw, _ in bad)]
    target = f"{settings.web_host}:{settings.web_port}"
    config = scrape_config([target], rule_files=[ALERTS], interval="1s")
    queries = dashboard_queries() + alert_queries()

    with (
        running_prometheus(binary, config, tmp_path / "prometheus", free_port()) as prom,
        worker(settings, tmp_path / "worker.log"),
    ):
        try:
            prom.wait_for(f'up{{job="{WORKER_JOB}"}}', lambda v: v == [1.0], timeout=15)
        except TimeoutError:
            targets = prom.api("targets")["data"]["activeTargets"]
            pytest.fail(f"Prometheus cannot scrape the worker's /metrics: {[t.get('lastError') for t in targets]}")
        batches_before = prom.values("sum(portrait_batch_size_count)")
        assert batches_before == [0.0]
        assert prom.values("portrait_events_consumed_total") == []  # nothing consumed yet

        # consumer lag from the real broker before the worker catches up: every input partition
        report = asyncio.run(replay(settings, messages, progress=False))
        assert report.total == len(messages)
        lag = asyncio.run(
            consumer_lag(settings.bootstrap_servers(), settings.app_id, Topics(settings.topic_prefix).inputs)
        )
        assert set(lag) == {(t, p) for t in Topics(settings.topic_prefix).inputs for p in range(settings.partitions)}
        assert all(v >= 0 for v in lag.values())

        # every message handled, then every user made due and re-evaluated (the time-driven path)
        asyncio.run(processed_and_settled(settings, len(messages), timeout=60))

        # key metrics exist and increased
        prom.wait_for("sum(portrait_events_consumed_total)", lambda v: v == [float(len(events))])
        assert prom.values("sum(portrait_batch_size_count)")[0] > batches_before[0]
        prom.wait_for("sum(increase(portrait_batch_size_count[1m]))", lambda v: bool(v) and v[0] > 0)
        expected_reasons = {reason for _, _, reason in bad}
        prom.wait_for(
            "sum by (reason) (portrait_dead_letters_total)",
            lambda v: len(v) == len(expected_reasons) and sum(v) == len(bad),
        )
        reasons = {r["metric"]["reason"] for r in prom.query("portrait_dead_letters_total")["data"]["result"]}
        assert reasons == expected_reasons
        topics = {r["metric"]["topic"] for r in prom.query("portrait_events_consumed_total")["data"]["result"]}
        assert topics <= set(Topics(settings.topic_prefix).inputs) and len(topics) >= 3
        assert prom.values('count(portrait_worker_info{clock="wall"})') == [1.0]
        prom.wait_for("sum(portrait_reevaluations_total)", lambda v: bool(v) and v[0] > 0)

        # after processing and the commit interval, the committed offsets reach the log end
        deadline = time.monotonic() + 20
        while sum(lag.values()) and time.monotonic() < deadline:
            time.sleep(0.5)
            lag = asyncio.run(
                consumer_lag(settings.bootstrap_servers(), settings.app_id, Topics(settings.topic_prefix).inputs)
            )
        assert sum(lag.values()) == 0, lag
        metrics = Metrics()
        record_lag(metrics, {**lag, (settings.topic_prefix + ".clickstream", 0): 7})
        assert (
            metrics.registry.get_sample_value(
                "portrait_consumer_lag", {"topic": f"{settings.topic_prefix}.clickstream", "partition": "0"}
            )
            == 7
        )

        time.sleep(2.5)  # a few more scrapes so every rate window holds at least two samples
        failures, empty = _evaluate(prom, queries)
        assert not failures, "queries Prometheus rejected:\n" + "\n".join(failures)
        missing = sorted(MUST_HAVE_DATA & set(empty))
        assert not missing, f"panels without data after the replay: {missing}"
        # a dashboard query whose metrics are all exported must return data
        present = {n for n in _names(prom)} | {"up"}
        for query in dashboard_queries():
            names = metric_names(query.expr)
            if names <= present and not names & set(LEAD_METRICS) and "portrait_consumer_lag" not in names:
                assert query.name not in empty, f"{query.name}: {query.expr} returned nothing"

        rules = _rule_health(prom)
        assert {name for name, _ in rules} == {q.name for q in alert_queries()}
        bad_rules = [(n, h) for n, h in rules if h != "ok"]
        assert not bad_rules, bad_rules


def _evaluate(prom: object, queries: list[Query]) -> tuple[list[str], list[str]]:
    """(queries Prometheus rejected, names of panels/alerts none of whose queries returned data)."""
    failures: list[str] = []
    with_data: set[str] = set()
    for query in queries:
        body = prom.query(query.expr)  # type: ignore[attr-defined]
        if body.get("status") != "success":
            failures.append(f"{query.source} {query.name!r}: {body.get('error')} <- {query.expr}")
        elif body["data"]["result"]:
            with_data.add(query.name)
    return failures, sorted({q.name for q in queries} - with_data)


def _names(prom: object) -> set[str]:
    body = prom.api("label/__name__/values")  # type: ignore[attr-defined]
    return set(body["data"])


def _rule_health(prom: object, timeout: float = 10.0) -> list[tuple[str, str]]:
    """(alert name, health) once every rule has been evaluated at least once."""
    deadline = time.monotonic() + timeout
    rules: list[tuple[str, str]] = []
    while time.monotonic() < deadline:
        body = prom.api("rules", type="alert")  # type: ignore[attr-defined]
        rules = [(r["name"], r["health"]) for g in body["data"]["groups"] for r in g["rules"]]
        if rules and all(h != "unknown" for _, h in rules):
            return rules
        time.sleep(0.3)
    return rules


KEYS = Keys("portrait")


# -- the Valkey ACL example -----------------------------------------------------------------------
def test_valkey_acl(tmp_path: Path) -> None:
    acl = tmp_path / "users.acl"
    shutil.copy(DEPLOY / "valkey" / "users.acl", acl)
    proc, url = start_valkey(tmp_path / "data", tmp_path / "valkey.log", extra_args=["--aclfile", str(acl)])
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        anonymous = redis.Redis(port=port)
        assert anonymous.ping()
        with pytest.raises(redis.exceptions.NoPermissionError):
            anonymous.get(KEYS.clock)

        worker_url = f"redis://portrait-worker:worker-example-password@127.0.0.1:{port}/0"
        asyncio.run(_worker_can_do_its_job(worker_url))
        raw_worker = redis.Redis.from_url(worker_url)
        for denied in (
            lambda: raw_worker.set("other:key", 1),
            lambda: raw_worker.keys("*"),
            lambda: raw_worker.flushall(),
            lambda: raw_worker.config_get("maxmemory"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                denied()

        crm = redis.Redis(port=port, username="portrait-crm", password="crm-example-password")
        profile = crm.hgetall(KEYS.profile("u1"))
        assert profile[b"segment"] == b"Champions"
        assert crm.smembers(KEYS.audience(KEYS.shard("u1"), "segment", "Champions")) == {b"u1"}
        for denied in (
            lambda: crm.hset(KEYS.profile("u1"), "segment", "x"),
            lambda: crm.delete(KEYS.profile("u1")),
            lambda: crm.get("other:key"),
            lambda: crm.eval("return 1", 0),
            lambda: crm.keys("*"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                denied()
    finally:
        proc.stop()


async def _worker_can_do_its_job(url: str) -> None:
    """The worker's real Redis operations (Lua write, claim, RFM refresh, stats) pass the ACL."""
    store = Store.from_url(url, KEYS)
    try:
        write = UserWrite("u1", 0, None)  # a deletion: the script's DEL/ZREM paths
        assert await store.write([write], 100.0, {"messages": 1}) == []
        await store.ensure_epoch()
        await store.client.hset(KEYS.profile("u1"), mapping={"segment": "Champions"})
        await store.client.sadd(KEYS.audience(KEYS.shard("u1"), "segment", "Champions"), "u1")
        assert await store.claim_due(200.0, 10, 1.0, 30.0) == []
        assert await store.due_stats(200.0) == (0, None)
        assert await store.refresh_rfm(200.0) >= 1
        await store.mark_all_due()
        assert await store.clock() == 100.0
        assert (await store.stats())["messages"] == 1
    finally:
        await store.close()
