"""``portrait rules check|report|backtest``: validate, observe and try automation rules."""

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import RenderableType

from stream.cli.common import (
    DurationHelp,
    FormatOption,
    JsonOption,
    MapOption,
    TypeOption,
    TzOption,
    check_duration,
    console,
    echo,
    mapping_of,
    print_json,
    redis_errors,
    run,
    settings_of,
    table,
    with_store,
)

rules_app = typer.Typer(
    help="Automation rules: check a file, report live firings, backtest on an export.", no_args_is_help=True
)
RulesFile = Annotated[
    Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Rules YAML, e.g. deploy/rules.yaml.")
]


@rules_app.command("check")
def check(ctx: typer.Context, file: RulesFile, json: JsonOption = False) -> None:
    """Validate a rules file against the tag catalogue (as a worker would at start)."""
    from stream.rules import load_rules
    from stream.tagging.definitions import load_catalogue

    rules = load_rules(file, load_catalogue(settings_of(ctx).tags_file))
    active = [{"id": r.id, "version": r.version, "action": r.action.type, "channel": r.channel} for r in rules.active]
    if json:
        print_json({"file": str(file), "ok": True, "active": active})
        return
    echo(f"{file}: {len(active)} active rule{'' if len(active) == 1 else 's'} OK")
    for rule in active:
        echo(f"  {rule['id']} v{rule['version']} -> {rule['action']} on {rule['channel']}")


