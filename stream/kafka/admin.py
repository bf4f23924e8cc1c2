"""Kafka administration with kafka-python: cluster metadata and idempotent topic creation.

Used by ``portrait topics create`` (operators) and by the development infrastructure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class AdminError(RuntimeError):
    """The broker refused an administrative request."""


def kafka_metadata(bootstrap: str, timeout: float = 3.0) -> dict[str, Any]:
    """One cluster-metadata round trip (raises when the broker does not answer)."""
    from kafka import KafkaAdminClient

    ms = int(timeout * 1000)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=ms)
    try:
        cluster: dict[str, Any] = admin.describe_cluster()
        return cluster
    finally:
        admin.close()


def create_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int,
    *,
    configs: Mapping[str, str] | None = None,
    replication: int = 1,
    timeout: float = 30.0,
    client_kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Create ``names`` with ``partitions`` partitions and ``replication`` replicas; existing topics are left alone.

    Waits until every partition has a leader. Tansu stores topic ``configs`` but does not apply them.
    """
    from kafka import KafkaAdminClient

    wanted = list(dict.fromkeys(names))
    if not wanted:
        return
    spec: dict[str, dict[str, Any]] = {
        name: {"num_partitions": partitions, "replication_factor": replication, "configs": dict(configs or {})}
        for name in wanted
    }
    ms = int(timeout * 1000)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=ms, **dict(client_kwargs or {}))
    try:
        result = admin.create_topics(spec, timeout_ms=ms, raise_errors=False)
        failures = [
            f"{t['name']}: {t.get('error_message') or t['error_code']}"
            for t in result.get("topics", [])
            if t.get("error_code") not in (0, 36)  # 36 = TOPIC_ALREADY_EXISTS
        ]
        if failures:
            raise AdminError("could not create topics: " + "; ".join(failures))
        admin.wait_for_topics(wanted, timeout_ms=ms)
    finally:
        admin.close()
