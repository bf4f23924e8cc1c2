"""Every Prometheus metric of the service, declared once. Labels come from bounded sets only."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from stream import __version__

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Metric handles bound to one registry (tests pass a fresh registry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("portrait_events_consumed", "Valid events consumed", ["topic", "type"], registry=r)
        self.applied = Counter(
            "portrait_events_applied", "Events folded into state, by outcome", ["outcome"], registry=r
        )
        self.dead_letters = Counter("portrait_dead_letters", "Messages dead-lettered", ["reason"], registry=r)
        self.batch_size = Histogram(
            "portrait_batch_size",
            "Messages per processed batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000),
            registry=r,
        )
        self.event_to_profile = Histogram(
            "portrait_event_to_profile_seconds",
            "Event time to profile written (wall clock mode)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.consume_to_profile = Histogram(
            "portrait_consume_to_profile_seconds",
            "Batch received to profiles written",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_latency = Histogram(
            "portrait_redis_command_seconds", "Redis round trip", ["op"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.redis_errors = Counter("portrait_redis_errors", "Redis errors (retried)", ["op"], registry=r)
        self.write_conflicts = Counter(
            "portrait_write_conflicts", "Batches retried because a user changed concurrently", registry=r
        )
        self.reevaluations = Counter("portrait_reevaluations", "Time-driven re-evaluations done", registry=r)
        self.lead_wait = Counter(
            "portrait_lead_wait_seconds",
            "Event time: wall seconds batches waited for the time-driven path (PORTRAIT_EVENT_TIME_LEAD_S)",
            ["outcome"],
            registry=r,
        )
        self.due_pending = Gauge("portrait_reevaluations_pending", "Users due for re-evaluation now", registry=r)
        self.freshness = Gauge(
            "portrait_tag_freshness_seconds", "Age of the oldest due re-evaluation (0 when none is late)", registry=r
        )
        self.processing_errors = Counter(
            "portrait_processing_errors", "Unexpected errors while processing a batch", ["stage"], registry=r
        )
        self.consumer_lag = Gauge(
            "portrait_consumer_lag",
            "Messages not yet committed by the consumer group, per input partition (see stream.kafka.lag)",
            ["topic", "partition"],
            registry=r,
        )
        self.triggers_sent = Counter(
            "portrait_triggers_sent", "Triggers decided for sending, by rule", ["rule"], registry=r
        )
        self.triggers_suppressed = Counter(
            "portrait_triggers_suppressed", "Rule firings not sent, by rule and reason", ["rule", "reason"], registry=r
        )
        self.triggers_delivered = Counter(
            "portrait_triggers_delivered", "Triggers produced to their topic from the outbox", ["topic"], registry=r
        )
        self.trigger_latency = Histogram(
            "portrait_trigger_latency_seconds",
            "Trigger event time to trigger on its topic (wall clock mode)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_data_lost = Gauge(
            "portrait_store_data_lost",
            "1 once the store epoch vanished or changed: Redis lost its data (docs/runbook.md)",
            registry=r,
        )
        self.outbox_pending = Gauge("portrait_outbox_pending", "Triggers in the outbox not yet delivered", registry=r)
        self.model_auc = Gauge("portrait_model_auc", "Rolling progressive ROC AUC", ["model"], registry=r)
        self.model_log_loss = Gauge("portrait_model_log_loss", "Rolling progressive log loss", ["model"], registry=r)
        self.model_drift = Counter(
            "portrait_model_drift_detections",
            "Drift detector (ADWIN) alarms on the error stream",
            ["model"],
            registry=r,
        )
        self.model_checkpoint_time = Gauge(
            "portrait_model_checkpoint_timestamp_seconds",
            "When the model checkpoint was last published",
            ["model"],
            registry=r,
        )
        self.trainer_lease_held = Gauge(
            "portrait_trainer_lease_held",
            "1 while this process holds the model trainer's lease (it learns and publishes), else 0",
            registry=r,
        )
        self.model_items_learned = Counter(
            "portrait_model_items_learned", "Model items (churn examples, segment vectors) learned", registry=r
        )
        self.model_items_held = Gauge(
            "portrait_model_items_held",
            "Model items this trainer has read and holds unlearned (event time: churn examples waiting"
            " for the time-driven path to pass their deadline)",
            registry=r,
        )
        self.model_version = Gauge(
            "portrait_model_version", "Model checkpoint version this worker scores with", registry=r
        )
        self.audience_users = Gauge(
            "portrait_audience_users",
            "Users per audience set (tag value), e.g. segment sizes",
            ["tag", "value"],
            registry=r,
        )
        self.rule_effect = Counter(
            "portrait_rule_exposures",
            "Rule firings measured for uplift: exposed / converted (order within the window) / expired, by group",
            ["rule", "group", "outcome"],
            registry=r,
        )
        self.rules_reloads = Counter(
            "portrait_rules_reloads", "Rules file changes applied or rejected", ["result"], registry=r
        )
        self.catalogue_reloads = Counter(
            "portrait_catalogue_reloads", "Tag catalogue file changes applied or rejected", ["result"], registry=r
        )
        self.identity = Counter(
            "portrait_identity_merges",
            "Anonymous profiles merged into known users, or refused by a safeguard (outcome = reason)",
            ["outcome"],
            registry=r,
        )
        self.erasures = Counter("portrait_erasures", "Users erased on request (privacy)", registry=r)
        self.ready = Gauge(
            "portrait_ready",
            "Readiness check passing (1) or failing (0): redis, broker, ingest, progress (see /readyz)",
            ["check"],
            registry=r,
        )
        self.info = Info("portrait_worker", "Worker build and config", registry=r)
        self.info.info({"version": __version__})
