"""Errors shared by every layer (the bottom of the import layers: imports nothing of ``stream``)."""

from __future__ import annotations


class ConfigError(RuntimeError):
    """A configuration problem that must stop the service before it consumes anything."""
