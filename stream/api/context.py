"""What the endpoints share: the settings, the reads, the catalogue and the refresher."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from stream.api.refresher import Refresher
from stream.models.config import ModelsConfig
from stream.settings import Settings
from stream.storage.reads import Reads
from stream.tagging.definitions import TagCatalogue


@dataclass
class ApiContext:
    settings: Settings
    reads: Reads
    catalogue: TagCatalogue
    models: ModelsConfig | None
    refresher: Refresher


def api_of(request: Request) -> ApiContext:
    """The context of the app serving ``request`` (a FastAPI dependency)."""
    api: ApiContext = request.app.state.api
    return api
