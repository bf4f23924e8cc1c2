"""What every command module shares: settings from the context, the store, errors and output.

Output rules: ``--json`` prints one JSON document (JSON lines for tails) with typed values;
human output fits 100 columns; every user error is a ``UserError`` (or ``ConfigError``) that the
root app prints as one line with exit code 2.
"""

import asyncio
import json
import logging
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from stream.settings import Settings, load_settings, mask_url, unknown_variables
from stream.storage.store import Store

WIDTH = 100  # human output fits this many columns
T = TypeVar("T")

# Client libraries that log connection attempts themselves: a CLI user gets our one-line error.
CLIENT_LOGGERS = ("aiokafka", "kafka", "redis")


class UserError(Exception):
    """A mistake or an unreachable service the user can fix: one line on stderr, exit code 2."""


@dataclass
class CliState:
    """The root options, shared by every command through ``typer.Context.obj``."""

    state_file: Path | None = None
    _settings: Settings | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        """The settings, built on first use (so ``--help`` and ``schemas`` work with a bad environment)."""
        if self._settings is None:
            overrides: dict[str, Any] = {"state_file": self.state_file} if self.state_file is not None else {}
            for warning in unknown_variables():
                typer.echo(f"warning: {warning}", err=True)
            self._settings = load_settings(**overrides)
        return self._settings


def settings_of(ctx: typer.Context) -> Settings:
    state = ctx.find_object(CliState)
    if state is None:  # a command invoked without the root callback (tests of a sub-app)
        state = ctx.ensure_object(CliState)
    return state.settings()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@contextmanager
