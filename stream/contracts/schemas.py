"""JSON Schemas generated from the pydantic models (published under docs/schemas)."""

from __future__ import annotations

import json
from pathlib import Path

from stream.contracts.deadletter import DeadLetter
from stream.contracts.events import EVENT_ADAPTER
from stream.contracts.privacy import EraseRequest, ErasureConfirmation
from stream.contracts.triggers import Trigger


def write_schemas(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    docs = {
        "event.schema.json": EVENT_ADAPTER.json_schema(),
        "dead-letter.schema.json": DeadLetter.model_json_schema(),
        "trigger.schema.json": Trigger.model_json_schema(),
        "erase-request.schema.json": EraseRequest.model_json_schema(),
        "erasure-confirmation.schema.json": ErasureConfirmation.model_json_schema(),
    }
    paths = []
    for name, schema in docs.items():
        path = out / name
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        paths.append(path)
    return paths
