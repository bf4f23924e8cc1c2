"""Service settings: read once from the environment (prefix ``PORTRAIT_``) and passed down.

Broker and Redis URLs fall back to the state file written by ``portrait infra up`` so that a
developer can run ``portrait infra up`` and then any other command without exporting anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream import __version__

DEFAULT_STATE_FILE = Path(".portrait/infra.json")


class ConfigError(RuntimeError):
    """A configuration problem that must stop the service before it consumes anything."""


class Settings(BaseSettings):
    """Effective configuration. Every field maps to ``PORTRAIT_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="PORTRAIT_", frozen=True, extra="ignore")

    broker_url: str | None = Field(default=None, description="kafka://host:port[;host:port]")
    redis_url: str | None = Field(default=None, description="redis://[user:pass@]host:port/db")
    state_file: Path = DEFAULT_STATE_FILE
    app_id: str = "portrait"
    topic_prefix: str = "portrait"
    key_prefix: str = "portrait"
    partitions: int = Field(default=4, ge=1)
    tags_file: Path | None = Field(default=None, description="tag definitions YAML; default is shipped")
    rules_file: Path | None = Field(
        default=None, description="automation rules YAML; default deploy/rules.yaml when present, else no rules"
    )
    models_enabled: bool = True
    models_file: Path | None = Field(default=None, description="model config YAML; default is shipped")
    model_checkpoint_interval_s: float = Field(default=10.0, gt=0)
    clock: Literal["wall", "event"] = "wall"
    batch_size: int = Field(default=500, ge=1)
    batch_within: float = Field(default=0.2, gt=0)
    max_future_skew_s: float = Field(default=300.0, ge=0)
    timer_interval_s: float = Field(default=1.0, gt=0)
    due_batch: int = Field(default=1000, ge=1)
    due_lease_s: float = Field(default=30.0, gt=0)
    rfm_refresh_interval_s: float = Field(default=10.0, gt=0)
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    broker_session_timeout_s: float = 6.0
    broker_heartbeat_interval_s: float = 1.0
    consumer_fetch_max_wait_ms: int = Field(default=100, ge=0)
    commit_interval_s: float = 1.0
    log_level: str = "info"

    @property
    def processor_version(self) -> str:
        return __version__

    def resolved_rules_file(self) -> Path | None:
        if self.rules_file is not None:
            return self.rules_file
        shipped = Path(__file__).resolve().parent.parent / "deploy" / "rules.yaml"
        return shipped if shipped.exists() else None

    def read_state(self) -> dict[str, str]:
        """Connection details written by ``portrait infra up`` (empty when absent)."""
        if not self.state_file.exists():
            return {}
        data: dict[str, str] = json.loads(self.state_file.read_text())
        return data

    def resolved_broker_url(self) -> str:
        url = self.broker_url or self.read_state().get("broker_url")
        if not url:
            raise ConfigError(
                "no broker: set PORTRAIT_BROKER_URL or run `portrait infra up` "
                f"(state file {self.state_file} not found)"
            )
        return url

    def resolved_redis_url(self) -> str:
        url = self.redis_url or self.read_state().get("redis_url")
        if not url:
            raise ConfigError(
                f"no Redis: set PORTRAIT_REDIS_URL or run `portrait infra up` (state file {self.state_file} not found)"
            )
        return url

    def bootstrap_servers(self) -> str:
        """The broker URL as a plain ``host:port,host:port`` list for Kafka clients."""
        url = self.resolved_broker_url()
        for scheme in ("kafka://", "aiokafka://"):
            if url.startswith(scheme):
                url = url[len(scheme) :]
        return url.replace(";", ",")
