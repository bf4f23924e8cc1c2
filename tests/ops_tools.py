"""Helpers for the operations tests: the deploy/ artefacts as data, and a real Prometheus.

* ``ensure_prometheus()`` installs the Debian ``prometheus`` package (it ships ``promtool``) when
  missing and raises ``PrometheusUnavailable`` when that is impossible: the tests then fail, they do
  not skip.
* ``Prometheus`` runs one server on a free loopback port with a generated config and talks to its
  HTTP API.
* ``dashboard_queries()`` / ``alert_rules()`` list every PromQL expression of the Grafana dashboard
  and of the alerting rules; ``metric_names()`` every metric name an expression refers to.

``python -m tests.ops_tools sync-tags`` rewrites deploy/k8s/configmap-tags.yaml from
stream/tags.yaml (the manifest test fails while they differ).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from portrait_dev.harness import wait_http

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "portrait.json"
TAGS_CONFIGMAP = DEPLOY / "k8s" / "configmap-tags.yaml"
WORKER_JOB = "portrait-worker"

# Metrics the dashboard and alerts already use but that stream.metrics does not define yet: the
# models code and an audience-size timer have to add and feed them. Exposed names.
LEAD_METRICS: dict[str, str] = {}
PROMQL_BUILTINS = frozenset({"up", "time", "vector", "scalar"})


class PrometheusUnavailable(RuntimeError):
    """Prometheus/promtool is missing and could not be installed."""


# -- installing -----------------------------------------------------------------------------------
def ensure_prometheus(timeout: float = 540.0) -> tuple[str, str]:
    """``(prometheus, promtool)`` paths; installs the Debian ``prometheus`` package if needed."""
    found = shutil.which("prometheus"), shutil.which("promtool")
    if all(found):
        return found[0] or "", found[1] or ""
    apt = shutil.which("apt-get")
    if apt is None:
        raise PrometheusUnavailable("prometheus/promtool not on PATH and no apt-get to install them")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        raise PrometheusUnavailable(
            "prometheus/promtool not on PATH; installing needs root (apt-get install prometheus)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = ([apt, "update", "-q"], [apt, "install", "-y", "-q", "--no-install-recommends", "prometheus"])
    for step in steps:
        try:
            done = subprocess.run(step, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise PrometheusUnavailable(f"{' '.join(step)} timed out after {timeout:.0f}s") from exc
        if done.returncode != 0:
            raise PrometheusUnavailable(f"{' '.join(step)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    found = shutil.which("prometheus"), shutil.which("promtool")
    if not all(found):
        raise PrometheusUnavailable("the prometheus package installed but prometheus/promtool are not on PATH")
    return found[0] or "", found[1] or ""


def promtool(binary: str, *args: str | Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT
    )


# -- configs --------------------------------------------------------------------------------------
def scrape_config(
    targets: Sequence[str],
    *,
    rule_files: Sequence[Path] = (ALERTS,),
    interval: str = "1s",
    job: str = WORKER_JOB,
) -> dict[str, Any]:
    """A Prometheus config scraping ``targets`` (``host:port``) as ``job``, evaluating ``rule_files``."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": list(targets)}]}
        ],
    }


# -- expressions ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    source: str  # "dashboard" | "alert"
    name: str  # panel title / alert name
    expr: str


def dashboard_queries(path: Path = DASHBOARD) -> list[Query]:
    """Every ``targets[].expr`` of every panel (nested rows included)."""
    found: list[Query] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", ()):
                if target.get("expr"):
                    found.append(Query("dashboard", panel.get("title", "?"), target["expr"]))
            walk(panel.get("panels", []))

    walk(json.loads(path.read_text())["panels"])
    return found


def alert_rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    data = yaml.safe_load(path.read_text())
    return [rule for group in data["groups"] for rule in group["rules"] if "alert" in rule]


