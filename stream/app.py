"""Wires settings, catalogue, store, processor, agents and web views into a Faust app.

This is the only module that knows about all the parts.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from typing import Any

import faust
import orjson
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream import transport
from stream.agents.ingest import register_ingest
from stream.agents.timers import register_timers
from stream.deadletter import DeadLetter
from stream.keys import Keys
from stream.metrics import Metrics
from stream.processor import Processor
from stream.settings import Settings
from stream.store import Store
from stream.tagging.definitions import TagCatalogue, load_catalogue
from stream.topics import Topics

log = logging.getLogger(__name__)


@dataclass
class Service:
    app: Any
    settings: Settings
    catalogue: TagCatalogue
    store: Store
    processor: Processor
    metrics: Metrics


def create_app(settings: Settings, catalogue: TagCatalogue | None = None) -> Service:
    """Build the worker. Config errors raise ``ConfigError`` before anything is consumed."""
    catalogue = catalogue or load_catalogue(settings.tags_file)
    topics = Topics(settings.topic_prefix)
    app = faust.App(
        settings.app_id,
        broker=transport.faust_broker_url(settings.bootstrap_servers()),
        store="memory://",
        datadir=tempfile.mkdtemp(prefix="portrait-faust-"),
        topic_partitions=settings.partitions,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=settings.broker_heartbeat_interval_s,
        broker_commit_interval=settings.commit_interval_s,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_enabled=True,
    )
    app.portrait_fetch_max_wait_ms = settings.consumer_fetch_max_wait_ms  # type: ignore[attr-defined]
    metrics = Metrics()
    metrics.info.info({"version": settings.processor_version, "clock": settings.clock})
    store = Store.from_url(settings.resolved_redis_url(), Keys(settings.key_prefix))
    input_topic = app.topic(*topics.inputs, value_type=bytes, value_serializer="raw", key_serializer="raw")

    async def send_dead_letters(letters: list[DeadLetter]) -> None:
        for letter in letters:
            await app.producer.send_and_wait(
                topics.dead_letters, letter.key, letter.model_dump_json().encode(), None, None, None
            )

    processor = Processor(settings, catalogue, store, send_dead_letters, metrics)
    register_ingest(app, input_topic, processor, settings)
    register_timers(app, processor, settings)
    service = Service(app, settings, catalogue, store, processor, metrics)
    _register_views(service)

    @app.task  # type: ignore[untyped-decorator]
    async def publish_catalogue() -> None:
        await store.client.set(store.keys.catalogue, catalogue.model_dump_json())

    return service


def _register_views(service: Service) -> None:
    app = service.app

    @app.page("/profiles/{user_id}")
    class ProfileView(View):
        async def get(self, request: Request, user_id: str) -> Response:
            profile = await service.store.profile(user_id)
            if not profile:
                return self.json({"error": "unknown user", "user_id": user_id}, status=404)
            return self.bytes(orjson.dumps(profile), content_type="application/json")

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(service.metrics.registry), content_type=CONTENT_TYPE_LATEST)

    @app.page("/healthz")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            ok = service.processor.healthy
            body = {"ok": ok, "error": service.processor.last_error}
            return self.json(body, status=200 if ok else 503)


def run_worker(settings: Settings) -> None:
    """Run a Faust worker in the foreground until SIGTERM/SIGINT."""
    from faust.worker import Worker

    service = create_app(settings)
    worker = Worker(service.app, loglevel=settings.log_level)
    worker.execute_from_commandline()
