"""Kafka-facing commands: ``replay`` an export, ``dlq tail|replay``, ``triggers tail``."""

import ast
import re
from typing import Annotated, Any

import typer

from stream.cli.common import (
    ExportFile,
    FormatOption,
    MapOption,
    TypeOption,
    TzOption,
    echo,
    iso,
    kafka_errors,
    mapping_of,
    print_json_line,
    run,
    settings_of,
    when,
    wrap,
)

dlq_app = typer.Typer(help="Dead letters: messages the workers could not use, and why.", no_args_is_help=True)
triggers_app = typer.Typer(help="Trigger topics, read as a marketing-automation consumer would.", no_args_is_help=True)

JsonLinesOption = Annotated[bool, typer.Option("--json", help="Print one JSON object per line (JSON lines).")]
IdleOption = Annotated[
    float, typer.Option(min=0.1, help="Stop after this many seconds without a new message (the end of the topic).")
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
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Stream a JSONL or CSV export into the input topics (key = user id), as the collectors would."""
    from stream.kafka import replay as replaying

    settings = settings_of(ctx)
    source = replaying.read_events(file, fmt=fmt, mapping=mapping_of(map_), default_type=type_, tz=tz)
    with kafka_errors(settings):
        report = run(replaying.replay(settings, source, progress=not quiet, rate=rate))
    echo(wrap(str(report), 2))


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
    idle: IdleOption = 2.0,
    json: JsonLinesOption = False,
) -> None:
    """Print every dead letter from the start of the topic, oldest first, with its full error."""
    from stream.kafka.dlq import batches

    settings = settings_of(ctx)
    shown = 0

    async def go() -> None:
        nonlocal shown
        async for batch in batches(settings, idle_s=idle, follow=follow):
            for letter in batch:
                if reason is not None and letter.reason != reason:
                    continue
                shown += 1
                if json:
                    print_json_line({**letter.model_dump(mode="json"), "at": iso(letter.dead_lettered_at)})
                else:
                    echo(_letter_lines(letter))

    with kafka_errors(settings):
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
    idle: IdleOption = 2.0,
    json: JsonLinesOption = False,
) -> None:
    """Print the triggers on the trigger topics in event-time order, with the tag tests that fired them."""
    from stream.kafka.triggers_tail import read_triggers

    settings = settings_of(ctx)
    distinct: set[str] = set()

    async def go() -> None:
        async for batch in read_triggers(settings, topic=topic, follow=follow, idle_s=idle):
            for record in sorted(batch, key=_sort_key):
                distinct.add(str(record.trigger.get("trigger_id")))
                if json:
                    at = iso(record.trigger.get("event_time"))
                    print_json_line({**record.trigger, "topic": record.topic, "duplicate": record.duplicate, "at": at})
                else:
                    echo(trigger_line(record.topic, record.trigger, record.duplicate))

    with kafka_errors(settings):
        run(go())
    if not json:
        echo(f"{len(distinct)} distinct trigger{'' if len(distinct) == 1 else 's'}" if distinct else "no triggers yet")


def register(app: typer.Typer) -> None:
    app.command()(replay)
    app.add_typer(dlq_app, name="dlq")
    app.add_typer(triggers_app, name="triggers")
