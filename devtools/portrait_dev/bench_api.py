"""``portrait bench --only api``: latency of every read-API endpoint with many users in Redis.

The users are the worker's own (``bench.build_templates``: synthetic 90-day histories replayed by
the offline driver), cloned to ``users`` ids and written with ``Store.write`` (the worker's Lua
script, with the audience sets it keeps). A ``portrait api`` process then serves them over real
HTTP; once its first insights pass is done, each endpoint is called ``requests`` times in a row
over one keep-alive connection (after a warm-up) and the percentiles of the wall time of each
call, request sent to body read, are reported. Targets (issue 14): p95 <= 50 ms for a profile,
an audience size and every insights endpoint; the export streams (rows/s reported).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import json
import random
import subprocess
import sys
import time
from typing import Any, Protocol
from urllib.parse import quote


class Bench(Protocol):
    """What this scenario uses of ``portrait_dev.bench.Bench`` (not imported: bench imports this)."""

    procs: list[subprocess.Popen[bytes]]
    timeout: float

    def fresh_settings(self, scenario: str, **overrides: Any) -> Any: ...

    def spawn(self, argv: list[str], settings: Any, log_name: str) -> subprocess.Popen[bytes]: ...


TARGET_P95_MS = 50.0
WARMUP = 10
# (name, method, path or None for the profile paths built per call, body); targets marked in TARGETED
ENDPOINTS: tuple[tuple[str, str, str], ...] = (
    ("profile", "GET", "/v1/profiles/{uid}"),
    ("profile card", "GET", "/v1/profiles/{uid}?group_by=level&include=activity,history,identities"),
    ("batchGet 100", "POST", "/v1/profiles:batchGet"),
    ("audiences (all sizes)", "GET", "/v1/audiences"),
    ("audience size", "GET", "/v1/audiences/rfm_segment/At%20Risk?limit=0"),
    ("audience page 100", "GET", "/v1/audiences/value_tier/low?limit=100"),
    ("AND size + page", "GET", "/v1/audiences/rfm_segment/At%20Risk?and=churn_band:high&limit=100"),
    ("OR/NOT size + page", "GET", "/v1/audiences/value_tier/vip?or=value_tier:high&not=cart_abandoned:true&limit=100"),
    *(
        (f"insights/{name}", "GET", f"/v1/insights/{name}")
        for name in (
            "overview",
            "rfm",
            "funnel",
            "activity",
            "categories",
            "satisfaction",
            "churn",
            "segments",
            "rules",
            "trends",
        )
    ),
)
TARGETED = {"profile", "audience size"} | {name for name, _, _ in ENDPOINTS if name.startswith("insights/")}


def _uid(i: int) -> str:
    return f"a{i:07d}"


async def load_users(settings: Any, templates: Any, users: int) -> float:
    """Clone the templates to ``users`` ids with ``Store.write``; seconds taken."""
    from portrait_dev.bench_data import store_for

    store = store_for(settings)
    started = time.monotonic()
    try:
        batch: list[Any] = []
        for i in range(users):
            batch.append(dataclasses.replace(templates.writes[i % len(templates.writes)], uid=_uid(i)))
            if len(batch) >= 500:
                await store.write(batch, templates.now, {"api_bench_users": len(batch)})
                batch = []
        if batch:
            await store.write(batch, templates.now, {"api_bench_users": len(batch)})
    finally:
        await store.close()
    return time.monotonic() - started


class Client:
    """One keep-alive HTTP/1.1 connection to the API."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes, float]:
        headers = {"content-type": "application/json"} if body is not None else {}
        started = time.perf_counter()
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        return response.status, data, time.perf_counter() - started

    def close(self) -> None:
        self.conn.close()


