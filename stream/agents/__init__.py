"""Faust agents and timers: thin adapters from the stream to ``stream.service.processor``."""
