"""Whole-model checkpoints: bytes with a header (magic, format version, metadata, SHA-256).

Layout::

    b"PTMODEL1" | u16 format | u32 meta_len | meta (JSON) | u64 body_len | sha256(meta+body) | body

``meta`` holds the config fingerprint and the river version; ``body`` is a pickle of the
``Models`` object (k-means, stable-id mapping, published centres, churn pipeline, metrics,
drift detector, version counters). ``restore`` raises ``CorruptCheckpoint`` (truncated, bad
magic, checksum mismatch, unpicklable) or ``IncompatibleCheckpoint`` (other format version,
river version or model config) — both ``CheckpointError`` — so the service can log the reason
and start fresh. The checksum detects corruption, not tampering: only load checkpoints from a
store the service itself writes (pickle).
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from importlib.metadata import version as package_version
from typing import Any

import orjson

from stream.models.config import ModelsConfig
from stream.models.runtime import Models

MAGIC = b"PTMODEL1"
FORMAT_VERSION = 1
_HEAD = struct.Struct(">HI")
_BODY = struct.Struct(">Q")


class CheckpointError(Exception):
    """The checkpoint cannot be used; ``str(exc)`` is the reason to log."""


class CorruptCheckpoint(CheckpointError):
    pass


class IncompatibleCheckpoint(CheckpointError):
    pass


def _river_version() -> str:
    return package_version("river")


def dump(models: Models) -> bytes:
    """Serialise the whole model state (deterministic for a given state)."""
    meta = orjson.dumps(
        {
            "config": models.config.fingerprint(),
            "river": _river_version(),
            "churn_version": models.churn.version,
            "segments_version": models.segments.version,
        }
    )
    body = pickle.dumps(models, protocol=pickle.HIGHEST_PROTOCOL)
    digest = hashlib.sha256(meta + body).digest()
    return b"".join((MAGIC, _HEAD.pack(FORMAT_VERSION, len(meta)), meta, _BODY.pack(len(body)), digest, body))


def read_meta(raw: bytes) -> dict[str, Any]:
    """Header metadata after checking magic, lengths and checksum. Raises ``CorruptCheckpoint``."""
    meta, _ = _split(raw)
    return meta


def _split(raw: bytes) -> tuple[dict[str, Any], bytes]:
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise CorruptCheckpoint(f"checkpoint is {type(raw).__name__}, not bytes")
    raw = bytes(raw)
    if raw[: len(MAGIC)] != MAGIC:
        raise CorruptCheckpoint("not a model checkpoint (bad magic)")
    pos = len(MAGIC)
    if len(raw) < pos + _HEAD.size:
        raise CorruptCheckpoint("truncated header")
    fmt, meta_len = _HEAD.unpack_from(raw, pos)
    if fmt != FORMAT_VERSION:
        raise IncompatibleCheckpoint(f"checkpoint format {fmt}, this build reads {FORMAT_VERSION}")
    pos += _HEAD.size
    end_meta = pos + meta_len
    if len(raw) < end_meta + _BODY.size + 32:
        raise CorruptCheckpoint("truncated header")
    meta_raw = raw[pos:end_meta]
    (body_len,) = _BODY.unpack_from(raw, end_meta)
    pos = end_meta + _BODY.size
    digest = raw[pos : pos + 32]
    body = raw[pos + 32 :]
    if len(body) != body_len:
        raise CorruptCheckpoint(f"body is {len(body)} bytes, header says {body_len}")
    if hashlib.sha256(meta_raw + body).digest() != digest:
        raise CorruptCheckpoint("checksum mismatch")
    try:
        meta = orjson.loads(meta_raw)
    except orjson.JSONDecodeError as exc:
        raise CorruptCheckpoint(f"bad metadata: {exc}") from exc
    if not isinstance(meta, dict):
        raise CorruptCheckpoint("bad metadata: not an object")
    return meta, body


def restore(raw: bytes, config: ModelsConfig) -> Models:
    """The ``Models`` saved by ``dump``, checked against the running ``config``.

    Raises ``CorruptCheckpoint`` / ``IncompatibleCheckpoint`` (never returns a partial model).
    """
    meta, body = _split(raw)
    if meta.get("config") != config.fingerprint():
        raise IncompatibleCheckpoint(
            f"checkpoint was made with model config {meta.get('config')}, running {config.fingerprint()}"
        )
    if meta.get("river") != _river_version():
        raise IncompatibleCheckpoint(f"checkpoint was made with river {meta.get('river')}, running {_river_version()}")
    try:
        models = pickle.loads(body)  # checksummed; only checkpoints this service wrote
    except Exception as exc:
        raise CorruptCheckpoint(f"cannot unpickle model state: {exc!r}") from exc
    if not isinstance(models, Models):
        raise CorruptCheckpoint(f"checkpoint holds {type(models).__name__}, not Models")
    return models