def _wait_ready(client: Client, timeout: float) -> dict[str, Any]:
    """Until the first insights pass is done: its meta."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, body, _ = client.call("GET", "/v1/insights/overview")
            if status == 200:
                meta: dict[str, Any] = json.loads(body)["meta"]
                return meta
        time.sleep(1.0)
    raise TimeoutError(f"the API's first insights pass did not finish within {timeout:.0f} s")


def measure(port: int, users: int, requests: int, seed: int, timeout: float) -> dict[str, Any]:
    """Percentiles per endpoint, and the export's rate (blocking: run in a thread)."""
    from portrait_dev.bench_data import percentile

    rng = random.Random(seed)
    client = None
    deadline = time.monotonic() + 120
    while client is None:
        try:
            candidate = Client(port)
            candidate.call("GET", "/healthz")
            client = candidate
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    meta = _wait_ready(client, timeout)
    results: dict[str, Any] = {}
    for name, method, template in ENDPOINTS:
        times: list[float] = []
        statuses: dict[int, int] = {}
        for n in range(WARMUP + requests):
            body = None
            path = template.replace("{uid}", quote(_uid(rng.randrange(users)), safe=""))
            if method == "POST":
                body = json.dumps({"user_ids": [_uid(rng.randrange(users)) for _ in range(100)]}).encode()
            status, _, seconds = client.call(method, path, body)
            statuses[status] = statuses.get(status, 0) + 1
            if n >= WARMUP:
                times.append(seconds * 1000)
        results[name] = {
            "requests": requests,
            "p50_ms": percentile(times, 0.50),
            "p95_ms": percentile(times, 0.95),
            "p99_ms": percentile(times, 0.99),
            "max_ms": max(times),
            "statuses": statuses,
            "targeted": name in TARGETED,
        }
    export_path = "/v1/audiences/value_tier/low:export?fields=rfm_segment,monetary_90d"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    conn.request("GET", export_path)
    response = conn.getresponse()
    first = response.read(1)
    first_byte = time.perf_counter() - started
    size, rows = len(first), first.count(b"\n")
    while chunk := response.read(1 << 16):
        size, rows = size + len(chunk), rows + chunk.count(b"\n")
    total = time.perf_counter() - started
    conn.close()
    client.close()
    return {
        "pass": meta,
        "endpoints": results,
        "export": {
            "path": export_path,
            "rows": rows - 1,
            "bytes": size,
            "first_byte_ms": first_byte * 1000,
            "seconds": total,
            "rows_per_s": (rows - 1) / total if total else None,
        },
    }


async def run_api(bench: Bench, users: int, requests: int, seed: int) -> dict[str, Any]:
    from portrait_dev.bench_data import build_templates, delete_prefix, store_for
    from portrait_dev.infra import free_port

    settings = bench.fresh_settings("api", clock="event", api_port=free_port())
    templates = await build_templates(settings, min(users, 2000), seed)
    load_seconds = await load_users(settings, templates, users)
    print(f"  api: {users:,} users loaded in {load_seconds:.0f} s; starting portrait api", flush=True)
    proc = bench.spawn([sys.executable, "-m", "stream", "api"], settings, "api.log")
    try:
        measured = await asyncio.to_thread(measure, settings.api_port, users, requests, seed, bench.timeout * 10)
    finally:
        from portrait_dev.harness import stop_worker

        stop_worker(proc, timeout=15)
        bench.procs.remove(proc)
        store = store_for(settings)
        try:
            info = await store.client.info("memory")
            used = int(info["used_memory"])
            await delete_prefix(store.client, store.keys.base)
        finally:
            await store.close()
    return {
        "users": users,
        "template_users": len(templates.writes),
        "load_seconds": load_seconds,
        "used_memory": used,
        "target_p95_ms": TARGET_P95_MS,
        **measured,
        "method": (
            f"{len(templates.writes)} synthetic users x 90 days through the offline driver, cloned to {users:,} ids "
            "with Store.write; `portrait api` in its own process over HTTP on loopback; each endpoint called "
            f"{requests} times in a row (after {WARMUP} warm-up calls) on one keep-alive connection, random users"
        ),
    }


def format_api(doc: dict[str, Any]) -> str:
    """The API scenario's table (markdown, as in docs/performance.md)."""
    lines = [
        f"read API with {doc['users']:,} users (first insights pass {doc['pass'].get('pass_seconds', 0):.1f} s; "
        f"target p95 <= {doc['target_p95_ms']:.0f} ms where marked *)",
        "| endpoint | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in doc["endpoints"].items():
        mark = " *" if r["targeted"] else ""
        lines.append(
            f"| {name}{mark} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} |"
        )
    e = doc["export"]
    lines.append(
        f"export of {e['rows']:,} rows: first byte {e['first_byte_ms']:.0f} ms, {e['seconds']:.1f} s "
        f"({e['rows_per_s']:,.0f} rows/s)"
    )
    return "\n".join(lines)
