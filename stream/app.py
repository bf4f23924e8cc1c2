"""Wires settings, catalogue, store, processor, agents and web views into a Faust app.

This is the only module that knows about all the parts.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust

from stream.agents.ingest import assigned_partitions, register_ingest
from stream.agents.privacy import register_privacy
from stream.agents.timers import register_timers
from stream.contracts.deadletter import DeadLetter
from stream.contracts.topics import Topics
from stream.kafka import transport
from stream.kafka.batches import Inbox, record_time
from stream.kafka.lag import LagReader
from stream.metrics import Metrics
from stream.models import Models, load_models_config
from stream.rules import RuleSet, load_rules
from stream.service.deadletters import DeadLetters
from stream.service.health import Health, IngestState
from stream.service.log_limits import limit_repeats
from stream.service.privacy import PrivacyService
from stream.service.processor import Processor
from stream.service.reload import FileWatcher, Sweep
from stream.service.trainer import Trainer
from stream.service.training import train_once
from stream.service.web import register_views
from stream.settings import ConfigError, Settings
from stream.storage.store import OutboxEntry, Store
from stream.tagging.definitions import TagCatalogue, default_tags_path, load_catalogue

log = logging.getLogger(__name__)
AUDIENCE_INTERVAL_S = 30.0
RULES_POLL_S = 2.0
INBOX_BATCHES = 4  # records fetched ahead of the ingest agent, in batches of Settings.batch_size


@dataclass
class Service:
    app: Any
    settings: Settings
    catalogue: TagCatalogue
    store: Store
    processor: Processor
    metrics: Metrics


def faust_app(settings: Settings, datadir_prefix: str = "portrait-faust-") -> Any:
    """The Faust app with the service's consumer settings (shared with the benchmark's no-op floor)."""
    app = faust.App(
        settings.app_id,
        broker=transport.faust_broker_url(settings.bootstrap_servers()),
        store="memory://",
        datadir=tempfile.mkdtemp(prefix=datadir_prefix),
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
        broker_credentials=_broker_credentials(settings),
    )
    app.portrait_fetch_max_wait_ms = settings.consumer_fetch_max_wait_ms  # type: ignore[attr-defined]
    return app


def create_app(settings: Settings, catalogue: TagCatalogue | None = None) -> Service:
    """Build the worker. Config errors raise ``ConfigError`` before anything is consumed."""
    catalogue = catalogue or load_catalogue(settings.tags_file)
    topics = Topics(settings.topic_prefix)
    app = faust_app(settings)
    metrics = Metrics()
    metrics.info.info(
        {"version": settings.processor_version, "clock": settings.clock, "config_hash": settings.config_hash()}
    )
    store = Store.from_settings(settings)
    input_topic = app.topic(*topics.inputs, value_type=bytes, value_serializer="raw", key_serializer="raw")

    async def send_dead_letters(letters: list[DeadLetter]) -> None:
        for letter in letters:
            await app.producer.send_and_wait(
                topics.dead_letters, letter.key, letter.model_dump_json().encode(), None, None, None
            )

    async def send_triggers(entries: list[OutboxEntry]) -> None:
        futures = [await app.producer.send(e.topic, e.key.encode(), e.value, None, None, None) for e in entries]
        await asyncio.gather(*futures)

    rules_file = settings.resolved_rules_file()
    rules = load_rules(rules_file, catalogue) if rules_file is not None else None
    if rules is not None:
        log.info("rules: %d active from %s", len(rules.active), rules_file)
    models_config = load_models_config(settings.models_file) if settings.models_enabled else None
    processor = Processor(
        settings,
        catalogue,
        store,
        send_dead_letters,
        metrics,
        rules=rules,
        send_triggers=send_triggers,
        models=Models(models_config) if models_config is not None else None,
    )
    if models_config is not None and settings.trainer == "embedded":  # external: `portrait trainer` learns
        trainer = Trainer(
            store, models_config, metrics, settings.model_checkpoint_interval_s, event_time=settings.clock == "event"
        )

        @app.timer(settings.timer_interval_s)  # type: ignore[untyped-decorator]
        async def train() -> None:
            await train_once(trainer, metrics)

    ingest_state = IngestState()
    inbox = (
        Inbox(topics.inputs, INBOX_BATCHES * settings.batch_size, record_time if settings.clock == "event" else None)
        if settings.consumer == "batch"
        else None
    )
    app.portrait_inbox = inbox  # read by stream.kafka.transport.Consumer
    register_ingest(app, input_topic, processor, settings, ingest_state, inbox)
    privacy = PrivacyService(store, DeadLetters(send_dead_letters, metrics, settings.processor_version), metrics)
    register_privacy(app, privacy, topics)
    register_timers(app, processor, settings)
    lag_reader = LagReader(
        settings.bootstrap_servers(), settings.app_id, topics.inputs, client_kwargs=settings.kafka_client_kwargs()
    )
    health = Health(
        processor.retry,
        ingest_state,
        metrics,
        lag_reader,
        lambda: assigned_partitions(app),
        settings.readiness_stall_s,
        settings.readiness_probe_interval_s,
        settings.readiness_probe_timeout_s,
        ping=store.client.ping,
    )
    effective = settings.effective()
    register_views(app, store, metrics, health, effective, lambda: processor.catalogue)

    async def publish_catalogue(active: TagCatalogue) -> None:
        """Readers (the CLI, the API) type profiles with the catalogue the workers apply."""
        await store.client.set(store.keys.catalogue, active.model_dump_json())

    @app.task  # type: ignore[untyped-decorator]
    async def prepare_store() -> None:
        await publish_catalogue(catalogue)
        await store.ensure_outbox()
        if await store.ensure_epoch():
            log.warning(
                "new store epoch %s: a first start, or a Redis that lost its data before this worker started "
                "(if the consumer group already has committed offsets, see docs/runbook.md 'Redis lost its data')",
                store.epoch,
            )

    @app.task  # type: ignore[untyped-decorator]
    async def probe_health() -> None:
        # runs once logging is set up, before the web views answer: the same document as /config
        log.info("effective configuration: %s", json.dumps(effective, sort_keys=True))
        # broker probe = the lag read (portrait_consumer_lag); it also sets portrait_ready{check}
        while not app.should_stop:
            try:
                await health.probe()
            except Exception:  # readiness is observability: never let it disturb processing
                log.exception("readiness probe failed")
            await app.sleep(settings.readiness_probe_interval_s)

    definitions = Definitions(settings, processor, metrics)
    sweep = Sweep(store, settings.due_batch)

    @app.timer(RULES_POLL_S)  # type: ignore[untyped-decorator]
    async def reload_definitions() -> None:
        if definitions.poll_catalogue():
            await publish_catalogue(processor.catalogue)
            sweep.start()
        definitions.poll_rules()

    @app.timer(settings.timer_interval_s)  # type: ignore[untyped-decorator]
    async def sweep_catalogue() -> None:
        if sweep.running:
            try:
                await sweep.tick()
            except Exception as exc:  # retried on the next tick from the same cursor
                log.warning("catalogue sweep step failed: %r", exc)

    @app.timer(AUDIENCE_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def report_audiences() -> None:
        try:
            for (tag, value), size in (await store.audience_sizes()).items():
                metrics.audience_users.labels(tag, value).set(size)
        except Exception as exc:
            log.warning("audience sizes unavailable: %r", exc)

    return Service(app, settings, catalogue, store, processor, metrics)


class Definitions:
    """Hot reload of the rules and the tag catalogue (``stream.service.reload.FileWatcher``): a
    changed file is validated and swapped into the processor; an invalid one is rejected with its
    one-line error and the previous definitions stay active. A catalogue change must keep the
    active rules valid (they are checked against it) and raise the catalogue ``version``."""

    def __init__(self, settings: Settings, processor: Processor, metrics: Metrics) -> None:
        self.processor = processor
        self.rules_file = settings.resolved_rules_file()
        self.rules = (
            FileWatcher(self.rules_file, "rules", "previous rules stay active", self._load_rules, metrics.rules_reloads)
            if self.rules_file is not None
            else None
        )
        tags_file = settings.tags_file or default_tags_path()
        kept = "previous catalogue stays active"
        self.tags = FileWatcher(tags_file, "tag catalogue", kept, self._load_catalogue, metrics.catalogue_reloads)

    def _load_rules(self, path: Path) -> RuleSet:
        return load_rules(path, self.processor.catalogue)

    def _load_catalogue(self, path: Path) -> TagCatalogue:
        catalogue, active = load_catalogue(path), self.processor.catalogue
        if catalogue != active and catalogue.version <= active.version:
            raise ConfigError(f"{path}: version: {catalogue.version} must be above the active version {active.version}")
        if self.rules_file is not None:
            try:
                load_rules(self.rules_file, catalogue)  # the active rules must still be valid
            except ConfigError as exc:
                raise ConfigError(f"{path}: the active rules do not fit it: {exc}") from exc
        return catalogue

    def poll_rules(self) -> None:
        rules = self.rules.poll() if self.rules is not None else None
        if rules is not None:
            self.processor.rules = rules
            log.info("rules reloaded: %d active from %s", len(rules.active), self.rules_file)

    def poll_catalogue(self) -> bool:
        """True when a changed catalogue was swapped in."""
        catalogue = self.tags.poll()
        if catalogue is None or catalogue == self.processor.catalogue:
            return False
        self.processor.catalogue = catalogue
        log.info(
            "tag catalogue reloaded: version %d, %d tags from %s",
            catalogue.version,
            len(catalogue.tags),
            self.tags.path,
        )
        return True


def _broker_credentials(settings: Settings) -> Any:
    """Faust credentials for SASL/SSL from the same settings the tools use (None for PLAINTEXT)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    ssl_context = settings.kafka_ssl_context() if protocol.endswith("SSL") else None
    if protocol.startswith("SASL"):
        password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
        if settings.kafka_sasl_mechanism == "PLAIN":
            return faust.SASLCredentials(
                username=settings.kafka_sasl_username, password=password, ssl_context=ssl_context
            )
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=password,
            ssl_context=ssl_context,
            mechanism=settings.kafka_sasl_mechanism,
        )
    return faust.SSLCredentials(ssl_context)


def run_worker(settings: Settings) -> None:
    """Run a Faust worker in the foreground until SIGTERM/SIGINT."""
    from faust.worker import Worker

    class _Worker(Worker):
        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            super().on_setup_root_logger(logger, level)
            limit_repeats(logger)  # an outage must not write a log line per retry

    service = create_app(settings)
    worker = _Worker(service.app, loglevel=settings.log_level)
    # The start-up heap (Faust, aiokafka, river, pydantic: ~1M objects) never becomes garbage: keep
    # it out of the collector's full passes, whose stop-the-world scans showed up in the p99 latency.
    gc.freeze()
    worker.execute_from_commandline()
