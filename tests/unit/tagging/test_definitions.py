from pathlib import Path

import pytest

from stream.settings import ConfigError
from stream.tagging.definitions import BUILTIN_TAGS, load_catalogue, parse_duration


def test_shipped_catalogue_loads_and_covers_every_builtin() -> None:
    catalogue = load_catalogue()
    assert catalogue.names == frozenset(BUILTIN_TAGS)
    assert catalogue.params.cart_abandon_after == 6 * 3600


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "tags.yaml"
    path.write_text(body)
    return path


def test_error_names_file_tag_and_field(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "version: 1\ntags:\n  - {name: recency_days, level: L9, category: a, owner: b, description: c, type: int}\n",
    )
    with pytest.raises(ConfigError) as err:
        load_catalogue(path)
    assert str(err.value) == f"{path}: tags[0] (recency_days).level: Input should be 'L1', 'L2' or 'L3'"


def test_unknown_tag_and_extra_field_are_rejected(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "version: 1\ntags:\n  - {name: shoe_size, level: L1, category: a, owner: b, description: c, type: int}\n",
    )
    with pytest.raises(ConfigError, match="unknown tag 'shoe_size'"):
        load_catalogue(path)
    path = _write(
        tmp_path,
        "version: 1\ntags:\n"
        "  - {name: region, level: L1, category: a, owner: b, description: c, type: str, colour: red}\n",
    )
    with pytest.raises(ConfigError, match=r"tags\[0\] \(region\)\.colour: Extra inputs are not permitted"):
        load_catalogue(path)


def test_duplicate_tag_and_bad_yaml(tmp_path: Path) -> None:
    item = "  - {name: region, level: L1, category: a, owner: b, description: c, type: str}\n"
    with pytest.raises(ConfigError, match=r"tags\[1\] \(region\)\.name: duplicate tag 'region'"):
        load_catalogue(_write(tmp_path, "version: 1\ntags:\n" + item + item))
    with pytest.raises(ConfigError, match=r"tags\.yaml: line 2, column 1: invalid YAML: ") as err:
        load_catalogue(_write(tmp_path, "version: [1\n"))
    assert "\n" not in str(err.value)


def test_labels_are_optional_per_language_and_checked(tmp_path: Path) -> None:
    shipped = load_catalogue()
    assert all(t.label is not None and t.label.en and t.label.zh for t in shipped.tags)
    rfm = shipped.domain("rfm_segment")
    assert rfm is not None and rfm.label is not None and (rfm.label.en, rfm.label.zh) == ("RFM segment", "RFM 客户分群")
    item = "  - {name: region, level: L1, category: a, owner: b, description: c, type: str%s}\n"
    plain = load_catalogue(_write(tmp_path, "version: 1\ntags:\n" + item % ""))
    assert plain.tags[0].label is None
    english = load_catalogue(_write(tmp_path, "version: 1\ntags:\n" + item % ", label: {en: Area}"))
    assert english.tags[0].label is not None and (english.tags[0].label.en, english.tags[0].label.zh) == ("Area", None)
    with pytest.raises(ConfigError, match=r"tags\[0\] \(region\)\.label\.fr: Extra inputs are not permitted"):
        load_catalogue(_write(tmp_path, "version: 1\ntags:\n" + item % ", label: {en: Area, fr: Zone}"))


def test_bad_param_is_reported(tmp_path: Path) -> None:
    path = _write(tmp_path, "version: 1\nparams: {cart_abandon_after: soon}\ntags: []\n")
    with pytest.raises(ConfigError, match=r"tags\.yaml: params\.cart_abandon_after: not a duration: 'soon'"):
        load_catalogue(path)


@pytest.mark.parametrize(("text", "seconds"), [(90, 90), ("90s", 90), ("15m", 900), ("6h", 21600), ("30d", 2592000)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds
