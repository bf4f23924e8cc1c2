"""The deployment artefacts agree with the code: settings, topics, ports, metrics, alerts, runbook.

Everything is derived from the code (``Settings.model_fields``, ``Topics``, ``Metrics``), so a
renamed setting, topic or metric breaks these tests instead of a deployment.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.contracts.topics import Topics
from stream.metrics import Metrics
from stream.settings import Settings
from stream.tagging.definitions import load_catalogue
from tests.ops_tools import (
    ALERTS,
    DASHBOARD,
    DEPLOY,
    LEAD_METRICS,
    PROMETHEUS_CONFIG,
    ROOT,
    TAGS_CONFIGMAP,
    WORKER_JOB,
    alert_queries,
    alert_rules,
    dashboard_queries,
    exposed_names,
    metric_names,
    render_tags_configmap,
)

COMPOSE = ROOT / "docker-compose.yml"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
SETTINGS_ENV = {f"PORTRAIT_{name.upper()}" for name in Settings.model_fields}
ENV_TOKEN = re.compile(r"\bPORTRAIT_[A-Z0-9_]+\b")
DEFAULT_SUB = re.compile(r"^\$\{(\w+):-([^}]*)\}$")
EXPECTED_ALERTS = {
    "PortraitWorkerDown",
    "PortraitRedisLostData",
    "PortraitNoWorkers",
    "PortraitWorkerNotReady",
    "PortraitConsumerLagGrowing",
    "PortraitDeadLetterRatioHigh",
    "PortraitNoEventsConsumed",
    "PortraitSlowProcessing",
    "PortraitProcessingErrors",
    "PortraitTagFreshnessBehind",
    "PortraitRedisErrors",
    "PortraitModelAucLow",
    "PortraitModelAucDropping",
    "PortraitModelDrift",
    "PortraitModelCheckpointStale",
    "PortraitNoTrainer",
    "PortraitTriggerOutboxBacklog",
}


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in _k8s_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _resolve(value: Any) -> str:
    """A compose value with ``${VAR:-default}`` resolved to its default."""
    text = str(value)
    match = DEFAULT_SUB.match(text)
    return match.group(2) if match else text


def _settings_from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in [k for k in __import__("os").environ if k.startswith("PORTRAIT_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def _worker_container() -> dict[str, Any]:
    deployment = _one("Deployment", "portrait-worker")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _k8s_env() -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in _worker_container()["env"]}


def _anchor(heading: str) -> str:
    """GitHub's heading anchor."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


# -- every PORTRAIT_* variable is a real setting -------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [COMPOSE, DOCKERFILE, *sorted(K8S.glob("*.yaml")), ROOT / "docs" / "operations.md", ROOT / "docs" / "runbook.md"],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_portrait_variable_is_a_setting(path: Path) -> None:
    used = set(ENV_TOKEN.findall(path.read_text()))
    unknown = used - SETTINGS_ENV
    assert not unknown, f"{path.name} uses {sorted(unknown)}, not fields of stream.settings.Settings"


