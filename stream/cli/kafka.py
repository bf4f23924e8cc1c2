"""Kafka-facing commands: ``replay`` an export, ``dlq tail|replay``, ``triggers tail``."""

import ast
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress

from stream.cli.common import (
    ExportFile,
    FormatOption,
    JsonOption,
    MapOption,
    TypeOption,
    TzOption,
    UserError,
    echo,
    iso,
    kafka_errors,
    mapping_of,
    open_store,
    print_json,
    print_json_line,
    run,
    settings_of,
    when,
    wrap,
)

dlq_app = typer.Typer(help="Dead letters: messages the workers could not use, and why.", no_args_is_help=True)
triggers_app = typer.Typer(help="Trigger topics, read as a marketing-automation consumer would.", no_args_is_help=True)

JsonLinesOption = Annotated[bool, typer.Option("--json", help="Print one JSON object per line (JSON lines).")]
FromBeginningOption = Annotated[
    bool,
    typer.Option(
        "--from-beginning/--from-end",
        help="Start at the beginning of each partition (the default), or at its end (only new records).",
    ),
]
OffsetOption = Annotated[
    int | None,
    typer.Option(min=0, help="Start at this offset of each partition (or of --partition only).", show_default=False),
]
PartitionOption = Annotated[
    int | None, typer.Option(min=0, help="Read only this partition (default: all).", show_default=False)
]
IdleOption = Annotated[
    float, typer.Option(min=0.1, help="Stop after this many seconds without a new message (the end of the topic).")
]


WaitOption = Annotated[
    bool | None,
    typer.Option(
        "--wait/--no-wait",
        help=(
            "After producing, wait until the workers have handled every message sent, then report "
            "how many events were applied, skipped as duplicates or redeliveries and dead-lettered "
            "by reason (default: wait when stdout is a terminal). The counts are deltas of the "
            "workers' shared stats, so concurrent traffic makes them approximate."
        ),
        show_default=False,
    ),
]
StallOption = Annotated[
    float,
    typer.Option(
        min=1.0, help="With --wait: give up after this many seconds without progress (there is no total timeout)."
    ),
]


def replay(
    ctx: typer.Context,
    file: ExportFile,
    fmt: FormatOption = "auto",
    map_: MapOption = None,
    type_: TypeOption = None,
    tz: TzOption = "UTC",
    rate: Annotated[
        float | None, typer.Option(min=0.001, help="Events per second (default: as fast as possible).")
    ] = None,
    wait: WaitOption = None,
    stall_timeout: StallOption = 120.0,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    json: JsonOption = False,
    sort: Annotated[
        bool,
        typer.Option(
            "--sort/--no-sort",
            help=(
                "Send the rows in event-time order, sorting the file in memory when it is not "
                "(in event time a row 90 days behind its partition's latest is dead-lettered as too_old)."
            ),
        ),
    ] = True,
) -> None:
    """Stream a JSONL or CSV export into the input topics (key = user id), as the collectors would.

    Every non-blank line (JSONL) or row (CSV) is sent: nothing is refused while reading, a bad row
    reaches the workers and is dead-lettered there, which --wait reports.
    """
    from stream.kafka import replay as replaying

    settings = settings_of(ctx)
    waiting = sys.stdout.isatty() if wait is None else wait
    source: Iterable[replaying.Message]
    source = replaying.read_events(file, fmt=fmt, mapping=mapping_of(map_), default_type=type_, tz=tz)
    resorted = False
    if sort:
        source, resorted = replaying.in_time_order(source)
        if resorted and not json:
            sys.stderr.write("the file is not in event-time order: sending it sorted by event time\n")

    async def send() -> replaying.ReplayReport:
        return await replaying.replay(settings, source, progress=not quiet, rate=rate)

    async def send_and_wait() -> tuple[replaying.ReplayReport, replaying.Outcome]:
        async with open_store(settings) as store:
            before = await store.stats()
            report = await send()
            with Progress(console=Console(stderr=True), disable=quiet, transient=True) as bar:
                task = bar.add_task("handled by the workers", total=report.total)
                outcome = await replaying.wait_handled(
                    store.stats,
                    before,
                    report.total,
                    stall_s=stall_timeout,
                    on_progress=lambda n: bar.update(task, completed=n),
                )
            return report, outcome

    with kafka_errors(settings):
        try:
            report, outcome = run(send_and_wait()) if waiting else (run(send()), None)
        except replaying.Stalled as exc:
            raise UserError(str(exc)) from exc
    if json:
        print_json(_replay_doc(str(file), report, outcome, resorted))
        return
    echo(wrap(str(report), 2))
    if outcome is not None:
        echo(_outcome_text(report, outcome))


