"""The ``portrait`` command as a user meets it: one-line errors, typed JSON, readable views, pipes.

Commands run in process through ``stream.cli.main.main`` (the console script's function) with a
clean ``PORTRAIT_*`` environment; the entry point itself and closed pipes run as subprocesses.
Unreachable services are closed loopback ports: no broker or Redis is needed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from stream.cli import kafka as kafka_cli
from stream.cli.main import format_profile, main
from stream.contracts.deadletter import DeadLetter
from stream.kafka.dlq import LetterRecord
from stream.kafka.positions import FROM_BEGINNING, Start
from stream.kafka.triggers_tail import TriggerRecord
from stream.settings import Settings, default_state_file, mask_url
from stream.tagging.definitions import load_catalogue
from stream.tagging.profile import MODEL_FIELDS, type_profile

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No PORTRAIT_* variable from the caller, and a state file that does not exist."""
    for key in [k for k in os.environ if k.upper().startswith("PORTRAIT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PORTRAIT_STATE_FILE", str(tmp_path / "state" / "infra.json"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # the parser's own exits (e.g. --help)
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- settings ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("variable", "value", "needles"),
    [
        ("PORTRAIT_REDIS_URL", "notaurl", ("PORTRAIT_REDIS_URL='notaurl'", "not a URL", "redis://")),
        ("PORTRAIT_REDIS_URL", "redis://cache:99999/0", ("PORTRAIT_REDIS_URL", "1-65535")),
        ("PORTRAIT_REDIS_URL", "redis://cache:6379/zero", ("database 'zero'",)),
        ("PORTRAIT_BROKER_URL", "http://kafka:9092", ("PORTRAIT_BROKER_URL", "unknown scheme", "kafka://host:port")),
        ("PORTRAIT_BROKER_URL", "kafka://kafka:port", ("PORTRAIT_BROKER_URL", "1-65535")),
        ("PORTRAIT_WEB_PORT", "99999", ("PORTRAIT_WEB_PORT='99999'", "out of range", "1-65535")),
        ("PORTRAIT_WEB_PORT", "http", ("PORTRAIT_WEB_PORT", "not a whole number")),
        ("PORTRAIT_IDENTITY_BLOCKED_IDS", "[guest, null", ("PORTRAIT_IDENTITY_BLOCKED_IDS", "comma-separated")),
        ("PORTRAIT_MODELS_ENABLED", "maybe", ("PORTRAIT_MODELS_ENABLED", "true or false")),
        ("PORTRAIT_CLOCK", "evnt", ("PORTRAIT_CLOCK", "one of wall, event")),
        ("PORTRAIT_DELIVERY", "dryrun", ("PORTRAIT_DELIVERY='dryrun'", "one of live, dry-run, off")),
        ("PORTRAIT_DELIVERY_HORIZON_S", "-1", ("PORTRAIT_DELIVERY_HORIZON_S", ">= 0")),
        ("PORTRAIT_BATCH_SIZE", "0", ("PORTRAIT_BATCH_SIZE", ">= 1")),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable_and_the_expected_form(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    needles: tuple[str, ...],
) -> None:
    monkeypatch.setenv(variable, value)
    code, out, err = run_cli(capsys, "config", "show")
    assert_one_line_error(code, err, *needles)
    assert out == ""


def test_lists_are_comma_separated_and_urls_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTRAIT_IDENTITY_BLOCKED_IDS", "guest, null,,anonymous")
    monkeypatch.setenv("PORTRAIT_BROKER_URL", "k1:9092,k2:9093")
    settings = Settings()
    assert settings.identity_blocked_ids == ["guest", "null", "anonymous"]
    assert settings.broker_url == "kafka://k1:9092;k2:9093"
    assert settings.bootstrap_servers() == "k1:9092,k2:9093"


def test_an_unknown_variable_warns_with_the_closest_name(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTRAIT_CLOK", "event")
    code, out, err = run_cli(capsys, "config", "show", "--json")
    assert code == 0
    assert err.strip() == "warning: unknown setting PORTRAIT_CLOK is ignored; did you mean PORTRAIT_CLOCK?"
    assert json.loads(out)["settings"]["clock"] == "wall"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://worker:S3cr@t-one@cache:6379/0", "redis://worker:**********@cache:6379/0"),
        ("redis://:S3cr@t-one@cache:6379", "redis://:**********@cache:6379"),
        ("rediss://cache:6380/0?password=S3cr@t-one&ssl_cert_reqs=none", "rediss://cache:6380/0?password=**********"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
    ],
)
def test_url_secrets_are_masked_in_every_form(url: str, shown: str) -> None:
    assert "S3cr@t-one" not in mask_url(url) and "t-one" not in mask_url(url)
    assert mask_url(url).startswith(shown)


def test_config_show_masks_every_secret_and_shows_what_is_used(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    state = tmp_path / "state" / "infra.json"
    state.parent.mkdir()
    state.write_text(json.dumps({"broker_url": "kafka://127.0.0.1:19092", "redis_url": "redis://u:S3cr@t-one@h:1/0"}))
    monkeypatch.setenv("PORTRAIT_REDIS_PASSWORD", "sekret-two")
    monkeypatch.setenv("PORTRAIT_KAFKA_SASL_PASSWORD", "sekret-three")
    for argv in (("config", "show"), ("config", "show", "--json")):
        code, out, err = run_cli(capsys, *argv)
        assert code == 0, err
        for secret in ("S3cr@t", "t-one", "sekret-two", "sekret-three"):
            assert secret not in out
    doc = json.loads(out)
    assert doc["settings"]["broker_url"] == "kafka://127.0.0.1:19092"
    assert doc["sources"]["broker_url"] == f"infra state file {state}"
    assert doc["settings"]["redis_url"] == "redis://u:**********@h:1/0"
    assert doc["settings"]["web_port"] == 6066 and doc["settings"]["models_enabled"] is True
    assert Path(doc["settings"]["tags_file"]).is_file() and Path(doc["settings"]["models_file"]).is_file()
    assert doc["settings"]["redis_password"] == "**********"


def test_secret_fields_never_appear_in_validation_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTRAIT_REDIS_URL", "redis://u:S3cr@t-one@cache:70000/0")
    code, _, err = run_cli(capsys, "stats")
    assert_one_line_error(code, err, "PORTRAIT_REDIS_URL")
    assert "t-one" not in err
    code, _, err = run_cli(capsys, "--debug", "stats")
    assert code == 2 and "t-one" not in err, "not even in the traceback"
    monkeypatch.delenv("PORTRAIT_REDIS_URL")
    assert Settings(kafka_sasl_password=SecretStr("x")).effective()["settings"]["kafka_sasl_password"] == "**********"


# -- the infra state file ------------------------------------------------------------------------
def test_the_state_file_is_found_upward_else_in_the_user_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    deep = tmp_path / "project" / "src" / "deep"
    deep.mkdir(parents=True)
    assert default_state_file(deep) == tmp_path / "xdg" / "portrait" / "infra.json"
    project = tmp_path / "project" / ".portrait" / "infra.json"
    project.parent.mkdir()
    project.write_text("{}")
    assert default_state_file(deep) == project


def test_state_file_option_overrides_and_a_broken_one_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("not json")
    code, _, err = run_cli(capsys, "--state-file", str(broken), "stats")
    assert_one_line_error(code, err, str(broken), "not a JSON object")
    missing = tmp_path / "missing.json"
    code, _, err = run_cli(capsys, "--state-file", str(missing), "stats")
    assert_one_line_error(code, err, "no Redis", "PORTRAIT_REDIS_URL", str(missing))


# -- bad arguments and unreachable services ------------------------------------------------------
@pytest.fixture
def export(tmp_path: Path) -> Path:
    path = tmp_path / "orders.csv"
    path.write_text("user,date,amount\nalice,2026-11-01,12.50\n")
    return path


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (("replay", "{export}", "--map", "user"), ("--map", "bad mapping entry 'user'")),
        (("replay", "{export}", "--tz", "Mars/Base"), ("--tz", "unknown time zone 'Mars/Base'")),
        (("replay", "{export}", "--type", "purchase"), ("--type", "unknown event type")),
        (("replay", "{export}", "--format", "xml"), ("--format",)),
        (("replay", "no-such-file.csv"), ("does not exist",)),
        (("evaluate", "{export}", "--map", "user"), ("--map",)),
        (("evaluate", "{export}", "--cutoff", "someday"), ("--cutoff", "ISO 8601")),
        (
            ("evaluate", "{export}", "--map", "user=user_id,date=ts", "--cutoff", "2026-11-02"),
            ("label window ends after the last event",),
        ),
        (("rules", "backtest", "deploy/rules.yaml", "--data", "{export}", "--horizon", "3x"), ("not a duration",)),
        (("rules", "check", "no-such-rules.yaml"), ("does not exist",)),
        (("profile",), ("Missing argument",)),
        (("profile", "alice", "--jsn"), ("No such option",)),
        (("clock", "--set", "yesterday"), ("--set", "ISO 8601")),
        (("no-such-command",), ("No such command",)),
    ],
)
def test_a_bad_argument_is_one_line(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    export: Path,
    argv: tuple[str, ...],
    needles: tuple[str, ...],
) -> None:
    monkeypatch.chdir(ROOT)
    code, _, err = run_cli(capsys, *(a.replace("{export}", str(export)) for a in argv))
    assert_one_line_error(code, err, *needles)


def test_rules_check_refuses_a_value_outside_the_tags_domain_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "version: 1\nrules:\n  - id: care_sms\n    version: 1\n"
        "    when: {all: [{tag: churn_band, in: [high, vipp]}]}\n"
        "    action: {type: care_sms, params: {template: t}}\n"
    )
    code, out, err = run_cli(capsys, "rules", "check", str(path))
    assert_one_line_error(
        code,
        err,
        f"{path}: rules[0] (care_sms).when.all[0].in: 'vipp' is not a churn_band value (allowed: low, medium, high)",
    )
    assert out == ""
    path.write_text(path.read_text().replace("vipp", "medium"))
    code, out, err = run_cli(capsys, "rules", "check", str(path))
    assert (code, err) == (0, "") and "1 active rule OK" in out


@pytest.mark.parametrize("argv", [("profile", "alice"), ("stats",), ("clock",), ("rules", "report"), ("worker",)])
def test_an_unreachable_redis_is_one_line_with_its_address(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...]
) -> None:
    port = closed_port()
    monkeypatch.setenv("PORTRAIT_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    monkeypatch.setenv("PORTRAIT_BROKER_URL", f"kafka://127.0.0.1:{closed_port()}")
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, f"cannot reach Redis at redis://127.0.0.1:{port}/0", "PORTRAIT_REDIS_URL")


@pytest.mark.parametrize("argv", [("replay", "{export}", "--quiet"), ("dlq", "tail"), ("triggers", "tail")])
def test_an_unreachable_broker_is_one_line_with_its_address(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, export: Path, argv: tuple[str, ...]
) -> None:
    port = closed_port()
    monkeypatch.setenv("PORTRAIT_BROKER_URL", f"kafka://127.0.0.1:{port}")
    code, _, err = run_cli(capsys, *(a.replace("{export}", str(export)) for a in argv))
    assert_one_line_error(code, err, f"cannot reach the Kafka broker at 127.0.0.1:{port}", "PORTRAIT_BROKER_URL")
    assert "Unclosed" not in err


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTRAIT_REDIS_URL", f"redis://127.0.0.1:{closed_port()}/0")
    code, _, err = run_cli(capsys, "--debug", "stats")
    assert code == 2
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: cannot reach Redis")


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    from stream import __version__

    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"portrait {__version__}"
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for command in ("profile", "tags", "replay", "rules", "dlq", "triggers", "infra", "bench", "demo"):
        assert f" {command} " in out, command


# -- typed JSON ----------------------------------------------------------------------------------
def test_a_profile_hash_is_typed_by_the_catalogue() -> None:
    stored = {
        "recency_days": "1",
        "monetary_90d": "1234.50",
        "refund_rate_90d": "0.2500",
        "night_owl": "true",
        "cart_abandoned": "false",
        "first_seen": "2026-11-01T08:00:00+00:00",
        "rfm_segment": "At Risk",
        "r_score": "4",
        "churn_risk": "0.1234",
        "churn_band": "low",
        "behaviour_segment": "s3",
        "churn_model": "88",
        "_evaluated_at": "1795983337.000",
        "_updated_at": "1795983337.250",
        "_rfm_version": "3",
        "events_7d": "not-a-number",
        "someone_elses_field": "42",
    }
    typed = type_profile(stored, load_catalogue())
    assert typed == {
        "recency_days": 1,
        "monetary_90d": 1234.5,
        "refund_rate_90d": 0.25,
        "night_owl": True,
        "cart_abandoned": False,
        "first_seen": "2026-11-01T08:00:00+00:00",
        "rfm_segment": "At Risk",
        "r_score": 4,
        "churn_risk": 0.1234,
        "churn_band": "low",
        "behaviour_segment": "s3",
        "churn_model": 88,
        "_evaluated_at": "2026-11-29T20:15:37+00:00",
        "_updated_at": "2026-11-29T20:15:37.250+00:00",
        "_rfm_version": 3,
        "events_7d": "not-a-number",  # a value that is not its type stays as stored
        "someone_elses_field": "42",  # undeclared fields stay strings
    }


def test_every_model_tag_has_a_declared_type() -> None:
    from stream.models import MODEL_TAGS

    assert set(MODEL_FIELDS) == set(MODEL_TAGS)


def test_tags_json_is_typed_and_lists_the_model_tags(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "tags", "--json")
    assert code == 0
    doc = json.loads(out)
    rows = {r["name"]: r for r in doc["tags"]}
    assert isinstance(doc["version"], int)
    assert rows["night_owl"]["audience"] is True and rows["timezone"]["audience"] is False
    assert {"churn_risk", "churn_band", "behaviour_segment"} <= set(rows)


# -- human views ---------------------------------------------------------------------------------
def test_the_human_profile_shows_model_scores_readable_times_and_units() -> None:
    profile = {
        "recency_days": "1",
        "events_7d": "3",
        "frequency_30d": "1",
        "monetary_90d": "1234.50",
        "night_owl": "true",
        "first_seen": "2026-11-01T08:00:00+00:00",
        "churn_risk": "0.1234",
        "churn_band": "low",
        "behaviour_segment": "s3",
        "_evaluated_at": "1795983337.000",
    }
    text = format_profile("alice", profile, load_catalogue())
    lines = text.splitlines()
    assert max(map(len, lines)) <= 100
    row = {line.split()[0]: " ".join(line.split()[1:]) for line in lines[1:] if line.startswith("    ")}
    assert row["recency_days"] == "1 day"
    assert row["events_7d"] == "3 events"
    assert row["frequency_30d"] == "1 order"
    assert row["monetary_90d"] == "1,234.50 USD"
    assert row["night_owl"] == "yes"
    assert row["first_seen"] == "2026-11-01 08:00:00 UTC"
    assert row["churn_risk"] == "0.1234 (12.3%)"
    assert row["churn_band"] == "low" and row["behaviour_segment"] == "s3"
    assert lines[-1].strip() == "tags as of 2026-11-29 20:15:37 UTC"


def test_tags_fits_100_columns_and_shows_the_model_tags(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "tags")
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 100
    for tag in ("recency_days", "churn_risk", "churn_band", "behaviour_segment"):
        assert any(line.startswith(tag + " ") for line in out.splitlines()), tag


def _letter(reason: str, error: str, at: float) -> DeadLetter:
    return DeadLetter(
        reason=reason,  # type: ignore[arg-type]
        error=error,
        original_b64="e30=",
        key_b64=None,
        source_topic="portrait.clickstream",
        source_partition=1,
        source_offset=7,
        processor_version="test",
        dead_lettered_at=at,
    )


def test_dlq_tail_says_when_empty_and_wraps_long_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTRAIT_BROKER_URL", "kafka://127.0.0.1:9")
    letters: list[DeadLetter] = []

    async def records(settings: Settings, idle_s: float = 2.0, follow: bool = False, start: Start = FROM_BEGINNING):
        yield [LetterRecord(0, offset, letter) for offset, letter in enumerate(letters)]

    monkeypatch.setattr("stream.kafka.dlq.records", records)
    code, out, _ = run_cli(capsys, "dlq", "tail")
    assert code == 0 and out.strip() == "no dead letters"
    long_error = "field 'amount': " + " ".join(f"word{i}" for i in range(60)) + " THE-END"
    letters.append(_letter("schema_violation", long_error, 1795983337.0))
    code, out, _ = run_cli(capsys, "dlq", "tail")
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 100
    assert "THE-END" in out and out.count("\n") > 3, "the whole error is shown, wrapped"
    code, out, _ = run_cli(capsys, "dlq", "tail", "--json")
    doc = json.loads(out.strip())
    assert doc["error"] == long_error and doc["at"] == "2026-11-29T20:15:37+00:00"
    assert isinstance(doc["source_offset"], int)
    assert (doc["partition"], doc["offset"]) == (0, 0)


def _trigger(user: str, at: float, fired_by: list[str]) -> dict[str, object]:
    return {
        "trigger_id": f"t-{user}-{at}",
        "rule_id": "winback",
        "rule_version": 2,
        "user_id": user,
        "action": {"type": "coupon", "params": {}},
        "channel": "email",
        "event_time": at,
        "explanation": {"condition": "", "fired_by": fired_by, "values": {}},
    }


def test_triggers_tail_is_sorted_readable_and_has_json_lines(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTRAIT_BROKER_URL", "kafka://127.0.0.1:9")
    topic = "portrait.triggers.coupon"
    batch = [
        TriggerRecord(topic, 1, 0, _trigger("bob", 1795983400.0, ["value_tier in ['high', 'vip']"]), False),
        TriggerRecord(topic, 0, 0, _trigger("alice", 1795983337.0, ["recency_days ge '14'"]), False),
    ]

    async def read_triggers(settings: Settings, *args: object, **kwargs: object):  # the broker's backlog
        yield batch

    monkeypatch.setattr("stream.kafka.triggers_tail.read_triggers", read_triggers)
    code, out, _ = run_cli(capsys, "triggers", "tail")
    assert code == 0
    text = out.splitlines()
    assert text[0].startswith("2026-11-29 20:15:37 UTC  alice") and "because recency_days >= 14" in text[1]
    assert "bob" in text[2] and "because value_tier in [high, vip]" in text[3]
    assert text[-1] == "2 distinct triggers"
    code, out, _ = run_cli(capsys, "triggers", "tail", "--json")
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["user_id"] for d in docs] == ["alice", "bob"]
    assert docs[0]["at"] == "2026-11-29T20:15:37+00:00" and docs[0]["rule_version"] == 2


@pytest.mark.parametrize(
    ("described", "readable"),
    [
        ("recency_days ge '14'", "recency_days >= 14"),
        ("value_tier in ['high', 'vip']", "value_tier in [high, vip]"),
        ("complaints_90d crosses_above 0.0", "complaints_90d crosses above 0"),
        ("rfm_segment enters ['At Risk']", "rfm_segment enters [At Risk]"),
        ("any(a eq '1', b eq '2')", "any(a eq '1', b eq '2')"),  # groups are left as described
    ],
)
def test_conditions_read_as_comparisons(described: str, readable: str) -> None:
    assert kafka_cli.readable_test(described) == readable


# -- the real entry point ------------------------------------------------------------------------
def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PORTRAIT_")}
    env["PORTRAIT_STATE_FILE"] = str(tmp_path / "none.json")
    return env


@pytest.mark.parametrize("argv", [("tags",), ("tags", "--json"), ("--help",)])
def test_a_closed_pipe_ends_quietly(tmp_path: Path, argv: tuple[str, ...]) -> None:
    """The reader is gone (as after ``| head -1``) before the command writes: no traceback, exit 1."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tmp_path)
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert stderr == ""


def test_the_shell_pipeline_from_the_issue(tmp_path: Path) -> None:
    result = subprocess.run(
        f"{sys.executable} -m stream tags | head -1",
        shell=True,
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=60,
    )
    assert result.stdout.startswith("tag ") and result.stderr == ""


def test_the_entry_point_reports_a_bad_setting_in_one_line(tmp_path: Path) -> None:
    env = {**_env(tmp_path), "PORTRAIT_WEB_PORT": "99999"}
    result = subprocess.run(
        [sys.executable, "-m", "stream", "config", "show"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: PORTRAIT_WEB_PORT='99999': out of range (expected a TCP port 1-65535)"
    ]


# -- development commands ------------------------------------------------------------------------
def test_bench_options_mirror_its_argparse_arguments() -> None:
    import argparse
    import inspect

    from portrait_dev import bench, commands

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    dests = {a.dest: a.default for a in parser._actions if a.dest != "help"}
    params = inspect.signature(commands.bench).parameters
    assert set(params) == set(dests)
    for name, default in dests.items():
        option = params[name].default
        assert str(option) == str(default), name


def test_shell_completion_completes_commands(tmp_path: Path) -> None:
    env = {**_env(tmp_path), "_PORTRAIT_COMPLETE": "complete_bash", "COMP_WORDS": "portrait rules ", "COMP_CWORD": "2"}
    result = subprocess.run([sys.executable, "-m", "stream"], capture_output=True, text=True, env=env, timeout=60)
    assert result.stdout.split() == ["check", "report", "backtest"]


def test_a_missing_file_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "tags.yaml"
    monkeypatch.setenv("PORTRAIT_TAGS_FILE", str(missing))
    code, _, err = run_cli(capsys, "tags")
    assert_one_line_error(code, err, str(missing), "cannot read tag definitions")


@pytest.mark.parametrize("command", ["dlq", "triggers"])
def test_tail_offset_and_from_end_exclude_each_other(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, _, err = run_cli(capsys, command, "tail", "--offset", "3", "--from-end")
    assert code == 2 and "--offset and --from-end exclude each other" in err and "Traceback" not in err
