"""Shared fixtures. The integration tier runs against real services started for the session.

* ``infra`` (session): one broker and one fresh Valkey for the whole run, stopped at the end.
  ``PORTRAIT_TEST_BROKER`` = ``auto`` (default: real Apache Kafka from Maven jars, Tansu when
  that cannot run) | ``kafka`` (fail instead of falling back) | ``tansu``. The broker used and its
  start time are printed and repeated in the terminal summary.
* ``names``: unique topic/key prefixes and app id per test, so tests share the services safely.
* ``make_settings(**overrides)``: Settings pointing at the session services with the test's
  names, after creating that test's topics (``partitions`` defaults to 4).
* ``valkey_cluster`` (session): a local Valkey Cluster (3 masters + 3 replicas, the same binary)
  started only when a test asks for it. A test marked ``@pytest.mark.both_stores`` runs twice,
  on the standalone Valkey and on the cluster (``make_settings`` then points there): the same
  test, unchanged.

Everything is lazy: a run that only collects ``tests/unit`` never starts a process. Tests that use
``infra`` (directly or through ``make_settings``) are marked ``integration`` automatically.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from stream.contracts.topics import Topics
from stream.settings import Settings

if TYPE_CHECKING:
    from portrait_dev.infra import InfraHandle
    from portrait_dev.valkey_cluster import ValkeyCluster

BROKER_ENV = "PORTRAIT_TEST_BROKER"
_SUMMARY: list[str] = []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_stores") is not None:
        metafunc.parametrize("redis_backend", ["standalone", "cluster"], indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "infra" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    for line in _SUMMARY:
        terminalreporter.write_line(line)


def _announce(config: pytest.Config, line: str) -> None:
    _SUMMARY.append(line)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
        reporter.write_line(f"\n{line}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@pytest.fixture(scope="session")
def infra(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfraHandle]:
    from portrait_dev import infra as infra_mod
    from portrait_dev.kafka_jvm import KafkaUnavailable

    choice = os.environ.get(BROKER_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "kafka", "tansu"):
        raise pytest.UsageError(f"{BROKER_ENV} must be auto, kafka or tansu (got {choice!r})")
    workdir = tmp_path_factory.mktemp("infra")  # logs stay in pytest's basetemp for post-mortems
    note = ""
    with contextlib.ExitStack() as stack:
        handle: InfraHandle | None = None
        if choice in ("auto", "kafka"):
            try:
                handle = stack.enter_context(infra_mod.embedded(workdir / "kafka", broker="kafka"))
            except KafkaUnavailable as exc:
                if choice == "kafka":
                    pytest.fail(f"{BROKER_ENV}=kafka but Apache Kafka cannot run: {exc}", pytrace=False)
                note = f" (fallback: Apache Kafka unavailable: {_first_line(exc)})"
        if handle is None:
            handle = stack.enter_context(infra_mod.embedded(workdir / "tansu", broker="tansu"))
        setup = f", jar setup {handle.broker_setup_seconds:.1f}s" if handle.broker_setup_seconds else ""
        _announce(
            request.config,
            f"broker: {handle.describe()}{setup}{note}; valkey: {handle.redis_url} "
            f"started in {handle.redis_start_seconds:.2f}s; logs: {handle.workdir}",
        )
        yield handle


@pytest.fixture(scope="session")
def valkey_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    from portrait_dev.infra import valkey_binary
    from portrait_dev.valkey_cluster import running_cluster

    with running_cluster(tmp_path_factory.mktemp("valkey-cluster"), valkey_binary()) as cluster:
        _announce(
            request.config, f"valkey cluster: {cluster.url} (3 masters + 3 replicas) in {cluster.start_seconds:.1f}s"
        )
        yield cluster


@pytest.fixture
def redis_backend(request: pytest.FixtureRequest) -> str:
    """Which Redis ``make_settings`` points at: ``standalone`` unless the test is ``both_stores``."""
    return str(getattr(request, "param", "standalone"))


@dataclass(frozen=True)
class Names:
    """Per-test unique names so tests can share one broker and one Valkey."""

    token: str

    @classmethod
    def unique(cls) -> Names:
        return cls(f"t{uuid.uuid4().hex[:12]}")

    @property
    def topic_prefix(self) -> str:
        return self.token

    @property
    def key_prefix(self) -> str:
        return self.token

    @property
    def app_id(self) -> str:
        return f"portrait-{self.token}"

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)


@pytest.fixture
def names() -> Names:
    return Names.unique()


def session_settings(infra: InfraHandle, names: Names, state_dir: Path, **overrides: Any) -> Settings:
    """Settings pointing at the session services with ``names``, after creating their topics
    (``partitions`` defaults to 4). For module-scoped fixtures; tests use ``make_settings``."""
    from portrait_dev.infra import free_port

    values: dict[str, Any] = {
        "broker_url": infra.broker_url,
        "redis_url": infra.redis_url,
        "topic_prefix": names.topic_prefix,
        "key_prefix": names.key_prefix,
        "app_id": names.app_id,
        "state_file": state_dir / "infra.json",
        "partitions": 4,
        "web_port": free_port(),
    }
    values.update(overrides)
    settings = Settings(**values)
    infra.create_topics(Topics(settings.topic_prefix).all, settings.partitions)
    return settings


@pytest.fixture
def make_settings(
    infra: InfraHandle, names: Names, tmp_path: Path, redis_backend: str, request: pytest.FixtureRequest
) -> Callable[..., Settings]:
    redis_url = infra.redis_url
    if redis_backend == "cluster":
        redis_url = request.getfixturevalue("valkey_cluster").url

    def make(**overrides: Any) -> Settings:
        return session_settings(infra, names, tmp_path, **{"redis_url": redis_url, **overrides})

    return make
