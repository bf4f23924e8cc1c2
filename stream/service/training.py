"""Where the model trainer runs: inside a worker (``PORTRAIT_TRAINER=embedded``) or in its own
process, ``portrait trainer`` (``external``), so ingest never waits on learning or checkpoints.

Both run the same ``Trainer`` (stream/service/trainer.py) through ``train_once``: one tick, an
error counted and logged rather than raised, and ``portrait_trainer_lease_held`` set. The lease
makes any number of trainers harmless: one learns, the others stand by and take over when its
lease lapses (``Trainer.lease_ms`` after its last tick).

The trainer process (``TrainerProcess``) ticks every ``timer_interval_s`` and serves on
``web_host:trainer_web_port``:

* ``/livez``: the process is up and its event loop answers (200 whenever it answers at all);
* ``/readyz``: 200 when the last tick succeeded recently (holding the lease or standing by),
  else 503; the answer says which (``TrainerReadiness``);
* ``/metrics``: Prometheus (``portrait_trainer_lease_held``, ``portrait_model_items_learned``,
  the ``portrait_model_*`` quality gauges and ``portrait_processing_errors{stage}``).

SIGTERM or SIGINT stops the loop; the lease holder then publishes what it learned since its last
checkpoint (bounded by ``SHUTDOWN_PUBLISH_S``), so the next holder resumes from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from stream.metrics import Metrics
from stream.service.trainer import Trainer

log = logging.getLogger(__name__)
SHUTDOWN_PUBLISH_S = 10.0
# readiness: the last successful tick is at most this many tick intervals old (and at least
# READY_MIN_S, so a slow Redis round trip on a short interval is no flap)
READY_TICKS = 5
READY_MIN_S = 10.0


async def train_once(trainer: Trainer, metrics: Metrics) -> bool:
    """One trainer tick; returns whether it succeeded. An error is counted
    (``portrait_processing_errors{stage="trainer"}``) and logged, never raised: learning must not
    stop scoring or ingest, and a failing holder's lease simply lapses."""
    try:
        learned = await trainer.tick()
    except Exception:
        metrics.processing_errors.labels("trainer").inc()
        metrics.trainer_lease_held.set(0)
        log.exception("model trainer failed")
        return False
    metrics.model_items_learned.inc(learned)
    metrics.trainer_lease_held.set(1 if trainer.models is not None else 0)  # tick drops models without the lease
    return True


class TrainerReadiness(BaseModel):
    ready: bool
    lease_held: bool
    last_tick_s_ago: float | None = None  # last successful tick (None: none yet)
    failed_ticks: int  # consecutive failed ticks
    error: str | None = None


class TrainerLiveness(BaseModel):
    alive: bool
    uptime_s: float


class TrainerProcess:
    """The ``portrait trainer`` loop: tick every ``interval_s`` until ``stop`` is called."""

    def __init__(self, trainer: Trainer, metrics: Metrics, interval_s: float) -> None:
        self.trainer, self.metrics, self.interval_s = trainer, metrics, interval_s
        self.started_at = time.monotonic()
        self.last_ok: float | None = None
        self.failed = 0
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    def readiness(self) -> TrainerReadiness:
        age = None if self.last_ok is None else time.monotonic() - self.last_ok
        limit = max(READY_TICKS * self.interval_s, READY_MIN_S)
        ready = age is not None and age <= limit
        error = None
        if self.last_ok is None:
            error = "no successful tick yet" if self.failed else "starting"
        elif not ready:
            error = f"no successful tick for {age:.0f}s ({self.failed} failed: is Redis reachable?)"
        return TrainerReadiness(
            ready=ready,
            lease_held=self.trainer.models is not None,
            last_tick_s_ago=None if age is None else round(age, 3),
            failed_ticks=self.failed,
            error=error,
        )

    def liveness(self) -> TrainerLiveness:
        return TrainerLiveness(alive=True, uptime_s=round(time.monotonic() - self.started_at, 3))

    async def run(self) -> None:
        """Tick until stopped, then publish the holder's unpublished learning."""
        while not self._stopping.is_set():
            if await train_once(self.trainer, self.metrics):
                self.last_ok, self.failed = time.monotonic(), 0
            else:
                self.failed += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)
        await self._final_publish()

    async def _final_publish(self) -> None:
        if self.trainer.models is None or not self.trainer.unpublished:
            return
        try:
            version = await asyncio.wait_for(self.trainer.publish(), SHUTDOWN_PUBLISH_S)
        except Exception as exc:  # the next holder re-learns from the last checkpoint's position
            log.warning("final model checkpoint not published (%r); the next trainer resumes the previous one", exc)
        else:
            log.info("trainer stopping: published model checkpoint v%d", version)

    def web_app(self) -> web.Application:
        async def livez(request: web.Request) -> web.Response:
            return web.json_response(text=self.liveness().model_dump_json())

        async def readyz(request: web.Request) -> web.Response:
            answer = self.readiness()
            return web.json_response(text=answer.model_dump_json(), status=200 if answer.ready else 503)

        async def metrics(request: web.Request) -> web.Response:
            # aiohttp refuses a charset inside content_type; prometheus-client's type carries one
            return web.Response(
                body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        app = web.Application()
        app.router.add_get("/livez", livez)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/healthz", readyz)
        app.router.add_get("/metrics", metrics)
        return app


async def serve_trainer(process: TrainerProcess, host: str, port: int) -> None:
    """Serve ``process``'s web views on ``host:port`` and run it until SIGTERM or SIGINT.

    Raises ``OSError`` when the port cannot be bound (before any tick)."""
    runner = web.AppRunner(process.web_app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, process.stop)
        log.info("trainer serving /livez /readyz /metrics on %s:%d", host, port)
        await process.run()
    finally:
        await runner.cleanup()
