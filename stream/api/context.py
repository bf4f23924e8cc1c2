"""What the endpoints share: the settings, the reads, the catalogue and the refresher."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from stream.api.refresher import Refresher
from stream.settings import Settings
from stream.storage.reads import Reads
from stream.tagging.definitions import TagCatalogue


@dataclass
class ApiContext:
    settings: Settings
    reads: Reads
    refresher: Refresher

    @property
    def catalogue(self) -> TagCatalogue:
        """The catalogue in force: the refresher's, which a reload replaces (``stream.api.app``)."""
        return self.refresher.catalogue


def api_of(request: Request) -> ApiContext:
    """The context of the app serving ``request`` (a FastAPI dependency)."""
    api: ApiContext = request.app.state.api
    return api
