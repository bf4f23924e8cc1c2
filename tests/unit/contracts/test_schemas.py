import json
from pathlib import Path

from stream.contracts.schemas import write_schemas

DOCS = Path(__file__).resolve().parents[3] / "docs" / "schemas"


def test_published_schemas_are_current(tmp_path: Path) -> None:
    """docs/schemas must be regenerated (`portrait schemas`) whenever a model changes."""
    for generated in write_schemas(tmp_path):
        published = DOCS / generated.name
        assert published.exists(), f"{published} missing: run `portrait schemas`"
        assert json.loads(published.read_text()) == json.loads(generated.read_text()), f"{published} is stale"