def _replay_doc(file: str, report: Any, outcome: Any, resorted: bool = False) -> dict[str, Any]:
    """``replay --json``: one document; the workers' part is null without --wait. ``sorted``: the
    file was not in event-time order and was sent sorted."""
    doc: dict[str, Any] = {
        "file": file,
        "sorted": resorted,
        "read": report.read,
        "sent": report.total,
        "without_type": report.undetermined,
        "per_topic": dict(sorted(report.per_topic.items())),
        "seconds": round(report.seconds, 3),
        "waited": outcome is not None,
        "handled": None,
        "applied": None,
        "duplicates": None,
        "redelivered": None,
        "dead_lettered": None,
        "dead_lettered_total": None,
        "firings": None,
    }
    if outcome is not None:
        doc.update(
            handled=outcome.handled,
            applied=outcome.applied,
            duplicates=outcome.duplicates,
            redelivered=outcome.redelivered,
            dead_lettered=dict(outcome.dead_lettered),
            dead_lettered_total=outcome.dead_lettered_total,
            firings=dict(outcome.firings),
        )
    return doc


def _outcome_text(report: Any, outcome: Any) -> str:
    reasons = ", ".join(f"{reason} {n}" for reason, n in outcome.dead_lettered.items())
    rows = [
        ("read", f"{report.read} rows"),
        ("sent", f"{report.total} messages"),
        ("handled", f"{outcome.handled} messages by the workers"),
        ("applied", f"{outcome.applied} events"),
        ("skipped", f"{outcome.duplicates} duplicates, {outcome.redelivered} redeliveries"),
        ("dead-lettered", f"{outcome.dead_lettered_total}" + (f" ({reasons})" if reasons else "")),
        ("rule firings", _firings_text(outcome.firings)),
    ]
    return "\n".join(f"{name:<14}{wrap(value, 14)}" for name, value in rows)


def _firings_text(firings: dict[str, int]) -> str:
    """``3 sent, 120 withheld as backfill (older than the workers' delivery horizon), ...``."""
    if not firings:
        return "none"
    parts = [f"{firings['send']} sent"] if "send" in firings else []
    for outcome, n in firings.items():
        if outcome == "backfill":
            parts.append(f"{n} withheld as backfill (history: older than the delivery horizon)")
        elif outcome == "dry_run":
            parts.append(f"{n} withheld (PORTRAIT_DELIVERY=dry-run)")
        elif outcome != "send":
            parts.append(f"{n} suppressed ({outcome})")
    return ", ".join(parts)


def _start(from_beginning: bool, offset: int | None, partition: int | None) -> Any:
    """The tail options as a ``Start``: ``--offset`` wins over the default ``--from-beginning``,
    and cannot be combined with ``--from-end``."""
    from stream.kafka.positions import Start

    if offset is not None and not from_beginning:
        raise typer.BadParameter("--offset and --from-end exclude each other", param_hint="'--offset'")
    return Start(offset=offset, partition=partition, from_end=not from_beginning)


@contextmanager
def _partitions() -> Iterator[None]:
    """A ``--partition`` the topic does not have is a user error."""
    from stream.kafka.positions import UnknownPartition

    try:
        yield
    except UnknownPartition as exc:
        raise UserError(str(exc)) from exc


def _letter_lines(letter: Any) -> str:
    source = f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}"
    return f"{when(letter.dead_lettered_at)}  {letter.reason:<18} {source}\n    " + wrap(
        " ".join(letter.error.split()), 4
    )


@dlq_app.command("tail")
def dlq_tail(
    ctx: typer.Context,
    reason: Annotated[str | None, typer.Option(help="Only dead letters with this reason, e.g. invalid_json.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep waiting for new dead letters (Ctrl-C stops).")
    ] = False,
    from_beginning: FromBeginningOption = True,
    offset: OffsetOption = None,
    partition: PartitionOption = None,
    idle: IdleOption = 2.0,
    json: JsonLinesOption = False,
) -> None:
    """Print the dead letters (default: from the start of the topic), oldest first, with their full
    errors; with --json one line per letter, with its "partition" and "offset" on the topic."""
    from stream.kafka.dlq import records

    settings = settings_of(ctx)
    where = _start(from_beginning, offset, partition)
    shown = 0

    async def go() -> None:
        nonlocal shown
        async for batch in records(settings, idle_s=idle, follow=follow, start=where):
            for record in batch:
                letter = record.letter
                if reason is not None and letter.reason != reason:
                    continue
                shown += 1
                if json:
                    at = iso(letter.dead_lettered_at)
                    position = {"partition": record.partition, "offset": record.offset}
                    print_json_line({**letter.model_dump(mode="json"), **position, "at": at})
                else:
                    echo(_letter_lines(letter))

    with kafka_errors(settings), _partitions():
        run(go())
    if not json:
        if shown:
            echo(f"{shown} dead letter{'' if shown == 1 else 's'}")
        else:
            echo("no dead letters" + (f" with reason {reason}" if reason else ""))


