"""The cutoff evaluation on a real purchase log: CDNOW (shipped by the ``lifetimes`` package, the
``evaluation`` extra, a dev dependency), a deterministic subset of its 1/10 customer sample,
replayed through the worker's code (``portrait evaluate``'s path) at the default cutoffs.

Labels and customer counts are checked against an independent reading of the CSV; the benchmark
figures (ROC AUC of ``churn_risk``, recency-only and BG/NBD, Brier scores) are printed and the
model must rank at least as well as recency-only by ``MIN_MARGIN_OVER_RECENCY`` at every cutoff.
The full-size run is a documented command (docs/models.md, "Measured").
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from portrait_dev.datasets import CDNOW_MAP, write_cdnow

from stream.kafka.replay import parse_mapping, read_events
from stream.offline.evaluation import evaluate_events
from stream.settings import Settings

pytestmark = pytest.mark.integration
CUSTOMERS = 300
DAY = 86400.0
MIN_MARGIN_OVER_RECENCY = 0.0


def _orders(path: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            ts = datetime.fromisoformat(row["date"]).replace(tzinfo=UTC).timestamp()
            out.setdefault(row["user"], []).append(ts)
    return out


def test_cutoff_evaluation_on_cdnow(make_settings: Any, tmp_path: Path) -> None:
    settings: Settings = make_settings()
    data = write_cdnow(tmp_path / "cdnow.csv", customers=CUSTOMERS)
    report = evaluate_events(
        settings, read_events(data, mapping=parse_mapping(CDNOW_MAP)), source="CDNOW sample, first 300 customers"
    )
    print(report.to_text())
    orders = _orders(data)
    assert len(orders) == CUSTOMERS and report.events == sum(len(v) for v in orders.values())
    assert len(report.cutoffs) == 2, report.to_text()
    for c in report.cutoffs:
        t = c.cutoff_ts
        customers = {u for u, ts in orders.items() if min(ts) < t}
        stayed = {u for u in customers if any(t <= x < t + 90 * DAY for x in orders[u])}
        assert c.customers == len(customers) and c.churned == len(customers - stayed), report.to_text()
        assert c.without_profile == 0, report.to_text()  # lapsed customers keep a profile and a score
        assert c.bgnbd is not None and c.bgnbd.roc_auc is not None and c.bgnbd.brier is not None
        assert c.portrait.roc_auc is not None and c.recency.roc_auc is not None and c.portrait.brier is not None
        assert c.portrait.roc_auc >= c.recency.roc_auc + MIN_MARGIN_OVER_RECENCY, report.to_text()


def test_evaluate_command_saves_what_models_status_shows(
    make_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stream.cli.main import main

    settings: Settings = make_settings()
    data = write_cdnow(tmp_path / "cdnow.csv", customers=40)
    monkeypatch.setenv("PORTRAIT_REDIS_URL", settings.resolved_redis_url())
    monkeypatch.setenv("PORTRAIT_KEY_PREFIX", settings.key_prefix)
    argv = ["evaluate", str(data), "--map", CDNOW_MAP, "--cutoff", "1997-10-01", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    (cutoff,) = report["cutoffs"]
    assert cutoff["cutoff"] == "1997-10-01T00:00:00+00:00" and cutoff["customers"] == 40
    assert set(cutoff["portrait"]) >= {"roc_auc", "pr_auc", "brier", "calibration"}
    assert cutoff["recency"]["brier"] is None and cutoff["bgnbd"]["brier"] is not None
    assert main(["models", "status"]) == 0
    out = capsys.readouterr().out
    assert "latest cutoff evaluation (cdnow.csv" in out and "cutoff 1997-10-01T00:00:00+00:00, 40 customers" in out
    assert f"portrait  ROC AUC {cutoff['portrait']['roc_auc']:.4f}" in out
    assert "(the trainer's own snapshots" in out or "no model checkpoint published yet" in out
    assert main(["models", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["evaluation"]["cutoffs"][0]["customers"] == 40