def report_rows(stats: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Per rule: sends, suppressions by reason, and treated/control conversion from the counters
    (``stream.rules.counters``; rates over closed exposures, see ``stream.rules.effect``)."""
    from stream.rules.counters import RuleCounter, parsed
    from stream.rules.effect import RuleEffect, effects

    fired: dict[str, dict[str, int]] = {}
    for counter, n in parsed(stats):
        if isinstance(counter, RuleCounter):
            fired.setdefault(counter.rule, {})[counter.outcome] = n
    uplift = effects(stats)
    rows: dict[str, dict[str, Any]] = {}
    for rule in sorted(set(fired) | set(uplift)):
        c, effect = fired.get(rule, {}), uplift.get(rule, RuleEffect())
        groups: dict[str, dict[str, Any]] = {}
        for name, g in (("treated", effect.treated), ("control", effect.control)):
            groups[name] = {
                "exposed": g.exposures,
                "converted": g.conversions,
                "expired": g.expired,
                "open": g.open,
                "rate": g.rate,
            }
        rows[rule] = {
            "sent": c.get("send", 0),
            "suppressed": {k: n for k, n in sorted(c.items()) if k != "send"},
            **groups,
            "uplift": effect.uplift,
        }
    return rows


@rules_app.command("report")
def report(ctx: typer.Context, json: JsonOption = False) -> None:
    """Firings, suppressions by reason and uplift per rule, from the counters the workers keep."""
    stats: dict[str, int] = run(with_store(settings_of(ctx), lambda store: store.stats()))
    rows = report_rows(stats)
    if json:
        print_json({"rules": rows})
        return
    if not rows:
        echo("no rule has fired yet")
        return
    grid = table()
    grid.add_column("rule", no_wrap=True)
    grid.add_column("sent", justify="right")
    grid.add_column("suppressed (reason=n)", overflow="fold")
    grid.add_column("treated conv", justify="right", no_wrap=True)
    grid.add_column("control conv", justify="right", no_wrap=True)
    grid.add_column("uplift", justify="right", no_wrap=True)

    def rate(group: dict[str, Any]) -> str:
        closed = group["converted"] + group["expired"]
        return f"{group['converted']}/{closed}" if group["exposed"] else "n/a"

    for rule, row in rows.items():
        reasons = ", ".join(f"{k}={n}" for k, n in row["suppressed"].items()) or "none"
        uplift = f"{100 * row['uplift']:+.1f}pp" if row["uplift"] is not None else "n/a"
        grid.add_row(rule, f"{row['sent']:,}", reasons, rate(row["treated"]), rate(row["control"]), uplift)
    out = console()
    out.print(grid)
    out.print(
        "conversion = an order in [firing, firing + the rule's conversion window); "
        "rates over closed windows (converted or expired)"
    )


@rules_app.command("backtest")
def backtest(
    ctx: typer.Context,
    file: RulesFile,
    data: Annotated[
        Path,
        typer.Option(exists=True, dir_okay=False, readable=True, help="JSONL or CSV export (optionally gzipped)."),
    ],
    horizon: Annotated[
        str,
        typer.Option(
            callback=check_duration,
            help=f"Keep the time-driven evaluations going this long after the last event ({DurationHelp}).",
        ),
    ] = "0",
    fmt: FormatOption = "auto",
    map_: MapOption = None,
    type_: TypeOption = None,
    tz: TzOption = "UTC",
    tags: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Tag catalogue YAML (default: PORTRAIT_TAGS_FILE or shipped)."),
    ] = None,
    rfm_interval: Annotated[
        str, typer.Option(callback=check_duration, help=f"RFM threshold refresh period in event time ({DurationHelp}).")
    ] = "1d",
    models: Annotated[bool, typer.Option("--models", help="Score the churn/segment model tags (slower).")] = False,
    json: JsonOption = False,
) -> None:
    """Replay an export in event time through the worker's code (on PORTRAIT_REDIS_URL, in a scratch namespace
    deleted afterwards) and report what the rules would have sent (nothing is sent)."""
    from stream.offline.backtest import backtest_file
    from stream.tagging.definitions import parse_duration

    settings = settings_of(ctx)
    with redis_errors(settings):
        result = backtest_file(
            settings,
            file,
            data,
            horizon=parse_duration(horizon),
            fmt=fmt,
            mapping=mapping_of(map_),
            default_type=type_,
            tz=tz,
            tags_file=tags or settings.tags_file,
            rfm_interval=parse_duration(rfm_interval),
            with_models=models,
        )
    if json:
        print_json(result.to_dict())
    else:
        echo(f"backtest of {file} on {data} ({result.seconds:.1f}s, nothing sent)")
        out = console()
        for part in backtest_report(result.to_dict(), result.model_rules):
            out.print(part)


def backtest_report(doc: dict[str, Any], model_rules: list[str]) -> list[RenderableType]:
    """The human view of a backtest's ``to_dict()``: summary lines, rules, topics, effect."""
    period, dead = doc["period"], doc["dead_letters"]
    dead_text = f"{sum(dead.values()):,}" + (f" ({_counts(dead)})" if dead else "")
    summary = [
        f"period: {period['start']} .. {period['end']} ({period['days']} days incl. the horizon)",
        f"messages {doc['messages']:,}; events applied {doc['events']:,}; duplicates {doc['duplicates']:,}; "
        f"dead letters {dead_text}",
        f"users {doc['users']:,} ({doc['expired_users']:,} expired); {doc['batches']:,} batches; "
        f"{doc['reevaluations']:,} time-driven re-evaluations",
        f"RFM refreshes {doc['rfm']['refreshes']} (thresholds v{doc['rfm']['version']}); "
        f"models {'on' if doc['models'] else 'off'}",
    ]
    rules = table("rule", "fired", "users", "sent", "time-driven", "suppressed")
    for rule_id, r in [*doc["rules"].items(), ("total", doc["total"])]:
        counts = (r["fired"], r["users"], r["sent"], r["time_driven"])
        rules.add_row(rule_id, *(f"{n:,}" for n in counts), _counts(r["suppressed"]) or "none")
    for column in rules.columns[1:5]:
        column.justify = "right"
    topics = table("topic", "triggers")
    for topic, n in doc["topics"].items():
        topics.add_row(topic, f"{n:,}")
    topics.columns[1].justify = "right"
    effect = table("rule", "treated", "control", "uplift")
    for rule_id, e in doc["effect"].items():
        effect.add_row(rule_id, _exposure(e["treated"]), _exposure(e["control"]), _percent(e["uplift"], signed=True))
    parts: list[RenderableType] = ["\n".join(summary), rules]
    if model_rules and not doc["models"]:
        parts.append(f"note: {', '.join(model_rules)} read model tags; run with --models to score them")
    parts += [
        topics if doc["topics"] else "no triggers",
        "effect: an order within the conversion window after a firing",
    ]
    parts.append(effect if doc["effect"] else "no exposures")
    return parts


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}={n:,}" for k, n in sorted(counts.items()) if n)


def _percent(value: object, signed: bool = False) -> str:
    if not isinstance(value, int | float):
        return "n/a"
    return f"{value * 100:+.1f} pp" if signed else f"{value * 100:.1f} %"


def _exposure(group: dict[str, Any]) -> str:
    closed = group["exposures"] - group["open"]
    return f"{group['conversions']:,}/{closed:,} converted ({_percent(group['rate'])}), {group['open']:,} open"


def register(app: typer.Typer) -> None:
    app.add_typer(rules_app, name="rules")