# -- docker compose -------------------------------------------------------------------------------
def test_compose_services_and_dependencies() -> None:
    services = _compose()["services"]
    assert {"kafka", "topics", "valkey", "worker", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    kafka_env = services["kafka"]["environment"]
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"] and "broker" in kafka_env["KAFKA_PROCESS_ROLES"]
    assert "zookeeper" not in COMPOSE.read_text().lower()
    assert len(kafka_env["CLUSTER_ID"]) == 22  # base64 of a 16-byte UUID, as KRaft requires
    for name in ("kafka", "valkey", "worker", "prometheus", "grafana"):
        assert "healthcheck" in services[name], f"{name} has no health check"
    worker = services["worker"]
    assert worker["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "valkey": {"condition": "service_healthy"},
        "topics": {"condition": "service_completed_successfully"},
    }
    assert "/readyz" in " ".join(worker["healthcheck"]["test"]), "compose reports readiness (consuming)"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_compose_worker_is_scalable_and_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = _compose()["services"]["worker"]
    assert "ports" not in worker, "a fixed host port prevents --scale worker=N"
    assert "container_name" not in worker
    assert (ROOT / worker["build"]["context"] / worker["build"]["dockerfile"]).resolve() == DOCKERFILE
    env = {k: _resolve(v) for k, v in worker["environment"].items()}
    assert set(env) <= SETTINGS_ENV
    settings = _settings_from_env(env, monkeypatch)  # every value validates
    assert settings.web_host == "0.0.0.0"
    assert [str(settings.web_port)] == [str(p) for p in worker["expose"]]
    assert settings.partitions == Settings.model_fields["partitions"].default
    assert settings.topic_prefix == "portrait"
    assert settings.bootstrap_servers() == "kafka:9092"
    assert settings.resolved_redis_url().endswith("@valkey:6379/0")


def test_compose_topic_job_creates_every_topic_with_the_partition_count() -> None:
    services = _compose()["services"]
    job = services["topics"]
    assert job["restart"] == "no"
    assert job["environment"]["TOPICS"].split() == list(Topics("portrait").all)
    worker_partitions = services["worker"]["environment"]["PORTRAIT_PARTITIONS"]
    assert job["environment"]["PARTITIONS"] == worker_partitions  # same variable, same default
    assert _resolve(worker_partitions) == str(Settings.model_fields["partitions"].default)
    script = "\n".join(job["command"])
    assert "--partitions" in script and "--if-not-exists" in script and "$$TOPICS" in script


def test_compose_valkey_persists_with_aof_and_acl() -> None:
    valkey = _compose()["services"]["valkey"]
    mounts = {m.split(":")[0]: m.split(":")[1] for m in valkey["volumes"]}
    conf_path = ROOT / "deploy/valkey/valkey.conf"
    assert mounts["./deploy/valkey/valkey.conf"] in valkey["command"]
    conf = dict(line.split(None, 1) for line in conf_path.read_text().splitlines() if line and line[0] != "#")
    assert conf["appendonly"] == "yes"
    assert conf["aclfile"] == mounts["./deploy/valkey/users.acl"]
    assert "/data" in mounts.values() or any(v.endswith(":/data") for v in valkey["volumes"])


def test_compose_prometheus_and_grafana_mounts() -> None:
    services = _compose()["services"]
    prom_mounts = dict(m.split(":")[:2] for m in services["prometheus"]["volumes"] if m.startswith("./"))
    assert prom_mounts["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert prom_mounts["./deploy/prometheus/alerts.yml"] == "/etc/prometheus/alerts.yml"
    graf_mounts = dict(m.split(":")[:2] for m in services["grafana"]["volumes"] if m.startswith("./"))
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/portrait.yml").read_text())
    assert graf_mounts["./deploy/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    assert graf_mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    for host_path in [*prom_mounts, *graf_mounts]:
        assert (ROOT / host_path).exists(), host_path


def test_prometheus_config_scrapes_the_workers() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    worker_job = jobs[WORKER_JOB]
    port = int(_compose()["services"]["worker"]["environment"]["PORTRAIT_WEB_PORT"])
    assert worker_job["dns_sd_configs"][0] == {
        "names": ["worker"],
        "type": "A",
        "port": port,
        "refresh_interval": "15s",
    }
    assert worker_job["metrics_path"] == "/metrics"


def test_compose_trainer_runs_apart_and_the_workers_never_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _compose()["services"]
    trainer, worker = services["trainer"], services["worker"]
    assert trainer["command"] == ["trainer"] and trainer["image"] == worker["image"]
    assert trainer["build"] == worker["build"]
    env = {k: _resolve(v) for k, v in trainer["environment"].items()}
    settings = _settings_from_env(env, monkeypatch)
    assert settings.web_host == "0.0.0.0" and [str(settings.trainer_web_port)] == trainer["expose"]
    assert f":{settings.trainer_web_port}/readyz" in " ".join(trainer["healthcheck"]["test"])
    assert settings.models_enabled and settings.key_prefix == "portrait"
    assert trainer["depends_on"] == {"valkey": {"condition": "service_healthy"}}  # Redis only
    worker_env = {k: _resolve(v) for k, v in worker["environment"].items()}
    assert _settings_from_env(worker_env, monkeypatch).trainer == "external"
    jobs = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}
    sd = jobs["portrait-trainer"]["dns_sd_configs"][0]
    assert sd["names"] == ["trainer"] and sd["port"] == settings.trainer_web_port


# -- Dockerfile -----------------------------------------------------------------------------------
def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert "pip install ." in text
    user = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user and not user[-1].startswith(("root", "0")), "the worker must not run as root"
    healthcheck = [i for i, line in enumerate(lines) if line.startswith("HEALTHCHECK")]
    assert healthcheck and "/livez" in lines[healthcheck[0] + 1], "the image's check must not restart on outages"
    assert 'ENTRYPOINT ["portrait"]' in lines and 'CMD ["worker"]' in lines
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert "!stream/" in ignore and "!pyproject.toml" in ignore


# -- Kubernetes -----------------------------------------------------------------------------------
def test_k8s_objects_present() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in _k8s_docs()}
    for wanted in [
        ("Deployment", "portrait-worker"),
        ("Service", "portrait-worker-metrics"),
        ("ConfigMap", "portrait-tags"),
        ("PodDisruptionBudget", "portrait-worker"),
        ("Secret", "portrait-credentials"),
    ]:
        assert wanted in kinds, wanted


def test_k8s_worker_env_and_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    env = _k8s_env()
    assert set(env) <= SETTINGS_ENV
    for name in ("PORTRAIT_BROKER_URL", "PORTRAIT_REDIS_URL"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "portrait-credentials", name
        secret = _one("Secret", "portrait-credentials")
        assert ref["key"] in secret["stringData"]
    plain = {k: e["value"] for k, e in env.items() if "value" in e}
    secret_values = _one("Secret", "portrait-credentials")["stringData"]
    plain["PORTRAIT_BROKER_URL"] = secret_values["broker-url"]
    plain["PORTRAIT_REDIS_URL"] = secret_values["redis-url"]
    settings = _settings_from_env(plain, monkeypatch)
    assert settings.web_host == "0.0.0.0"
    assert settings.partitions == Settings.model_fields["partitions"].default
    replicas = _one("Deployment", "portrait-worker")["spec"]["replicas"]
    assert 1 <= replicas <= settings.partitions, "workers beyond the partition count sit idle"


def test_k8s_probes_lifecycle_resources() -> None:
    deployment = _one("Deployment", "portrait-worker")
    pod = deployment["spec"]["template"]["spec"]
    container = _worker_container()
    port = int(_k8s_env()["PORTRAIT_WEB_PORT"]["value"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}, "not following outages"
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert container["lifecycle"]["preStop"]["exec"]["command"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port) and annotations["prometheus.io/path"] == "/metrics"


def test_k8s_trainer_is_one_leased_instance_and_the_workers_never_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _k8s_env()["PORTRAIT_TRAINER"]["value"] == "external"
    deployment = _one("Deployment", "portrait-trainer")
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    [container] = pod["spec"]["containers"]
    assert container["args"] == ["trainer"] and container["image"] == _worker_container()["image"]
    env = {e["name"]: e for e in container["env"]}
    assert set(env) <= SETTINGS_ENV
    assert env["PORTRAIT_REDIS_URL"]["valueFrom"] == _k8s_env()["PORTRAIT_REDIS_URL"]["valueFrom"]
    plain = {k: e["value"] for k, e in env.items() if "value" in e}
    plain["PORTRAIT_REDIS_URL"] = _one("Secret", "portrait-credentials")["stringData"]["redis-url"]
    settings = _settings_from_env(plain, monkeypatch)
    worker_plain = {k: e["value"] for k, e in _k8s_env().items() if "value" in e}
    assert settings.key_prefix == worker_plain["PORTRAIT_KEY_PREFIX"]  # the same models keys
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == settings.trainer_web_port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(settings.trainer_web_port)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    service = _one("Service", "portrait-trainer-metrics")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_k8s_selectors_match() -> None:
    deployment = _one("Deployment", "portrait-worker")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = _one("Service", "portrait-worker-metrics")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pdb = _one("PodDisruptionBudget", "portrait-worker")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_k8s_tags_configmap_is_the_shipped_catalogue(tmp_path: Path) -> None:
    shipped = (ROOT / "stream" / "tags.yaml").read_text()
    configmap = _one("ConfigMap", "portrait-tags")
    assert configmap["data"]["tags.yaml"] == shipped, "run: python -m tests.ops_tools sync-tags"
    assert render_tags_configmap(shipped, TAGS_CONFIGMAP.read_text()) == TAGS_CONFIGMAP.read_text()
    mounted = tmp_path / "tags.yaml"
    mounted.write_text(configmap["data"]["tags.yaml"])
    assert load_catalogue(mounted).tags  # loads exactly as the worker will
    tags_file = Path(_k8s_env()["PORTRAIT_TAGS_FILE"]["value"])
    container, pod = _worker_container(), _one("Deployment", "portrait-worker")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") == "portrait-tags")
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert Path(mount["mountPath"]) / "tags.yaml" == tags_file


def test_kustomization_lists_manifests_and_rules() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (DEPLOY / resource).exists(), resource
    assert "k8s/secret.example.yaml" not in kustomization["resources"]
    listed = {str((DEPLOY / r).resolve()) for r in kustomization["resources"]}
    for path in K8S.glob("*.yaml"):
        assert str(path.resolve()) in listed or path.name == "secret.example.yaml", f"{path.name} not in kustomization"
    generators = {g["name"]: g for g in kustomization["configMapGenerator"]}
    assert generators["portrait-rules"]["files"] == ["rules.yaml"]
    assert (DEPLOY / "rules.yaml").exists()
    pod = _one("Deployment", "portrait-worker")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") == "portrait-rules")
    mount = next(m for m in _worker_container()["volumeMounts"] if m["name"] == volume["name"])
    assert Path(mount["mountPath"]) / "rules.yaml" == Path(_k8s_env()["PORTRAIT_RULES_FILE"]["value"])


def test_compose_mounts_the_rules_file() -> None:
    worker = _compose()["services"]["worker"]
    mounts = dict(m.split(":")[:2] for m in worker["volumes"])
    assert mounts["./deploy/rules.yaml"] == worker["environment"]["PORTRAIT_RULES_FILE"]
    assert (ROOT / "deploy" / "rules.yaml").exists()


# -- metrics, dashboard, alerts, runbook ----------------------------------------------------------
def test_queries_use_only_known_metrics() -> None:
    known = exposed_names(Metrics().registry) | set(LEAD_METRICS) | {"up"}
    for query in dashboard_queries() + alert_queries():
        unknown = metric_names(query.expr) - known
        assert not unknown, f"{query.source} {query.name!r} uses unknown metrics {unknown}: {query.expr}"
    # the names promised to the lead are not already taken by something else
    assert not set(LEAD_METRICS) & exposed_names(Metrics().registry)


def test_alert_names_and_runbook() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    assert set(names) == EXPECTED_ALERTS
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    anchors = {_anchor(line.lstrip("#")) for line in runbook.splitlines() if line.startswith("## ")}
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical")
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/runbook.md#{rule['alert'].lower()}"
        assert rule["alert"].lower() in anchors, f"runbook has no section for {rule['alert']}"
    assert yaml.safe_load(ALERTS.read_text())["groups"]


def test_grafana_provisioning_and_dashboard() -> None:
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    ds = datasources["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == ds["uid"]
        assert all(t["datasource"]["uid"] == ds["uid"] for t in panel["targets"])
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("throughput", "lag", "consume → profile", "dead letters by reason", "freshness", "segment",
                  "churn", "triggers sent", "suppressed", "auc"):  # fmt: skip
        assert topic in titles, topic
    assert len(dashboard_queries()) >= 25
    assert all("$" not in q.expr for q in dashboard_queries()), "template variables cannot be checked by the tests"
