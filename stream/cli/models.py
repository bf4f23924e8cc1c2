"""``portrait models status|segments`` (the live models) and ``portrait evaluate`` (offline, on an export)."""

import logging
import math
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
    check_time,
    console,
    echo,
    mapping_of,
    parse_time,
    print_json,
    redis_errors,
    run,
    settings_of,
    table,
    with_store,
)
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


def _status(settings: Settings) -> tuple[dict[str, Any], int, dict[str, Any] | None]:
    async def go(store: Any) -> tuple[dict[str, Any], int, dict[str, Any] | None]:
        status: dict[str, Any] = await store.model_status()
        _, _, version = await store.model_checkpoint()
        evaluation: dict[str, Any] | None = await store.model_evaluation()
        return status, int(version), evaluation

    status, version, evaluation = run(with_store(settings, go))
    if not status and evaluation is None:
        raise UserError("no model checkpoint published yet (a worker with PORTRAIT_MODELS_ENABLED=true publishes one)")
    return status, version, evaluation


def _number(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) and math.isfinite(value) else "n/a"


def _latest_cutoff(evaluation: dict[str, Any]) -> list[str]:
    """The saved evaluation's latest cutoff, one line per scorer."""
    cutoffs = evaluation.get("cutoffs") or []
    if not cutoffs:
        return []
    c = cutoffs[-1]
    lines = [
        f"latest cutoff evaluation ({evaluation.get('source')}, run {evaluation.get('evaluated_at')}): cutoff "
        f"{c['cutoff']}, {c['customers']} customers, {_number(c['positive_rate'], '.1%')} churned within "
        f"{c['horizon_days']:g} days"
    ]
    for name in ("portrait", "recency", "bgnbd"):
        s = c.get(name)
        if s:
            lines.append(
                f"  {name:<9} ROC AUC {_number(s['roc_auc'], '.4f')}  PR AUC {_number(s['pr_auc'], '.4f')}  "
                f"Brier {_number(s.get('brier'), '.4f')}"
            )
    return lines


@models_app.command("status")
def status(ctx: typer.Context, json: JsonOption = False) -> None:
    """Churn model quality: the latest cutoff evaluation (``portrait evaluate``) and the trainer's
    progressive metric (its own snapshots, each scored before it is learned), log loss, drift alarms."""
    doc, version, evaluation = _status(settings_of(ctx))
    if json:
        print_json(_finite({"checkpoint_version": version, **doc, "evaluation": evaluation}))
        return
    if doc:
        c = doc["churn"]
        echo(f"model checkpoint v{version} (churn model {c['version']}), {c['examples']} resolved examples")
        echo(
            f"  progressive ROC AUC {_number(c['auc'], '.4f')} vs recency-only {_number(c['baseline_auc'], '.4f')} "
            "(the trainer's own snapshots, each scored before it learned it: a learning curve, not a cutoff score)"
        )
        echo(
            f"  log loss {_number(c['log_loss'], '.4f')}  positive rate {_number(c['positive_rate'], '.3f')}  "
            f"drift alarms {c['drifts']}"
        )
        if c.get("held"):  # event time: learned in deadline order (docs/models.md, "Learning order")
            echo(f"  {c['held']} resolved examples wait until every user due by their deadline is evaluated")
    else:
        echo("no model checkpoint published yet")
    if evaluation is None:
        echo("no cutoff evaluation yet: run `portrait evaluate EXPORT` (it scores every customer at cutoffs)")
    else:
        for line in _latest_cutoff(evaluation):
            echo(line)


@models_app.command("segments")
def segments(ctx: typer.Context, json: JsonOption = False) -> None:
    """The behaviour segments with their share of users and a description."""
    doc, _, _ = _status(settings_of(ctx))
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


def _check_times(values: list[str] | None) -> list[str] | None:
    for value in values or []:
        check_time(value)
    return values


def evaluate(
    ctx: typer.Context,
    file: ExportFile,
    horizon: Annotated[
        str | None,
        typer.Option(callback=check_duration, help=f"Churn horizon ({DurationHelp}; default: models.yaml)."),
    ] = None,
    cutoff: Annotated[
        list[str] | None,
        typer.Option(
            "--cutoff",
            callback=_check_times,
            help="Cutoff (ISO 8601 or epoch seconds; repeatable). Default: 50% and 75% of the data span.",
        ),
    ] = None,
    fmt: FormatOption = "auto",
    map_: MapOption = None,
    type_: TypeOption = None,
    tz: TzOption = "UTC",
    save: Annotated[bool, typer.Option(help="Keep the result for `portrait models status`.")] = True,
    json: JsonOption = False,
) -> None:
    """Score every customer at cutoffs with the worker's code (replayed in event time) against what
    happened next: ROC/PR AUC, Brier, calibration for churn_risk, recency-only and BG/NBD."""
    from stream.offline.btyd import MissingExtra
    from stream.offline.evaluation import CutoffError, evaluate_file
    from stream.tagging.definitions import parse_duration

    settings = settings_of(ctx)
    # the in-process trainer's per-checkpoint drift warnings are the progressive metric's, reported below
    trainer_log = logging.getLogger("stream.service.trainer")
    level = trainer_log.level
    trainer_log.setLevel(logging.ERROR)
    with redis_errors(settings):  # the offline driver runs on a scratch namespace of the Redis
        try:
            report = evaluate_file(
                settings,
                file,
                fmt=fmt,
                mapping=mapping_of(map_),
                default_type=type_,
                tz=tz,
                horizon=parse_duration(horizon) if horizon else None,
                cutoffs=[parse_time(c) for c in cutoff] if cutoff else None,
            )
        except (CutoffError, MissingExtra) as exc:
            raise UserError(str(exc)) from None
        finally:
            trainer_log.setLevel(level)
        if save:

            async def keep(store: Any) -> None:
                await store.save_model_evaluation(report.to_dict())

            run(with_store(settings, keep))
    if json:
        print_json(_finite(report.to_dict()))
    else:
        echo(report.to_text())


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
    app.command()(evaluate)
