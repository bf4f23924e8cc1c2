"""``portrait profile``, ``portrait tags`` and ``portrait explain``: what is known about a user, and why."""

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from stream.cli.common import (
    JsonOption,
    UserError,
    console,
    echo,
    iso,
    print_json,
    quantity,
    run,
    settings_of,
    table,
    when,
    with_store,
    wrap,
)
from stream.tagging.definitions import TagCatalogue, load_catalogue
from stream.tagging.profile import MODEL_FIELDS, catalogue_rows, type_profile, typed_value

LEVELS = {"L1": "L1 attributes and lifecycle", "L2": "L2 behaviour", "L3": "L3 value and intent"}
NAME_WIDTH = 22


def human_value(kind: str, raw: str, unit: str | None = None) -> str:
    """A stored value as a person reads it: times in UTC, units that agree with the number, ratios as %."""
    value = typed_value(kind, raw)
    if kind == "time":
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            return raw
        return (moment if moment.tzinfo is None else moment.astimezone(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    if kind == "bool" and isinstance(value, bool):
        return "yes" if value else "no"
    if kind == "ratio" and isinstance(value, float):
        return f"{raw} ({value:.1%})"
    if kind == "money" and isinstance(value, float):
        return f"{value:,.2f} {unit}" if unit else f"{value:,.2f}"
    if unit:
        return quantity(raw, unit)
    return raw


def format_profile(user_id: str, profile: Mapping[str, str], catalogue: TagCatalogue) -> str:
    """The human view of a profile hash: tags by level, the model tags, then the meta fields."""
    lines = [f"profile {user_id}"]
    indent = 4 + NAME_WIDTH + 1

    def row(name: str, kind: str, unit: str | None) -> str:
        return f"    {name:<{NAME_WIDTH}} " + wrap(human_value(kind, profile[name], unit), indent)

    for level, title in LEVELS.items():
        rows = [row(t.name, t.type, t.unit) for t in catalogue.tags if t.level == level and t.name in profile]
        if rows:
            lines.append(f"  {title}")
            lines.extend(rows)
    models = [row(name, spec.type, spec.unit) for name, spec in MODEL_FIELDS.items() if name in profile]
    if models:
        lines.append("  models")
        lines.extend(models)
    known = catalogue.names | set(MODEL_FIELDS)
    other = sorted(k for k in profile if k not in known and not k.startswith("_"))
    if other:
        lines.append("  other fields")
        lines.extend(f"    {name:<{NAME_WIDTH}} " + wrap(profile[name], indent) for name in other)
    meta = []
    if "_evaluated_at" in profile:
        meta.append(f"tags as of {human_value('time', profile['_evaluated_at'])}")
    if "_updated_at" in profile:
        meta.append(f"written {human_value('time', profile['_updated_at'])}")
    if "_rfm_version" in profile:
        meta.append(f"RFM thresholds v{profile['_rfm_version']}")
    if meta:
        lines.append("  " + wrap(", ".join(meta), 2))
    return "\n".join(lines)


def profile(
    ctx: typer.Context,
    user_id: Annotated[str, typer.Argument(help="The user id (as in the events' user_id).")],
    json: JsonOption = False,
) -> None:
    """Show a user's profile from Redis: every tag, the model scores and when it was computed."""
    settings = settings_of(ctx)
    catalogue = load_catalogue(settings.tags_file)
    stored: dict[str, str] = run(with_store(settings, lambda store: store.profile(user_id)))
    if not stored:
        raise UserError(f"no profile for {user_id!r} (unknown user, expired or erased)")
    if json:
        print_json(type_profile(stored, catalogue))
    else:
        echo(format_profile(user_id, stored, catalogue))


def tags(ctx: typer.Context, json: JsonOption = False) -> None:
    """Print the tag catalogue in force (PORTRAIT_TAGS_FILE or the shipped one) and the model tags."""
    catalogue = load_catalogue(settings_of(ctx).tags_file)
    rows = catalogue_rows(catalogue)
    if json:
        print_json({"version": catalogue.version, "tags": rows})
        return
    grid = table()
    for name, opts in (
        ("tag", {"no_wrap": True}),
        ("level", {"no_wrap": True}),
        ("category", {"no_wrap": True}),
        ("type", {"no_wrap": True}),
        ("unit", {"no_wrap": True}),
        ("aud", {"no_wrap": True}),
        ("description", {"overflow": "fold"}),
    ):
        grid.add_column(name, **opts)
    for r in rows:
        grid.add_row(
            r["name"],
            r["level"],
            r["category"],
            r["type"],
            r["unit"] or "",
            "yes" if r["audience"] else "",
            r["description"],
        )
    console().print(grid)


def explain(
    ctx: typer.Context,
    user_id: Annotated[str, typer.Argument(help="The user id.")],
    json: JsonOption = False,
) -> None:
    """A user's recent rule firings and suppressions with reasons, and the rule inputs last seen."""
    settings = settings_of(ctx)

    async def load(store: Any) -> Any:
        loaded, _, _ = await store.load([user_id])
        return loaded[user_id].state

    state = run(with_store(settings, load))
    if state is None:
        raise UserError(f"no state for {user_id!r} (unknown user, expired or erased)")
    memory = state.delivery
    firings = [
        {
            "at": iso(r.at),
            "rule_id": r.rule_id,
            "rule_version": r.rule_version,
            "channel": r.channel,
            "outcome": r.outcome,
            "reason": r.reason,
            "trigger_id": r.trigger_id,
        }
        for r in memory.recent
    ]
    inputs = dict(sorted(state.rule_baseline.values.items())) if state.rule_baseline is not None else {}
    if json:
        print_json({"user_id": user_id, "firings": firings, "rule_inputs": inputs})
        return
    echo(f"rule firings for {user_id} (newest last; suppressed firings are recorded, not sent)")
    for record in memory.recent:
        outcome = record.outcome if record.reason is None else f"{record.outcome} ({record.reason})"
        echo(
            f"  {when(record.at)}  {record.rule_id} v{record.rule_version}  {record.channel:<6} "
            f"{outcome:<24} {record.trigger_id[:12]}"
        )
    if not memory.recent:
        echo("  none")
    shown = ", ".join(f"{k}={v}" for k, v in inputs.items()) or "none"
    echo(wrap(f"rule inputs at last evaluation: {shown}", 2))


def register(app: typer.Typer) -> None:
    app.command()(profile)
    app.command()(tags)
    app.command()(explain)
