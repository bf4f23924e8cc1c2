"""``portrait models status|segments`` (the live models) and ``portrait evaluate`` (offline, on an export)."""

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from stream.cli.common import (
    DurationHelp,
    ExportFile,
    FormatOption,
    JsonOption,
    MapOption,
    TypeOption,
    TzOption,
    UserError,
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
from stream.kafka.replay import Format
from stream.settings import Settings

models_app = typer.Typer(help="The live models: churn quality and behaviour segments.", no_args_is_help=True)


def _finite(value: Any) -> Any:
    """NaN/inf (no examples yet) as JSON null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _status(settings: Settings) -> tuple[dict[str, Any], int]:
    async def go(store: Any) -> tuple[dict[str, Any], int]:
        status: dict[str, Any] = await store.model_status()
        _, _, version = await store.model_checkpoint()
        return status, int(version)

    status, version = run(with_store(settings, go))
    if not status:
        raise UserError("no model checkpoint published yet (a worker with PORTRAIT_MODELS_ENABLED=true publishes one)")
    return status, version


def _number(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) and math.isfinite(value) else "n/a"


@models_app.command("status")
def status(ctx: typer.Context, json: JsonOption = False) -> None:
    """Churn model quality (progressive ROC AUC vs a recency-only baseline, log loss, drift alarms)."""
    doc, version = _status(settings_of(ctx))
    if json:
        print_json(_finite({"checkpoint_version": version, **doc}))
        return
    c = doc["churn"]
    echo(f"model checkpoint v{version} (churn model {c['version']}), {c['examples']} resolved examples")
    echo(
        f"  churn progressive ROC AUC {_number(c['auc'], '.4f')} "
        f"vs recency-only baseline {_number(c['baseline_auc'], '.4f')}"
    )
    echo(
        f"  log loss {_number(c['log_loss'], '.4f')}  positive rate {_number(c['positive_rate'], '.3f')}  "
        f"drift alarms {c['drifts']}"
    )


@models_app.command("segments")
def segments(ctx: typer.Context, json: JsonOption = False) -> None:
    """The behaviour segments with their share of users and a description."""
    doc, _ = _status(settings_of(ctx))
    rows = sorted(doc.get("segments", []), key=lambda d: -d["share"])
    if json:
        print_json(_finite({"segments": rows}))
        return
    grid = table("segment", "share", "description")
    grid.columns[1].justify = "right"
    grid.columns[2].overflow = "fold"
    for seg in rows:
        grid.add_row(str(seg["segment_id"]), f"{seg['share']:.1%}", str(seg["text"]))
    console().print(grid)


def _report_dict(report: Any) -> dict[str, Any]:
    to_dict = getattr(report, "to_dict", None)
    if callable(to_dict):
        doc: dict[str, Any] = to_dict()
        return doc
    from dataclasses import asdict

    return {**asdict(report), "auc_margin": report.auc_margin}


def _evaluate(
    settings: Settings,
    data: Path,
    fmt: Format,
    mapping: dict[str, str] | None,
    default_type: str | None,
    tz: str,
    horizon: float | None,
) -> Any:
    """``stream.offline.evaluation.evaluate_file``: the worker's code on a scratch Redis namespace."""
    from stream.offline.evaluation import evaluate_file

    return evaluate_file(settings, data, fmt=fmt, mapping=mapping, default_type=default_type, tz=tz, horizon=horizon)


def evaluate(
    ctx: typer.Context,
    file: ExportFile,
    horizon: Annotated[
        str | None,
        typer.Option(callback=check_duration, help=f"Churn horizon ({DurationHelp}; default: models.yaml)."),
    ] = None,
    fmt: FormatOption = "auto",
    map_: MapOption = None,
    type_: TypeOption = None,
    tz: TzOption = "UTC",
    json: JsonOption = False,
) -> None:
    """Replay an export offline with fresh models: churn AUC vs the recency baseline, and the segments."""
    from stream.tagging.definitions import parse_duration

    settings = settings_of(ctx)
    with redis_errors(settings):  # the offline driver runs on a scratch namespace of the Redis
        report = _evaluate(
            settings,
            file,
            fmt,
            mapping_of(map_),
            type_,
            tz,
            parse_duration(horizon) if horizon else None,
        )
    if json:
        print_json(_finite(_report_dict(report)))
    else:
        echo(report.to_text())


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
    app.command()(evaluate)
