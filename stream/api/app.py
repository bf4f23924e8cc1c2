"""The read API's application factory: ``create_app(settings) -> FastAPI`` (run by ``portrait api``).

Read-only: every endpoint is a GET (``POST /v1/profiles:batchGet`` only reads). Errors are RFC 9457
problem details (``stream.api.problems``). When ``PORTRAIT_API_TOKEN`` is set, every ``/v1``
request needs ``Authorization: Bearer <token>``; without a token the API must bind to a loopback
address (``check_exposure``). The OpenAPI document is ``/openapi.json`` (browsable at ``/docs``);
the dashboard's static files (``stream/api/dashboard``) are served at ``/`` when present. A changed
tag catalogue file is loaded again as the workers do (``stream.service.reload.FileWatcher``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles

from stream import __version__
from stream.api import audiences, insights, problems, profiles
from stream.api.context import ApiContext, api_of
from stream.api.refresher import Refresher
from stream.errors import ConfigError
from stream.metrics import Metrics
from stream.models.config import load_models_config
from stream.service.reload import FileWatcher
from stream.settings import Settings
from stream.storage.reads import Reads
from stream.tagging.definitions import TagCatalogue, default_tags_path, load_catalogue

log = logging.getLogger(__name__)

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboard"
CATALOGUE_POLL_S = 2.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to serve other hosts without a bearer token: one line naming the setting."""
    token = settings.api_token.get_secret_value() if settings.api_token is not None else ""
    if not is_loopback(settings.api_host) and not token:
        raise ConfigError(
            f"PORTRAIT_API_HOST={settings.api_host!r} is not a loopback address: set PORTRAIT_API_TOKEN "
            "(a bearer token every request must send) to serve other hosts"
        )


_bearer = HTTPBearer(auto_error=False, description="PORTRAIT_API_TOKEN, when the API has one")


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """The bearer token check of every ``/v1`` endpoint (nothing to check when no token is set)."""
    api = api_of(request)
    expected = api.settings.api_token.get_secret_value() if api.settings.api_token is not None else ""
    if not expected:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        detail = "send Authorization: Bearer <PORTRAIT_API_TOKEN>"
        raise problems.ProblemError(401, "Unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


def create_app(
    settings: Settings,
    *,
    reads: Reads | None = None,
    catalogue: TagCatalogue | None = None,
    background: bool = True,
) -> FastAPI:
    """The API for ``settings``. ``reads``: an open ``Reads`` to use (default: one from the
    settings, closed on shutdown); ``background``: run the refresher's loops (off in tests that
    call ``app.state.api.refresher.refresh()`` themselves)."""
    check_exposure(settings)
    catalogue = catalogue or load_catalogue(settings.tags_file)
    models = load_models_config(settings.models_file) if settings.models_enabled else None
    own_reads = reads is None
    store = reads or Reads.from_settings(settings)
    api = ApiContext(settings, store, Refresher(store, settings, catalogue, models))

    watcher = FileWatcher(
        settings.tags_file or default_tags_path(),
        "tag catalogue",
        "previous catalogue stays active",
        load_catalogue,
        Metrics().catalogue_reloads,  # the API serves no /metrics: a private registry
    )

    async def follow_catalogue() -> None:
        """The catalogue the workers reload (stream/service/reload.py), swapped in here too."""
        while True:
            await asyncio.sleep(CATALOGUE_POLL_S)
            loaded = watcher.poll()
            if loaded is not None:
                api.refresher.catalogue = loaded
                log.info("tag catalogue reloaded: version %d", loaded.version)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await store.adopt_layout()  # the store's shard count (docs/redis-keys.md)
        tasks = [*api.refresher.tasks(), asyncio.create_task(follow_catalogue())] if background else []
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            api.refresher.close()
            if own_reads:
                await store.close()

    app = FastAPI(
        title="Portrait read API",
        version=__version__,
        description="Typed user portraits, audiences and insights for CRMs and the dashboard (docs/api.md).",
        lifespan=lifespan,
        responses={code: {"model": problems.Problem, "description": text} for code, text in problems.COMMON},
    )
    app.state.api = api
    problems.install(app)
    secured = [Depends(require_token)]
    app.include_router(profiles.router, dependencies=secured)
    app.include_router(audiences.router, dependencies=secured)
    app.include_router(insights.router, dependencies=secured)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, bool]:
        return {"ok": await store.ping()}

    if (DASHBOARD_DIR / "index.html").is_file():
        app.mount("/", StaticFiles(directory=DASHBOARD_DIR, html=True), name="dashboard")
    return app