@dlq_app.command("replay")
def dlq_replay(
    ctx: typer.Context,
    reason: Annotated[str | None, typer.Option(help="Only re-submit dead letters with this reason.")] = None,
    idle: IdleOption = 2.0,
) -> None:
    """Re-submit dead letters' original bytes to their source topics (after fixing the cause)."""
    from stream.kafka.dlq import resubmit

    settings = settings_of(ctx)
    with kafka_errors(settings):
        count = run(resubmit(settings, reason=reason, idle_s=idle))
    echo(f"re-submitted {count} dead letter{'' if count == 1 else 's'} to their source topics")


_OPERATORS = {
    "eq": "=",
    "ne": "!=",
    "gt": ">",
    "ge": ">=",
    "lt": "<",
    "le": "<=",
    "in": "in",
    "crosses_above": "crosses above",
    "crosses_below": "crosses below",
    "enters": "enters",
    "leaves": "leaves",
}
_TEST = re.compile(r"^(?P<tag>[A-Za-z_][A-Za-z0-9_]*) (?P<op>[a-z_]+) (?P<operand>.+)$")


def readable_test(text: str) -> str:
    """A tag test as the rules engine describes it (``recency_days ge '14'``) in readable form
    (``recency_days >= 14``, ``value_tier in [high, vip]``); anything else is returned unchanged."""
    match = _TEST.match(text)
    if not match or match["op"] not in _OPERATORS:
        return text
    try:
        operand = ast.literal_eval(match["operand"])
    except (ValueError, SyntaxError):
        return text

    def scalar(value: Any) -> str:
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    shown = f"[{', '.join(map(scalar, operand))}]" if isinstance(operand, list | tuple) else scalar(operand)
    return f"{match['tag']} {_OPERATORS[match['op']]} {shown}"


def trigger_line(topic: str, trigger: dict[str, Any], duplicate: bool) -> str:
    explanation = trigger.get("explanation") or {}
    fired = explanation.get("fired_by") or [explanation.get("condition", "")]
    why = ", ".join(readable_test(str(t)) for t in fired)
    head = (
        f"{when(trigger.get('event_time'))}  {trigger.get('user_id', '?'):<12} {trigger.get('rule_id')}"
        f" v{trigger.get('rule_version')} -> {topic.rsplit('.', 1)[-1]}"
        f" {str(trigger.get('trigger_id', ''))[:8]}{' (duplicate)' if duplicate else ''}"
    )
    return head + "\n    " + wrap(f"because {why}", 4)


def _sort_key(record: Any) -> tuple[float, str, str]:
    t = record.trigger
    return (float(t.get("event_time") or 0.0), str(t.get("user_id")), str(t.get("trigger_id")))


@triggers_app.command("tail")
def triggers_tail(
    ctx: typer.Context,
    topic: Annotated[
        str | None, typer.Option(help="One trigger topic suffix, e.g. triggers.coupon (default: all).")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep waiting for new triggers (Ctrl-C stops).")
    ] = False,
    from_beginning: FromBeginningOption = True,
    offset: OffsetOption = None,
    partition: PartitionOption = None,
    idle: IdleOption = 2.0,
    json: JsonLinesOption = False,
) -> None:
    """Print the triggers on the trigger topics (default: from their start) in event-time order,
    with the tag tests that fired them; with --json one line per record, with its "topic",
    "partition" and "offset"."""
    from stream.kafka.triggers_tail import read_triggers

    settings = settings_of(ctx)
    where = _start(from_beginning, offset, partition)
    distinct: set[str] = set()

    async def go() -> None:
        async for batch in read_triggers(settings, topic=topic, follow=follow, idle_s=idle, start=where):
            for record in sorted(batch, key=_sort_key):
                distinct.add(str(record.trigger.get("trigger_id")))
                if json:
                    at = iso(record.trigger.get("event_time"))
                    position = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
                    print_json_line({**record.trigger, **position, "duplicate": record.duplicate, "at": at})
                else:
                    echo(trigger_line(record.topic, record.trigger, record.duplicate))

    with kafka_errors(settings), _partitions():
        run(go())
    if not json:
        echo(f"{len(distinct)} distinct trigger{'' if len(distinct) == 1 else 's'}" if distinct else "no triggers yet")


def register(app: typer.Typer) -> None:
    app.command()(replay)
    app.add_typer(dlq_app, name="dlq")
    app.add_typer(triggers_app, name="triggers")