def quiet_clients() -> Iterator[None]:
    """Within the block, the Kafka/Redis clients' own connection logs stay off the terminal."""
    loggers = [logging.getLogger(name) for name in CLIENT_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextmanager
def redis_errors(settings: Settings) -> Iterator[None]:
    """An unreachable Redis (or refused credentials) becomes one ``UserError`` naming the address."""
    from redis.exceptions import AuthenticationError, ConnectionError, TimeoutError

    try:
        yield
    except AuthenticationError as exc:
        raise UserError(f"Redis at {mask_url(settings.resolved_redis_url())} refused the credentials: {exc}") from exc
    except (ConnectionError, TimeoutError) as exc:
        raise UserError(
            f"cannot reach Redis at {mask_url(settings.resolved_redis_url())} ({_reason(exc)}): "
            "is it running? check PORTRAIT_REDIS_URL or run `portrait infra up`"
        ) from exc


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    """``Store.open`` whose unreachable Redis becomes one ``UserError``."""
    with redis_errors(settings):
        async with Store.open(settings) as store:
            yield store


async def with_store(settings: Settings, action: Callable[[Store], Awaitable[T]]) -> T:
    async with open_store(settings) as store:
        return await action(store)


@contextmanager
def kafka_errors(settings: Settings) -> Iterator[None]:
    """An unreachable broker becomes one ``UserError`` naming the address."""
    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
    from kafka import errors as sync

    unreachable = (KafkaConnectionError, KafkaTimeoutError, sync.KafkaConnectionError, sync.KafkaTimeoutError)
    try:
        yield
    except (*unreachable, getattr(sync, "NoBrokersAvailable", sync.KafkaConnectionError)) as exc:
        raise UserError(
            f"cannot reach the Kafka broker at {settings.bootstrap_servers()} ({_reason(exc)}): "
            "is it running? check PORTRAIT_BROKER_URL or run `portrait infra up`"
        ) from exc


def _reason(exc: BaseException) -> str:
    """A client's error as a short phrase (``connection refused``, ``unknown host``...)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    lowered = text.lower()
    for needle, phrase in (
        ("refused", "connection refused"),
        ("connect call failed", "connection refused"),
        ("name or service not known", "unknown host"),
        ("nodename nor servname", "unknown host"),
        ("temporary failure in name resolution", "unknown host"),
        ("timed out", "timed out"),
        ("timeout", "timed out"),
        ("unable to bootstrap", "no broker answered"),
    ):
        if needle in lowered:
            return phrase
    return text.removeprefix("KafkaConnectionError: ").rstrip(".")


# -- output -------------------------------------------------------------------------------------
def console() -> Console:
    """A Rich console no wider than ``WIDTH`` (100 columns when not a terminal), no colour in pipes."""
    probe = Console()
    width = min(probe.width, WIDTH) if probe.is_terminal else WIDTH
    return Console(width=width, highlight=False, soft_wrap=False)


def table(*columns: str) -> Table:
    """A borderless table with a header rule, for ``console().print``."""
    grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for column in columns:
        grid.add_column(column)
    return grid


def print_json(doc: Any) -> None:
    """One JSON document on stdout."""
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n")


def print_json_line(doc: Any) -> None:
    """One JSON line (tails), flushed so a follower sees it at once."""
    sys.stdout.write(json.dumps(doc, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n")
    sys.stdout.flush()


def echo(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def wrap(text: str, indent: int, width: int = WIDTH) -> str:
    """``text`` wrapped to ``width`` with continuation lines indented by ``indent`` spaces."""
    lines = textwrap.wrap(text, width=width - indent, break_long_words=True, break_on_hyphens=False) or [""]
    pad = " " * indent
    return ("\n" + pad).join(lines)


def when(epoch: float | None) -> str:
    """Readable UTC time: ``2026-11-30 12:00:00 UTC`` (``-`` for none)."""
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(epoch: float | None) -> str | None:
    from stream.tagging.profile import to_iso

    return None if epoch is None else to_iso(epoch)


def quantity(value: float | int | str, unit: str) -> str:
    """``1 day``, ``3 days``, ``1 order``, ``12.50 USD``: plural units agree with the number."""
    text = str(value)
    try:
        singular = float(text) == 1 and unit.endswith("s") and len(unit) > 1
    except ValueError:
        singular = False
    return f"{text} {unit[:-1] if singular else unit}"


def check_time(value: str | None) -> str | None:
    """Option callback: ``value`` must be epoch seconds or an ISO 8601 time."""
    if value is not None:
        parse_time(value)
    return value


def parse_time(value: str) -> float:
    """Epoch seconds or an ISO 8601 time (naive = UTC) -> epoch seconds."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is neither epoch seconds nor an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# -- options shared by the commands that read an export (replay, rules backtest, evaluate) -------
def mapping_of(value: str | None) -> dict[str, str] | None:
    """``--map`` as a dict (already validated by its callback)."""
    from stream.kafka.replay import parse_mapping

    return parse_mapping(value) if value else None


def _mapping(value: str | None) -> str | None:
    try:
        mapping_of(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def _zone(value: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise typer.BadParameter(f"unknown time zone {value!r} (expected an IANA name, e.g. Europe/Paris)") from None
    return value


def check_duration(value: str | None) -> str | None:
    """Option callback: ``value`` must be a duration (seconds or e.g. ``6h``, ``14d``)."""
    from stream.tagging.definitions import parse_duration

    if value is None:
        return None
    try:
        parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def _event_type(value: str | None) -> str | None:
    from stream.contracts.events import EVENT_TYPES

    if value is not None and value not in EVENT_TYPES:
        raise typer.BadParameter(f"unknown event type {value!r} (expected one of {', '.join(sorted(EVENT_TYPES))})")
    return value


JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document with typed values.")]
ExportFile = Annotated[
    Path,
    typer.Argument(
        exists=True, dir_okay=False, readable=True, help="JSONL or CSV export (optionally gzipped).", show_default=False
    ),
]
FormatOption = Annotated[Literal["auto", "jsonl", "csv"], typer.Option("--format", help="File format.")]
MapOption = Annotated[
    str | None,
    typer.Option(
        "--map", callback=_mapping, help="CSV column mapping, e.g. user=user_id,date=ts,amount=amount.", metavar="SPEC"
    ),
]
TypeOption = Annotated[
    str | None,
    typer.Option("--type", callback=_event_type, help="Event type of CSV rows without a type column, e.g. order_paid."),
]
TzOption = Annotated[str, typer.Option("--tz", callback=_zone, help="Time zone of naive timestamps (IANA name).")]
DurationHelp = "seconds or e.g. 6h, 14d"
