"""Service settings: read once from the environment (prefix ``PORTRAIT_``) and passed down.

Broker and Redis URLs fall back to the state file written by ``portrait infra up`` so that a
developer can run ``portrait infra up`` and then any other command without exporting anything.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream import __version__
from stream.errors import ConfigError

__all__ = ["DEFAULT_STATE_FILE", "ConfigError", "Settings"]

DEFAULT_STATE_FILE = Path(".portrait/infra.json")


class Settings(BaseSettings):
    """Effective configuration. Every field maps to ``PORTRAIT_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="PORTRAIT_", frozen=True, extra="ignore")

    broker_url: str | None = Field(default=None, description="kafka://host:port[;host:port]")
    redis_url: str | None = Field(default=None, description="redis://host:port/db (rediss:// for TLS)")
    # Redis ACL user (least privilege: see deploy/valkey/README.md) and TLS
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_tls_ca_file: Path | None = None
    # Kafka security: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; SASL PLAIN or SCRAM-SHA-256/512
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_file: Path | None = None
    kafka_ssl_cert_file: Path | None = None
    kafka_ssl_key_file: Path | None = None
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
    # a batch closes when full or after this long: 20 ms keeps latency low at moderate rates
    batch_within: float = Field(default=0.02, gt=0)
    max_future_skew_s: float = Field(default=300.0, ge=0)
    # identity resolution safeguards (see stream/identity/merge.py)
    identity_blocked_ids: list[str] = Field(
        default=["", "0", "-1", "null", "none", "nil", "undefined", "anonymous", "unknown", "guest"],
        description="identifier values that never identify anyone (compared case-insensitively)",
    )
    identity_max_merges_per_day: int = Field(default=5, ge=0)
    identity_max_merges: int = Field(default=100, ge=0)
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

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """Security options for aiokafka clients (producers, consumers, admin)."""
        kwargs: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            kwargs["ssl_context"] = self.kafka_ssl_context()
        if self.kafka_security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.kafka_sasl_mechanism
            kwargs["sasl_plain_username"] = self.kafka_sasl_username
            kwargs["sasl_plain_password"] = self._secret(self.kafka_sasl_password)
        return kwargs

    def kafka_ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.kafka_ssl_ca_file) if self.kafka_ssl_ca_file else None)
        if self.kafka_ssl_cert_file is not None:
            key = str(self.kafka_ssl_key_file) if self.kafka_ssl_key_file else None
            context.load_cert_chain(str(self.kafka_ssl_cert_file), key)
        return context

    def redis_client_kwargs(self) -> dict[str, Any]:
        """Credentials and TLS options for redis-py, on top of the URL."""
        kwargs: dict[str, Any] = {}
        if self.redis_username is not None:
            kwargs["username"] = self.redis_username
        if self.redis_password is not None:
            kwargs["password"] = self._secret(self.redis_password)
        if self.redis_tls_ca_file is not None:
            kwargs["ssl_ca_certs"] = str(self.redis_tls_ca_file)
        return kwargs

    @staticmethod
    def _secret(value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None

    def redacted(self) -> dict[str, Any]:
        """The effective settings with secrets (and passwords inside URLs) hidden, for display."""
        shown: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = "**********" if value.get_secret_value() else ""
            elif isinstance(value, str) and "://" in value:
                value = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1**********@", value)
            elif isinstance(value, Path):
                value = str(value)
            shown[name] = value
        return shown

    def config_hash(self) -> str:
        """Short hash of the effective configuration (secrets excluded) for the worker info metric."""
        doc = json.dumps(self.redacted(), sort_keys=True, default=str).encode()
        for path in (self.tags_file, self.resolved_rules_file(), self.models_file):
            if path is not None and path.exists():
                doc += path.read_bytes()
        return hashlib.sha256(doc).hexdigest()[:12]

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
