"""Operating the service: ``worker``, ``stats``, ``clock``, ``rfm``, ``config`` and ``topics``."""

import json as jsonlib
import time
from typing import Annotated, Any

import typer

from stream.cli.common import (
    JsonOption,
    check_time,
    console,
    echo,
    iso,
    kafka_errors,
    parse_time,
    print_json,
    quiet_clients,
    run,
    settings_of,
    table,
    when,
    with_store,
)
from stream.settings import Settings

rfm_app = typer.Typer(help="RFM population thresholds (the r/f/m score cut points).", no_args_is_help=True)
config_app = typer.Typer(help="The effective configuration.", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics of this deployment.", no_args_is_help=True)


async def _reachable(settings: Settings) -> None:
    """Raise a one-line ``UserError`` unless Redis and the broker answer (before Faust starts)."""
    from aiokafka import AIOKafkaProducer

    await with_store(settings, lambda store: store.client.ping())
    # a producer's start is one bootstrap + metadata round trip (a consumer's stop may raise CancelledError)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers(), **settings.kafka_client_kwargs())
    try:
        await producer.start()
    finally:
        await producer.stop()


def worker(ctx: typer.Context) -> None:
    """Run the Faust worker in the foreground until SIGTERM or Ctrl-C.

    Redis and the broker are checked first, so an unreachable one is a one-line error.
    """
    from stream.app import run_worker

    settings = settings_of(ctx)
    with quiet_clients(), kafka_errors(settings):
        run(_reachable(settings))
    run_worker(settings)


def stats(ctx: typer.Context, json: JsonOption = False) -> None:
    """Processing counters kept by the workers (messages, events applied, dead letters by reason...)."""
    counters: dict[str, int] = run(with_store(settings_of(ctx), lambda store: store.stats()))
    if json:
        print_json(counters)
        return
    if not counters:
        echo("no counters yet (no worker has processed anything)")
        return
    grid = table("counter", "value")
    grid.columns[1].justify = "right"
    for name, value in sorted(counters.items()):
        grid.add_row(name, f"{value:,}")
    console().print(grid)


def clock(
    ctx: typer.Context,
    set_: Annotated[
        str | None,
        typer.Option(
            "--set",
            callback=check_time,
            help="Advance the event-time clock to this time: epoch seconds or ISO 8601 (it only moves forward).",
        ),
    ] = None,
    json: JsonOption = False,
) -> None:
    """Show (or advance) the event-time clock: the largest event time processed."""
    target = parse_time(set_) if set_ is not None else None

    async def go(store: Any) -> float | None:
        if target is not None:
            await store.advance_clock(target)
        value: float | None = await store.clock()
        return value

    value = run(with_store(settings_of(ctx), go))
    if json:
        print_json({"clock": iso(value), "epoch": value})
    elif value is None:
        echo("event-time clock: not set (no event processed with PORTRAIT_CLOCK=event yet)")
    else:
        echo(f"event-time clock: {when(value)} ({value:.3f})")


@rfm_app.command("refresh")
def rfm_refresh(
    ctx: typer.Context,
    reevaluate: Annotated[
        bool, typer.Option("--reevaluate", help="Also mark every user due, so all profiles are re-evaluated now.")
    ] = False,
    json: JsonOption = False,
) -> None:
    """Recompute the RFM thresholds from the population now (workers also do it periodically)."""
    settings = settings_of(ctx)

    async def go(store: Any) -> int:
        now = await store.clock() if settings.clock == "event" else None
        version: int = await store.refresh_rfm(now if now is not None else time.time())
        if reevaluate:
            await store.mark_all_due()
        return version

    version = run(with_store(settings, go))
    if json:
        print_json({"rfm_version": version, "reevaluate": reevaluate})
    else:
        echo(f"rfm thresholds version {version}" + (" (every user marked for re-evaluation)" if reevaluate else ""))


@config_app.command("show")
def config_show(ctx: typer.Context, json: JsonOption = False) -> None:
    """Print the effective configuration: resolved broker, Redis and files, secrets masked.

    This is what a process started here with this environment uses; a worker elsewhere may differ.
    """
    doc = settings_of(ctx).effective()
    if json:
        print_json(doc)
        return
    shown, sources = doc["settings"], doc["sources"]
    explicit = {name.removeprefix("PORTRAIT_").lower() for name in doc["explicit"]}
    grid = table()
    grid.add_column("setting", no_wrap=True)
    grid.add_column("value", overflow="fold", ratio=3)
    grid.add_column("from", overflow="fold", ratio=1)
    for name in sorted(shown):
        value = shown[name]
        if value is None:
            text = "-"
        elif isinstance(value, bool | list):
            text = jsonlib.dumps(value)
        else:
            text = str(value)
        source = sources.get(name) or ("environment" if name in explicit else "default")
        grid.add_row(f"PORTRAIT_{name.upper()}", text, source)
    out = console()
    out.print(grid)
    out.print(f"processor version {doc['processor_version']}, config hash {doc['config_hash']}")


@topics_app.command("create")
def topics_create(
    ctx: typer.Context,
    partitions: Annotated[
        int | None, typer.Option(min=1, help="Partitions per topic (default: PORTRAIT_PARTITIONS).")
    ] = None,
    replication: Annotated[int, typer.Option(min=1, help="Replicas per partition.")] = 1,
) -> None:
    """Create every Portrait topic; existing ones are left alone."""
    from stream.contracts.topics import Topics
    from stream.kafka.admin import create_topics

    settings = settings_of(ctx)
    names = Topics(settings.topic_prefix).all
    with kafka_errors(settings):
        create_topics(
            settings.bootstrap_servers(),
            names,
            partitions or settings.partitions,
            replication=replication,
            client_kwargs=settings.kafka_client_kwargs(),
        )
    for name in names:
        echo(name)


def register(app: typer.Typer) -> None:
    app.command()(worker)
    app.command()(stats)
    app.command()(clock)
    app.add_typer(rfm_app, name="rfm")
    app.add_typer(config_app, name="config")
    app.add_typer(topics_app, name="topics")
