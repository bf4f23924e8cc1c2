import ssl

import pytest
from pydantic import SecretStr, ValidationError

from stream.app import _broker_credentials
from stream.settings import Settings


def test_secrets_are_redacted_everywhere_they_are_shown() -> None:
    settings = Settings(
        redis_url="redis://worker:hunter2@cache:6379/0",
        redis_password=SecretStr("hunter3"),
        kafka_sasl_password=SecretStr("hunter4"),
    )
    shown = repr(settings) + str(settings.redacted())
    assert "hunter2" not in str(settings.redacted()) and "hunter3" not in shown and "hunter4" not in shown
    assert settings.redacted()["redis_url"] == "redis://worker:**********@cache:6379/0"
    assert settings.redis_client_kwargs()["password"] == "hunter3"


def test_config_hash_changes_with_config_not_with_secrets() -> None:
    base = Settings(batch_size=100)
    assert base.config_hash() != Settings(batch_size=200).config_hash()
    one, two = (Settings(batch_size=100, kafka_sasl_password=SecretStr(p)) for p in ("a", "b"))
    assert one.config_hash() == two.config_hash()


def test_kafka_security_options() -> None:
    plain = Settings()
    assert plain.kafka_client_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert _broker_credentials(plain) is None
    scram = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="portrait",
        kafka_sasl_password=SecretStr("s3cret"),
    )
    kwargs = scram.kafka_client_kwargs()
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512" and kwargs["sasl_plain_password"] == "s3cret"
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    credentials = _broker_credentials(scram)
    assert credentials.username == "portrait" and credentials.password == "s3cret"
    assert str(credentials.mechanism).endswith("SCRAM_SHA_512") or "512" in str(credentials.mechanism)


def test_bad_values_are_rejected() -> None:
    with pytest.raises(ValidationError):
        Settings(kafka_security_protocol="TLS")  # type: ignore[arg-type]
