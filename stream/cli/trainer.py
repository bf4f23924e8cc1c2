"""``portrait trainer``: the model trainer in its own process (stream/service/training.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Annotated

import typer

from stream.cli.common import UserError, open_store, settings_of
from stream.settings import Settings

if TYPE_CHECKING:
    from stream.models import ModelsConfig

LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def trainer(
    ctx: typer.Context,
    port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="TCP port of /livez, /readyz and /metrics (default PORTRAIT_TRAINER_WEB_PORT, 6068).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Learn the models and publish their checkpoints until SIGTERM or Ctrl-C.

    One trainer learns at a time (a Redis lease); more stand by and take over when it stops.
    Run it next to workers started with PORTRAIT_TRAINER=external, which then never learn.
    Redis is checked first, so an unreachable one is a one-line error.
    """
    settings = settings_of(ctx)
    if port is not None:
        settings = settings.model_copy(update={"trainer_web_port": port})
    if not settings.models_enabled:
        raise UserError("models are disabled (PORTRAIT_MODELS_ENABLED=false): there is nothing to train")
    from stream.models import load_models_config

    config = load_models_config(settings.models_file)  # a bad file: one line, before anything starts
    _setup_logging(settings)
    asyncio.run(_run(settings, config))


async def _run(settings: Settings, config: ModelsConfig) -> None:
    from stream.metrics import Metrics
    from stream.service.trainer import Trainer
    from stream.service.training import TrainerProcess, serve_trainer

    async with open_store(settings) as store:  # an unreachable Redis: one line
        await store.client.ping()
        metrics = Metrics()
        metrics.info.info(
            {"version": settings.processor_version, "clock": settings.clock, "config_hash": settings.config_hash()}
        )
        process = TrainerProcess(
            Trainer(store, config, metrics, settings.model_checkpoint_interval_s, event_time=settings.clock == "event"),
            metrics,
            settings.timer_interval_s,
        )
        if settings.trainer == "embedded":
            logging.getLogger(__name__).info(
                "PORTRAIT_TRAINER=embedded here: workers with that setting train too (the lease keeps one learning)"
            )
        try:
            await serve_trainer(process, settings.web_host, settings.trainer_web_port)
        except OSError as exc:  # only binding raises it: a tick's errors are counted, not raised
            raise UserError(
                f"cannot serve on {settings.web_host}:{settings.trainer_web_port} ({exc.strerror or exc}): "
                "port in use? set PORTRAIT_TRAINER_WEB_PORT or --port"
            ) from exc


def _setup_logging(settings: Settings) -> None:
    from stream.service.log_limits import limit_repeats

    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    limit_repeats()  # an outage must not write a log line per failed tick


def register(app: typer.Typer) -> None:
    app.command()(trainer)
