"""``portrait bench --only ownwork``: the worker's own work per event, without Kafka.

The worker's ``Processor`` (wall clock, the shipped tags, rules and models, as ``portrait worker``
builds it) runs in this process on the bench's synthetic events, cut into batches of
``BATCH`` messages (each event on its input topic, partitioned by user like the producer does),
against a Valkey of its own (``portrait_dev.infra.start_valkey``). Reported per variant: the wall
CPU time of ``Processor.process`` per event (µs, this process's CPU: robust to other load on the
machine; the wall time is reported too; nothing of Kafka or Faust is in it), Valkey's own CPU
per event (``INFO cpu``) and Redis commands per event (``INFO commandstats``), medians and
min–max over the repetitions.

Variants: ``current`` (the code as it is) and, for each lever of issue 16 goal 2, the same code with
that one lever undone (``BASELINES``: each restores the behaviour before the lever, by patching the
modules around each of its batches). Every variant of a repetition gets a fresh worker on a fresh
key prefix and the same events; the variants take turns batch by batch, so a change of load on
the machine hits all of them alike. A lever's ratio is the median over the repetitions of
``without / current`` CPU per event, each pair from the same repetition (above 1: the lever
saves time).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import statistics
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

BATCH = 500
WARMUP_EVENTS = 2000  # processed once before the repetitions (imports, script loading, caches)

Patch = Callable[[], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextlib.contextmanager
def _epoch_per_call() -> Iterator[None]:
    """Before: ``EventBase.epoch`` converted ``ts`` on every read."""
    from stream.contracts.events import EventBase

    with mock.patch.object(EventBase, "epoch", property(lambda self: self.ts.timestamp())):
        yield


@contextlib.contextmanager
def _interpreted_conditions() -> Iterator[None]:
    """Before: a rule's condition tree was interpreted (``conditions.holds``) on every step."""
    from stream.rules import evaluate
    from stream.rules.conditions import holds
    from stream.rules.config import per_rule_set

    @per_rule_set
    def interpreted(rules: Any) -> Any:
        return tuple((r, functools.partial(holds, r.when)) for r in rules.active)

    with mock.patch.object(evaluate, "_conditions", interpreted):
        yield


@contextlib.contextmanager
def _parse_numbers_every_time() -> Iterator[None]:
    """Before: every comparison parsed its operand and the tag's value (``conditions.as_number``)."""
    from stream.rules import conditions

    with mock.patch.object(conditions, "as_number", conditions.as_number.__wrapped__):
        yield


@contextlib.contextmanager
def _score_every_time() -> Iterator[None]:
    """Before: every evaluation built both feature vectors and scored the churn model."""
    from stream.models import runtime
    from stream.models.features import Vector, build_features

    def segment_features(self: runtime.Models, profile: Mapping[str, str]) -> Vector:
        return build_features(profile, self.segment_specs)

    def churn_tags(self: runtime.Models, profile: Mapping[str, str]) -> tuple[Vector, dict[str, str]]:
        x = build_features(profile, self.churn_specs)
        return x, self.churn.tags(x)

    with (
        mock.patch.object(runtime.Models, "segment_features", segment_features),
        mock.patch.object(runtime.Models, "churn_tags", churn_tags),
    ):
        yield


def _record_batch_per_event(
    metrics: Any, plan: Any, valid: list[Any], messages: int, received: float, finished: float | None
) -> None:
    """``stream.service.batch_metrics.record_batch`` before: a labelled increment per event."""
    for key, n in plan.identity.items():
        metrics.identity.labels(key.removeprefix("identity_refused_").removeprefix("identity_")).inc(n)
    for kind, n in plan.outcomes.items():
        metrics.applied.labels(kind).inc(n)
    for item in valid:
        metrics.events.labels(item.message.topic, item.event.type).inc()
    metrics.batch_size.observe(messages)
    metrics.consume_to_profile.observe(time.perf_counter() - received)
    if finished is not None:
        for item in valid:
            metrics.event_to_profile.observe(max(0.0, finished - item.event.epoch))


def _record_decisions_per_write(metrics: Any, writes: Any) -> None:
    """``stream.service.batch_metrics.record_decisions`` before: increments per write and firing."""
    from stream.rules.counters import EffectCounter, parsed

    for w in writes:
        for counter, n in parsed(w.counters):
            if isinstance(counter, EffectCounter):
                metrics.rule_effect.labels(counter.rule, counter.group, counter.what).inc(n)
        for d in w.decisions:
            if d.outcome == "send":
                metrics.triggers_sent.labels(d.rule).inc()
            else:
                metrics.triggers_suppressed.labels(d.rule, d.reason).inc()


