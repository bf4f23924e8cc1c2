"""``portrait bench --only backfill``: an event-time backfill of a purchase history, end to end.

A purchase log (``synth.purchase_history``: by default 100,000 orders of 25,000 customers over 18
months) is produced to the input topics, then ``workers`` workers (one by default) in event time
(``PORTRAIT_CLOCK=event``, the shipped rules and models, delivery as configured: history is
withheld as ``backfill``) are started on the backlog. The backfill is done when every order is
applied, nothing is due up to the clock, a model checkpoint has learned every item written and
every label resolved by the clock (``Store.models_cover``), and the time-driven path has been idle
for ``QUIET_S`` (so the profiles have been brought to the final clock, scored by that checkpoint).
Reported: wall seconds from the first processed message to done, events/s over that time, the
workers' CPU seconds over that time (user + system: on a box other work keeps busy, the figure the
wall time hides), the same two until every order was applied (the rest is the time-driven tail:
the last change points and every profile brought to the clock), time-driven re-evaluations
written, and rule firings by outcome.
``--backfill-steps every`` runs the per-day path (every change point of every tag) for comparison;
``--backfill-rfm batches`` refreshes the RFM thresholds at every period start the batches cross
(``PORTRAIT_RFM_EVENT_REFRESH``), the default ``tick`` once a timer tick. ``--backfill-trainer
external`` runs the model trainer as ``portrait trainer`` in its own process
(``PORTRAIT_TRAINER=external``) instead of on the worker's event loop; its CPU is reported
separately (``trainer_cpu_s``), not in the workers' figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any

from stream.rules.counters import RuleCounter, parsed

QUIET_S = 3.0  # the time-driven path wrote nothing for this long: the backfill has settled


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process ``pid`` has used so far (Linux ``/proc``)."""
    import os
    from pathlib import Path

    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_backfill(
    bench: Any,
    customers: int,
    orders: int,
    months: int,
    steps: str,
    seed: int,
    workers: int = 1,
    rfm: str = "tick",
    trainer: str = "embedded",
) -> dict[str, Any]:
    """Scenario (8) on ``bench`` (a ``portrait_dev.bench.Bench``: its services and processes)."""
    from portrait_dev import synth
    from portrait_dev.harness import stop_worker
    from portrait_dev.infra import free_port
    from stream.contracts.topics import Topics
    from stream.kafka.admin import create_topics
    from stream.kafka.replay import replay
    from stream.storage.store import Store

    history = synth.purchase_history(customers=customers, orders=orders, months=months, seed=seed)
    payloads = history
    settings = bench.fresh_settings("bf", clock="event", time_steps=steps, rfm_event_refresh=rfm, trainer=trainer)
    create_topics(bench.bootstrap, Topics(settings.topic_prefix).all, settings.partitions)
    await replay(settings, history, progress=False)
    store = Store.from_settings(settings)
    # each worker serves its own health and metrics port
    each = [settings, *(settings.model_copy(update={"web_port": free_port()}) for _ in range(workers - 1))]
    procs = [bench.start_worker(s, f"backfill-{steps}-{n}.log") for n, s in enumerate(each)]
    trainers = []
    if trainer == "external":
        trainer_settings = settings.model_copy(update={"trainer_web_port": free_port()})
        trainers.append(bench.start_worker(trainer_settings, "backfill-trainer.log", command="trainer"))

    def cpu(of: list[Any] = procs) -> float:
        return sum(cpu_seconds(p.pid) for p in of)

    try:
        first_at: float | None = None
        applied_at: float | None = None  # every order applied: the rest is the time-driven tail
        cpu_applied = 0.0
        quiet_since: float | None = None
        cpu_first = cpu_quiet = trainer_first = trainer_quiet = 0.0
        last_reevaluations = -1
        # (s, applied, re-evaluations, due, clock, how far the time-driven path has evaluated every
        # due user, the last checkpoint's released time: the model's lag)
        timeline: list[tuple[float, int, int, int, float, float, float | None]] = []
        deadline = time.monotonic() + bench.timeout
        while True:
            stats = await store.stats()
            now = time.monotonic()
            applied = stats.get("events_applied", 0)
            if first_at is None and stats.get("messages", 0) > 0:
                first_at, cpu_first, trainer_first = now, cpu(), cpu(trainers)
            if applied_at is None and applied >= len(payloads):
                applied_at, cpu_applied = now, cpu()
            clock, timed = await store.timed()
            due, _ = await store.due_stats(clock)
            reevaluations = stats.get("reevaluations", 0)
            if first_at is not None and (not timeline or now - first_at - timeline[-1][0] >= 1.0):
                _, released = await store.model_coverage()
                if released is not None and not math.isfinite(released):
                    released = None  # JSON has no inf
                timeline.append((now - first_at, applied, reevaluations, due, clock, timed, released))
            # and the profiles scored by the checkpoint that learned the history (the final freshen waits for it)
            settled = applied >= len(payloads) and due == 0 and await store.models_cover(clock)
            if settled and reevaluations == last_reevaluations:
                if quiet_since is None:
                    quiet_since, cpu_quiet, trainer_quiet = now, cpu(), cpu(trainers)
                if now - quiet_since >= QUIET_S:
                    break
            else:
                quiet_since = None
            last_reevaluations = reevaluations
            if now > deadline:
                raise TimeoutError(f"backfill not settled after {bench.timeout:.0f}s: {stats}")
            await asyncio.sleep(0.2)
        model = (await store.model_status()).get("churn", {})
        bands = {v: n for (t, v), n in (await store.audience_sizes()).items() if t == "churn_band"}
    finally:
        await store.close()
        for proc in procs + trainers:
            stop_worker(proc, timeout=15)
            with contextlib.suppress(ValueError):
                bench.procs.remove(proc)
    assert first_at is not None and applied_at is not None and quiet_since is not None
    seconds = quiet_since - first_at
    firings: dict[str, int] = {}
    by_rule: dict[str, int] = {}
    for counter, n in parsed(stats):
        if isinstance(counter, RuleCounter):
            firings[counter.outcome] = firings.get(counter.outcome, 0) + n
            by_rule[counter.rule] = by_rule.get(counter.rule, 0) + n
    return {
        "steps": steps,
        "rfm": rfm,
        "workers": workers,
        "trainer": trainer,
        "customers": customers,
        "orders": len(payloads),
        "months": months,
        "seconds": seconds,
        "rate": len(payloads) / seconds if seconds > 0 else 0.0,
        "worker_cpu_s": cpu_quiet - cpu_first,
        "trainer_cpu_s": trainer_quiet - trainer_first,  # 0 when the trainer is embedded (in the workers' figure)
        "ingest_s": applied_at - first_at,  # until every order was applied
        "ingest_cpu_s": cpu_applied - cpu_first,
        "reevaluations": stats.get("reevaluations", 0),
        "dead_letters": {k: n for k, n in stats.items() if k.startswith("dlq_")},
        "firings": firings,
        "firings_by_rule": by_rule,
        "churn_examples": model.get("examples"),  # the trainer's last published checkpoint
        "churn_bands": bands,
        "timeline": timeline,
    }
