"""Faust agents and timers: thin adapters from the stream to ``stream.service`` (each decodes
Faust's events, calls one service function, sends its result)."""