@contextlib.contextmanager
def _metrics_per_event() -> Iterator[None]:
    from stream.service import processor

    with (
        mock.patch.object(processor, "record_batch", _record_batch_per_event),
        mock.patch.object(processor, "record_decisions", _record_decisions_per_write),
    ):
        yield


@contextlib.contextmanager
def _catalogue_sets_per_call() -> Iterator[None]:
    """Before: ``TagCatalogue.names``/``audience_tags`` and ``RuleSet.active`` were rebuilt per read."""
    from stream.rules.config import RuleSet
    from stream.tagging.definitions import TagCatalogue

    with (
        mock.patch.object(TagCatalogue, "names", property(lambda c: frozenset(t.name for t in c.tags))),
        mock.patch.object(
            TagCatalogue, "audience_tags", property(lambda c: frozenset(t.name for t in c.tags if t.audience))
        ),
        mock.patch.object(RuleSet, "active", property(lambda r: tuple(x for x in r.rules if x.enabled))),
    ):
        yield


# lever name -> a context manager that undoes the lever for one run
BASELINES: dict[str, Patch] = {
    "epoch once per event": _epoch_per_call,
    "compiled conditions": _interpreted_conditions,
    "number parsing memo": _parse_numbers_every_time,
    "scoring memo": _score_every_time,
    "batch-level metrics": _metrics_per_event,
    "definition sets once": _catalogue_sets_per_call,
}

ALL = "all levers"  # the variant with every lever undone: the code before issue 16's goal 2


@contextlib.contextmanager
def _all_undone() -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for patch in BASELINES.values():
            stack.enter_context(patch())
        yield


def messages_of(events: list[dict[str, Any]], partitions: int) -> list[Any]:
    """The events as the worker would consume them: on their input topic, partition by user key,
    offsets rising per partition in event order."""
    import orjson

    from stream.contracts.topics import Topics
    from stream.core.intake import Message
    from stream.kafka.replay import route

    topics = Topics()
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for event in events:
        topic, key, value, _ = route(orjson.loads(orjson.dumps(event)), topics)
        partition = zlib.crc32(key or b"") % partitions
        offset = offsets.get((topic, partition), 0)
        offsets[(topic, partition)] = offset + 1
        out.append(Message(topic, partition, offset, key, value))
    return out


async def _valkey_counters(client: Any) -> tuple[float, int]:
    """(Valkey CPU seconds so far, commands executed so far)."""
    cpu = await client.info("cpu")
    stats = await client.info("commandstats")
    calls = sum(int(v["calls"]) for v in stats.values() if isinstance(v, dict))
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), calls


async def _processor(redis_url: str) -> Any:
    """A worker's processor (as ``stream.app.create_app`` builds it) on a fresh key prefix."""
    from stream.metrics import Metrics
    from stream.models import Models, load_models_config
    from stream.rules import load_rules
    from stream.service.processor import Processor
    from stream.settings import Settings
    from stream.storage.store import Store
    from stream.tagging.definitions import load_catalogue

    settings = Settings(redis_url=redis_url, key_prefix=f"ow-{uuid.uuid4().hex[:10]}", clock="wall")
    catalogue = load_catalogue(settings.tags_file)
    rules_file = settings.resolved_rules_file()
    rules = load_rules(rules_file, catalogue) if rules_file is not None else None
    models = Models(load_models_config(settings.models_file))
    store = Store.from_settings(settings)

    async def nowhere(_: list[Any]) -> None:
        return None

    processor = Processor(
        settings, catalogue, store, nowhere, Metrics(), rules=rules, send_triggers=nowhere, models=models
    )
    await store.ensure_outbox()
    return processor


