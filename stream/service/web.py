"""The worker's web views.

* ``/livez``: the process is up and its event loop answers (200 whenever it answers at all);
* ``/readyz``: the worker is consuming (200) or not (503), with every check's result as JSON
  (``stream.service.health.Readiness``); ``/healthz`` is the same readiness answer, kept for
  the probes and tools that used it;
* ``/config``: the effective configuration the worker started with, secrets masked
  (``Settings.effective()``, as logged at start and shown by ``portrait config show``);
* ``/metrics``: Prometheus;
* ``/profiles/{user_id}``: a user's published profile, as the CRM reads it. The id is one path
  segment, percent-encoded: every character but the unreserved ones should be escaped (``{`` as
  ``%7B``, ``/`` as ``%2F``, a space as ``%20``, UTF-8 bytes for non-ASCII). An unescaped ``/``
  is taken as part of the id too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream.metrics import Metrics
from stream.service.health import Health
from stream.service.profiles import typed_profile
from stream.storage.store import Store
from stream.tagging.definitions import TagCatalogue

JSON = "application/json"


def register_views(
    app: Any,
    store: Store,
    metrics: Metrics,
    health: Health,
    config: dict[str, Any],
    catalogue: Callable[[], TagCatalogue],
) -> None:
    """``config``: what ``/config`` serves (computed once at start: ``Settings.effective()``);
    ``catalogue``: the catalogue in force (it changes on a hot reload), for typing profiles."""
    config_body = orjson.dumps(config)
    reads = store.reads  # on the layout the store adopted

    # aiohttp's default segment pattern refuses "{" and "}" (and matches the decoded path), so
    # /profiles/%7Bodd%7D would 404: take the rest of the path as the id instead.
    @app.page("/profiles/{user_id:.+}")
    class ProfileView(View):
        async def get(self, request: Request, user_id: str) -> Response:
            # typed like the CLI's --json and the read API: numbers, booleans, ISO 8601 times
            profile = await typed_profile(reads, user_id, catalogue())
            if profile is None:
                return self.json({"error": "unknown user", "user_id": user_id}, status=404)
            return self.bytes(orjson.dumps(profile), content_type=JSON)

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            # aiohttp refuses a charset inside content_type; prometheus-client's type carries one
            return self.bytes(generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/livez")
    class LiveView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(health.liveness().model_dump_json().encode(), content_type=JSON)

    def readiness(view: View) -> Response:
        answer = health.readiness()
        return view.bytes(answer.model_dump_json().encode(), content_type=JSON, status=200 if answer.ready else 503)

    @app.page("/readyz")
    class ReadyView(View):
        async def get(self, request: Request) -> Response:
            return readiness(self)

    @app.page("/healthz")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            return readiness(self)

    @app.page("/config")
    class ConfigView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(config_body, content_type=JSON)
