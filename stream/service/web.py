"""The worker's web views: ``/healthz`` (Redis reachable), ``/metrics`` (Prometheus) and
``/profiles/{user_id}`` (a user's published profile, as the CRM reads it)."""

from __future__ import annotations

from typing import Any

import orjson
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream.metrics import Metrics
from stream.service.processor import Processor
from stream.storage.store import Store


def register_views(app: Any, store: Store, metrics: Metrics, processor: Processor) -> None:
    @app.page("/profiles/{user_id}")
    class ProfileView(View):
        async def get(self, request: Request, user_id: str) -> Response:
            profile = await store.profile(user_id)
            if not profile:
                return self.json({"error": "unknown user", "user_id": user_id}, status=404)
            return self.bytes(orjson.dumps(profile), content_type="application/json")

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            # aiohttp refuses a charset inside content_type; prometheus-client's type carries one
            return self.bytes(generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            ok = processor.healthy
            body = {"ok": ok, "error": processor.last_error}
            return self.json(body, status=200 if ok else 503)