async def _one_run(redis_url: str, messages: list[Any], batch: int, variants: dict[str, Patch]) -> dict[str, Any]:
    """Process every message once per variant, each with a fresh worker on a fresh key prefix,
    alternating the variants batch by batch (so a change of load on the machine hits them
    alike); per-event costs of each variant."""
    import redis.asyncio as aioredis

    processors = {name: await _processor(redis_url) for name in variants}
    cost = {name: [0.0, 0.0, 0.0, 0] for name in variants}  # CPU s, wall s, Valkey CPU s, commands
    probe = aioredis.from_url(redis_url)
    try:
        names = list(variants)
        for turn, start in enumerate(range(0, len(messages), batch)):
            chunk = messages[start : start + batch]
            # the variants' order rotates from batch to batch (none always goes first), and each
            # starts with the garbage of the one before collected
            for name in names[turn % len(names) :] + names[: turn % len(names)]:
                patch = variants[name]
                gc.collect()
                cpu0, calls0 = await _valkey_counters(probe)
                with patch():
                    t0, c0 = time.perf_counter(), time.process_time()
                    await processors[name].process(chunk)
                    c1, t1 = time.process_time(), time.perf_counter()
                cpu1, calls1 = await _valkey_counters(probe)
                spent = cost[name]
                spent[0] += c1 - c0
                spent[1] += t1 - t0
                spent[2] += cpu1 - cpu0
                spent[3] += calls1 - calls0 - 1  # the probe's own INFO cpu
        await probe.flushdb()
    finally:
        await probe.aclose()
        for processor in processors.values():
            await processor.store.close()
    n = len(messages)
    return {
        name: {
            "us_per_event": 1e6 * cpu / n,
            "wall_us_per_event": 1e6 * wall / n,
            "valkey_us_per_event": 1e6 * valkey / n,
            "commands_per_event": calls / n,
        }
        for name, (cpu, wall, valkey, calls) in cost.items()
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def run_ownwork_on(
    redis_url: str, events: list[dict[str, Any]], reps: int, batch: int = BATCH, partitions: int = 4
) -> dict[str, Any]:
    """Every variant ``reps`` times (interleaved) on ``redis_url``; see the module docstring."""
    messages = messages_of(events, partitions)
    variants: dict[str, Patch] = {"current": _nothing, **{f"without {k}": p for k, p in BASELINES.items()}}
    variants[f"without {ALL}"] = _all_undone
    await _one_run(redis_url, messages[:WARMUP_EVENTS], batch, {"current": _nothing})
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    for rep in range(1, reps + 1):
        results = await _one_run(redis_url, messages, batch, variants)
        for name, result in results.items():
            runs[name].append(result)
            print(
                f"  rep {rep} ownwork {name:<34} {result['us_per_event']:7.1f} µs/event CPU "
                f"({result['wall_us_per_event']:.0f} wall), Valkey "
                f"{result['valkey_us_per_event']:5.1f} µs/event, {result['commands_per_event']:.2f} commands/event",
                flush=True,
            )
    summary = {name: {metric: _spread([r[metric] for r in rs]) for metric in rs[0]} for name, rs in runs.items()}
    # paired: each repetition's variant against that repetition's current (same load, same data)
    current = [r["us_per_event"] for r in runs["current"]]
    ratios = {
        name.removeprefix("without "): _spread([r["us_per_event"] / c for r, c in zip(rs, current, strict=True)])
        for name, rs in runs.items()
        if name != "current"
    }
    return {"events": len(messages), "batch": batch, "reps": reps, "runs": runs, "summary": summary, "ratios": ratios}


def run_ownwork(workdir: Path, events: list[dict[str, Any]], reps: int) -> dict[str, Any]:
    """Scenario ``ownwork`` with a Valkey of its own in ``workdir`` (stopped at the end)."""
    from portrait_dev import infra

    proc, url = infra.start_valkey(workdir / "ownwork-valkey", workdir / "ownwork-valkey.log")
    try:
        return asyncio.run(run_ownwork_on(url, events, reps))
    finally:
        proc.kill()


def format_ownwork(doc: dict[str, Any]) -> str:
    lines = [
        f"own work per event ({doc['events']:,} events, batches of {doc['batch']}, medians of {doc['reps']}):",
        "| variant | CPU µs/event (min–max) | wall µs/event | Valkey CPU µs/event | commands/event | ratio (min–max) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in doc["summary"].items():
        us, vk, cmd = s["us_per_event"], s["valkey_us_per_event"], s["commands_per_event"]
        r = doc["ratios"].get(name.removeprefix("without "))
        shown = "1.00" if r is None else f"{r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f})"
        lines.append(
            f"| {name} | {us['median']:.1f} ({us['min']:.1f}–{us['max']:.1f}) | "
            f"{s['wall_us_per_event']['median']:.0f} | {vk['median']:.1f} | {cmd['median']:.2f} | {shown} |"
        )
    return "\n".join(lines)