def alert_queries(path: Path = ALERTS) -> list[Query]:
    return [Query("alert", rule["alert"], rule["expr"]) for rule in alert_rules(path)]


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACES = re.compile(r"\{[^}]*\}")
_BY = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_PROMQL_WORDS = frozenset(
    {
        "sum", "min", "max", "avg", "count", "rate", "irate", "increase", "deriv", "delta", "histogram_quantile",
        "max_over_time", "min_over_time", "avg_over_time", "absent", "and", "or", "unless", "offset", "bool",
        "topk", "bottomk", "clamp_min", "clamp_max", "abs", "label_replace",
    }
)  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (functions, labels and keywords removed)."""
    text = _BY.sub(" ", _BRACES.sub(" ", _STRINGS.sub(" ", _RANGE.sub(" ", expr))))
    names = set()
    for match in _IDENT.finditer(text):
        word = match.group(0)
        end = match.end()
        if text[end : end + 1] == "(" or text[end:].lstrip().startswith("("):
            continue  # a function call
        if word in _PROMQL_WORDS or word in PROMQL_BUILTINS - {"up"}:
            continue
        names.add(word)
    return names


def exposed_names(registry: Any) -> set[str]:
    """Every sample name a prometheus_client registry exposes, labelled metrics without children too."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
        "info": ("_info",),
        "summary": ("", "_sum", "_count", "_created"),
    }
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


# -- a running Prometheus -------------------------------------------------------------------------
class Prometheus:
    """One Prometheus server on 127.0.0.1:``port`` with its data in ``workdir``."""

    def __init__(self, binary: str, config: dict[str, Any], workdir: Path, port: int) -> None:
        self.binary, self.config, self.workdir, self.port = binary, config, workdir, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "prometheus.log"

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_http(f"{self.url}/-/ready", self.proc, timeout)
        except RuntimeError:
            raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}") from None
        except TimeoutError:
            raise TimeoutError(f"prometheus not ready after {timeout}s:\n{self.log_tail()}") from None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else "(no log)"

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET ``/api/v1/<path>``; returns the JSON body, error responses included."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body: dict[str, Any] = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422 carry {"status": "error", ...}
            body = json.loads(exc.read() or b"{}") or {"status": "error", "error": str(exc)}
        return body

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def values(self, expr: str) -> list[float]:
        """Sample values of an instant query (raises on a query error)."""
        body = self.query(expr)
        if body.get("status") != "success":
            raise AssertionError(f"{expr!r}: {body}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [float(data["result"][1])]
        return [float(item["value"][1]) for item in data["result"]]

    def wait_for(self, expr: str, predicate: Any, timeout: float = 30.0) -> list[float]:
        deadline = time.monotonic() + timeout
        values: list[float] = []
        while time.monotonic() < deadline:
            values = self.values(expr)
            if predicate(values):
                return values
            time.sleep(0.25)
        raise TimeoutError(f"{expr!r} never satisfied the condition; last {values}")


@contextlib.contextmanager
def running_prometheus(binary: str, config: dict[str, Any], workdir: Path, port: int) -> Iterator[Prometheus]:
    server = Prometheus(binary, config, workdir, port)
    try:
        server.start()
        yield server
    except BaseException:
        print(server.log_tail())
        raise
    finally:
        server.stop()


# -- keeping the tags ConfigMap in sync -----------------------------------------------------------
def render_tags_configmap(tags_text: str, current: str) -> str:
    """``current`` (the manifest) with its ``tags.yaml`` block replaced by ``tags_text``."""
    head, marker, _ = current.partition("  tags.yaml: |\n")
    if not marker:
        raise ValueError("no '  tags.yaml: |' block in the ConfigMap")
    body = "".join("    " + line if line.strip() else "\n" for line in tags_text.splitlines(keepends=True))
    return head + marker + (body if body.endswith("\n") else body + "\n")


def main(argv: Sequence[str]) -> int:
    if list(argv) != ["sync-tags"]:
        print("usage: python -m tests.ops_tools sync-tags", file=sys.stderr)
        return 2
    tags = (ROOT / "stream" / "tags.yaml").read_text()
    TAGS_CONFIGMAP.write_text(render_tags_configmap(tags, TAGS_CONFIGMAP.read_text()))
    print(f"wrote {TAGS_CONFIGMAP.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
