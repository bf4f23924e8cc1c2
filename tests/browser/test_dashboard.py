"""The dashboard in headless Chromium, on the read API over real Valkey after a replay through the
real broker and worker (one replay and one browser session for the module).

Every page loads without a console error and with its charts rendered; the figures it shows
(headline numbers, table cells and the data inside the charts) equal the API's JSON, and the
tag-derived ones also the offline oracle's computation from the same events (tests/oracle.py).
The churn warning list opens a profile card; the audience builder builds an expression whose
size and downloaded CSV match the API and the oracle. Screenshots go to ``PORTRAIT_SCREENSHOTS``
(``docs/img`` for the README) or to pytest's basetemp."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2 as httpx  # the HTTP client of the dev extra (what TestClient uses)
import pytest
import uvicorn
from portrait_dev import synth
from portrait_dev.infra import free_port
from pydantic import SecretStr

from stream.api.app import create_app
from stream.settings import Settings
from stream.storage.reads import Reads
from stream.storage.store import Store
from tests import oracle
from tests.conftest import Names, session_settings
from tests.integration.helpers import replay_and_settle, worker

pytestmark = pytest.mark.integration

PAGES = ("overview", "rfm", "funnel", "activity", "satisfaction", "churn", "segments", "rules", "audiences", "profile")
DEVICE = "dev-dashboard"
HOUR = 3600
SEEDED_SHARE = 0.8  # a week ago the largest RFM segment but Prospects had 80 % of its users today


@dataclass
class Served:
    settings: Settings
    url: str
    http: httpx.Client
    expected: dict[str, dict[str, str]]  # the oracle's tags by user
    merged_user: str  # the user an anonymous device was merged into
    grown: str  # the RFM segment whose week-old size was seeded smaller
    seeded_first: int  # its seeded week-old size


def _merge_a_device(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Copies of ``events`` in which one user's first two activity events come from an anonymous
    device that their third event links (the merged profile has every event: the oracle needs
    no change)."""
    counts = Counter(e["user_id"] for e in events if e["type"] != "identify")
    user = sorted(u for u, n in counts.items() if n >= 8)[0]
    out, seen = [], 0
    for e in events:
        e = dict(e)
        if e["user_id"] == user and e["type"] != "identify":
            if seen < 2:
                del e["user_id"]
                e["anonymous_id"] = DEVICE
            elif seen == 2:
                e["anonymous_id"] = DEVICE
            seen += 1
        out.append(e)
    return out, user


async def _clock(settings: Settings) -> float:
    async with Store.open(settings) as store:
        clock = await store.clock()
    assert clock is not None
    return clock


async def _seed_trend(settings: Settings, clock: float, sizes: dict[str, int]) -> None:
    """A snapshot of ``sizes`` a week before the current hour (the oldest the 7-day trends show)."""
    hour = int(clock // HOUR) * HOUR - 7 * 86400
    async with Reads.open(settings) as reads:
        await reads.record_trend(hour, {"users": 0, "sizes": sizes}, hour - 86400)


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # runs in a thread: leave the test's signals alone
        pass


@pytest.fixture(scope="module")
def served(infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("dashboard")
    settings = session_settings(
        infra,
        Names.unique(),
        tmp,
        clock="event",
        api_port=free_port(),
        api_insights_interval_s=1.0,
    )
    events = synth.generate(users=150, events=3000, seed=19, days=85)
    sent, merged_user = _merge_a_device(events)
    with worker(settings, tmp / "worker.log"):
        replay_and_settle(settings, sent)
    clock = asyncio.run(_clock(settings))
    expected = oracle.compute_profiles(events, clock)

    with _serving(settings) as url, httpx.Client(base_url=url, timeout=10) as http:
        # a week ago every audience had today's size but the largest segment, which had fewer users
        sizes = {f"{a['tag']}:{a['value']}": a["size"] for a in http.get("/v1/audiences").json()["audiences"]}
        segments = Counter(p["rfm_segment"] for p in expected.values() if p.get("rfm_segment") != "Prospects")
        grown, now = segments.most_common(1)[0]
        assert now >= 10, "a segment large enough for a trend sentence"
        seeded_first = sizes[f"rfm_segment:{grown}"] = round(now * SEEDED_SHARE)
        asyncio.run(_seed_trend(settings, clock, sizes))
        yield Served(settings, url, http, expected, merged_user, grown, seeded_first)


@contextlib.contextmanager
def _serving(settings: Settings) -> Iterator[str]:
    """The API app of ``settings`` under uvicorn in a thread, once its first insights pass is done."""
    server = _Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.api_port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.api_port}"
    token = settings.api_token.get_secret_value() if settings.api_token is not None else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/v1/insights/overview", headers=headers, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the API did not come up"
            time.sleep(0.2)
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


# -- browser helpers ---------------------------------------------------------------------------
def _wait(browser: Any, script: str, timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``script`` (JavaScript returning a value) until it is truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = browser.execute_script(script)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what or script}"
        time.sleep(0.1)


def _select(browser: Any, select: str, value: str) -> None:
    """Choose ``value`` in the top bar's ``select`` (refresh, lang) as a user would."""
    browser.execute_script(
        "const s = document.getElementById(arguments[0]);s.value = arguments[1]; s.dispatchEvent(new Event('change'));",
        select,
        value,
    )


def _console_errors(browser: Any) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def _open(browser: Any, served: Served, page: str, arg: str | None = None) -> None:
    """Open ``#/page[/arg]`` and wait until it rendered with fresh data and every chart drew."""
    target = f"{served.url}/#/{page}" + (f"/{quote(arg, safe='')}" if arg else "")
    if browser.current_url.startswith(served.url + "/"):
        browser.execute_script("window.location.hash = arguments[0]", target.split("#", 1)[1])
    else:
        browser.get(target)
    _wait(
        browser,
        f"return document.body.dataset.page === {page!r}"
        f" && document.getElementById('page').dataset.layout === {page!r}",
        what=f"page {page}",
    )
    _wait(
        browser,
        "const charts = [...document.querySelectorAll('[data-chart]')];"
        "return charts.every(c => c.dataset.rendered === 'true');",
        what=f"charts of {page}",
    )


def _figure(browser: Any, name: str) -> Any:
    return browser.execute_script(
        'const el = document.querySelector(`[data-figure="${arguments[0]}"]`); return el ? el.dataset.value : null;',
        name,
    )


def _series(browser: Any, chart: str) -> list[list[Any]]:
    """The data of each series of a chart, as ECharts holds it."""
    return browser.execute_script(
        'const chart = echarts.getInstanceByDom(document.querySelector(`[data-chart="${arguments[0]}"]`));'
        "const plain = d => (d !== null && typeof d === 'object' && !Array.isArray(d)) ? d.value : d;"
        "return chart.getOption().series.map(s => s.data.map(plain));",
        chart,
    )


def _rows(browser: Any, table: str, key: str) -> dict[str, list[str | None]]:
    """The data-value of every numeric cell of a table's rows, by the rows' data-``key``."""
    return browser.execute_script(
        'const rows = document.querySelectorAll(`[data-testid="${arguments[0]}"] tbody tr`);'
        "return Object.fromEntries([...rows].map(r => [r.dataset[arguments[1]],"
        " [...r.querySelectorAll('td')].map(td => td.dataset.value ?? null)]));",
        table,
        key,
    )


def _num(text: str | None) -> float | None:
    return None if text in (None, "", "null") else float(text)


# -- tests -----------------------------------------------------------------------------------
def test_every_page_renders_its_charts_without_console_errors(browser: Any, served: Served, screenshots: Path) -> None:
    browser.get(f"{served.url}/#/overview")
    for page in PAGES:
        _open(browser, served, page)
        assert _console_errors(browser) == [], page
        assert browser.find_element("css selector", "#status").get_attribute("class").strip() == "status", page
        browser.save_screenshot(str(screenshots / f"dashboard-{page}.png"))
    # live refresh: the page polls again by itself (every 2 s once chosen), still without errors
    _select(browser, "refresh", "2000")
    ticks = int(browser.execute_script("return document.body.dataset.ticks"))
    _wait(browser, f"return Number(document.body.dataset.ticks) > {ticks}", what="another refresh")
    assert _console_errors(browser) == []
    _select(browser, "refresh", "0")  # paused from here on: later reads of the page never race a re-render


def test_overview_shows_the_api_and_oracle_figures(browser: Any, served: Served, screenshots: Path) -> None:
    _open(browser, served, "overview")
    api = served.http.get("/v1/insights/overview").json()
    for name in ("users", "active_7d", "active_30d", "events_applied"):
        assert _num(_figure(browser, name)) == api[name], name
    # independent: the oracle's profiles of the same events
    expected = served.expected
    assert api["users"] == len(expected)
    assert api["active_7d"] == sum(1 for p in expected.values() if int(p.get("events_7d", "0")) > 0)
    segments = Counter(p["rfm_segment"] for p in expected.values() if "rfm_segment" in p)
    shown = [s for s in api["rfm_segments"] if s["users"] > 0]
    assert _series(browser, "rfm-segments") == [[s["users"] for s in shown]]
    assert {s["value"]: s["users"] for s in shown} == dict(segments)
    tiers = Counter(p["value_tier"] for p in expected.values() if "value_tier" in p)
    assert _series(browser, "value-tiers") == [[s["users"] for s in api["value_tiers"]]]
    assert {s["value"]: s["users"] for s in api["value_tiers"] if s["users"]} == dict(tiers)
    assert _series(browser, "churn-bands") == [[s["users"] for s in api["churn_bands"]]]
    # the trend sentence ("At Risk grew 12 % this week"): from the seeded size to today's
    grown, now, first = served.grown, segments[served.grown], served.seeded_first
    line = browser.find_element("css selector", f'[data-trend="rfm_segment:{grown}"]')
    assert line.text == f"{grown} grew {round((now - first) / first * 100)} % this week ({first} → {now} users)"
    browser.save_screenshot(str(screenshots / "dashboard-overview.png"))


def test_insight_pages_show_the_api_figures(browser: Any, served: Served) -> None:
    expected = served.expected
    _open(browser, served, "rfm")
    grid = served.http.get("/v1/insights/rfm").json()
    cells = Counter((int(p["r_score"]), int(p["f_score"])) for p in expected.values() if "r_score" in p)
    assert {(c["r"], c["f"]): c["users"] for c in grid["cells"] if c["users"]} == dict(cells)
    assert _series(browser, "rfm-grid") == [
        [[c["f"] - 1, c["r"] - 1, c["users"], c["avg_monetary"]] for c in grid["cells"]]
    ]
    assert _num(_figure(browser, "buyers")) == grid["buyers"] == sum(cells.values())

    _open(browser, served, "funnel")
    funnel = served.http.get("/v1/insights/funnel").json()
    rows = _rows(browser, "funnel-steps", "stage")
    assert {s: _num(v[1]) for s, v in rows.items()} == {s["stage"]: s["users"] for s in funnel["steps"]}
    assert {s: _num(v[2]) for s, v in rows.items()} == {s["stage"]: s["conversion"] for s in funnel["steps"]}
    stages = ("browsed", "carted", "checkout", "paid")
    deepest = Counter(p.get("funnel_stage_7d") for p in expected.values())
    assert [s["users"] for s in funnel["steps"]] == [sum(deepest[x] for x in stages[i:]) for i in range(len(stages))]
    assert _num(_figure(browser, "cart_abandonment_rate")) == pytest.approx(funnel["cart_abandonment_rate"])
    assert _series(browser, "funnel") == [[s["users"] for s in funnel["steps"]]]

    _open(browser, served, "activity")
    heat = served.http.get("/v1/insights/activity").json()
    drawn = _series(browser, "activity-heatmap")[0]
    assert sorted(map(tuple, drawn)) == sorted(
        (h, d, n) for d, row in enumerate(heat["counts"]) for h, n in enumerate(row)
    )
    assert _num(_figure(browser, "activity_total")) == heat["total"]
    cats = served.http.get("/v1/insights/categories", params={"limit": 15}).json()["categories"]
    shown = _rows(browser, "categories", "category")
    assert {c: [_num(v[1]), _num(v[2])] for c, v in shown.items()} == {
        c["category"]: [c["users"], c["first"]] for c in cats
    }

    _open(browser, served, "satisfaction")
    sat = served.http.get("/v1/insights/satisfaction").json()
    for name in ("average_rating", "nps", "complaints", "promoters", "detractors"):
        assert _num(_figure(browser, name)) == pytest.approx(sat[name]), name
    assert sat["complaints"] == sum(int(p.get("complaints_90d", "0")) for p in expected.values())
    assert _series(browser, "nps-groups") == [[sat["promoters"], sat["passives"], sat["detractors"]]]

    _open(browser, served, "segments")
    segs = served.http.get("/v1/insights/segments").json()["segments"]
    shown = _rows(browser, "segments", "segment")
    assert {s: _num(v[2]) for s, v in shown.items()} == {s["segment_id"]: s["users"] for s in segs}

    _open(browser, served, "rules")
    rules = served.http.get("/v1/insights/rules").json()["rules"]
    assert rules, "the shipped rules fired during the replay"
    shown = _rows(browser, "rules", "rule")
    assert {r: _num(v[1]) for r, v in shown.items()} == {r["rule_id"]: r["firings"] for r in rules}
    assert {r: _num(v[2]) for r, v in shown.items()} == {r["rule_id"]: sum(r["suppressed"].values()) for r in rules}
    assert {r: _num(v[5]) for r, v in shown.items()} == {r["rule_id"]: r["uplift"] for r in rules}


def test_churn_warning_list_opens_the_profile_card(browser: Any, served: Served, screenshots: Path) -> None:
    _open(browser, served, "churn")
    churn = served.http.get("/v1/insights/churn", params={"limit": 50}).json()
    assert _series(browser, "churn-histogram") == [[b["users"] for b in churn["histogram"]]]
    listed = browser.execute_script(
        "return [...document.querySelectorAll('[data-testid=\"at-risk-list\"] tbody tr')].map(r => r.dataset.user)"
    )
    assert listed == [u["user_id"] for u in churn["at_risk_valuable"]]
    assert listed, "valuable users at risk exist after the replay"
    for uid in listed:  # independent: they are valuable by the oracle's value tier
        assert served.expected[uid]["value_tier"] in churn["valuable_tiers"]
    uid = listed[0]
    browser.find_element("css selector", f'[data-testid="at-risk-list"] a[data-profile="{uid}"]').click()
    _open(browser, served, "profile", uid)
    assert browser.find_element("css selector", '[data-testid="profile-uid"]').text == uid
    _check_profile_card(browser, served, uid)
    browser.save_screenshot(str(screenshots / "dashboard-profile.png"))


def _check_profile_card(browser: Any, served: Served, uid: str) -> dict[str, Any]:
    """The card shows the API's profile: every tag, the activity windows and the trigger history
    (newest first); a few tags also checked against the oracle. The API's profile."""
    profile = served.http.get(
        f"/v1/profiles/{quote(uid, safe='')}", params={"group_by": "level", "include": "activity,history,identities"}
    ).json()
    shown = browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('dd[data-tag]')]"
        ".map(d => [d.dataset.tag, JSON.parse(d.dataset.value)]))"
    )
    api_tags = {k: v for level in profile["tags_by_level"].values() for k, v in level.items()}
    assert shown == api_tags
    oracle_tags = served.expected[profile["user_id"]]
    for name in ("rfm_segment", "value_tier", "activity_level", "funnel_stage_7d", "timezone"):
        assert shown.get(name) == oracle_tags.get(name), name
    activity = browser.execute_script(
        "return [...document.querySelectorAll('[data-testid=\"activity\"] td[data-days]')]"
        ".map(td => [td.parentElement.dataset.recent, Number(td.dataset.days), Number(td.dataset.value)])"
    )
    assert sorted(map(tuple, activity)) == sorted(
        (k, w["days"], w[k]) for w in profile["activity"] for k in w if k != "days"
    )
    triggers = browser.execute_script(
        "return [...document.querySelectorAll('[data-testid=\"triggers\"] tbody tr')]"
        ".map(r => [r.dataset.trigger, r.dataset.outcome])"
    )
    assert triggers == [[f["trigger_id"], f["outcome"]] for f in reversed(profile["history"])]
    return profile


def test_profile_card_shows_merged_identities(browser: Any, served: Served) -> None:
    _open(browser, served, "profile", served.merged_user)
    profile = _check_profile_card(browser, served, served.merged_user)
    assert [m["subject"] for m in profile["identities"]] == [f"anon:{DEVICE}"]
    merged = browser.execute_script(
        "return [...document.querySelectorAll('[data-merged]')].map(li => li.dataset.merged)"
    )
    assert merged == [f"anon:{DEVICE}"]
    # the anonymous id answers with its user
    _open(browser, served, "profile", f"anon:{DEVICE}")
    assert browser.find_element("css selector", '[data-testid="profile-uid"]').text == served.merged_user
    assert _console_errors(browser) == []


def _click_until(browser: Any, term: str, mode: str) -> None:
    """Click the chip of ``term`` until it is in ``mode`` (each click re-renders the builder)."""
    chip = f'button.chip[data-term="{term}"]'
    for _ in range(4):
        now = browser.find_element("css selector", chip).get_attribute("data-mode")
        if now == mode:
            return
        browser.find_element("css selector", chip).click()
        _wait(
            browser,
            f"const c = document.querySelector({chip!r}); return c && c.dataset.mode !== {now!r}",
            what=f"{term} to change",
        )
    raise AssertionError(f"{term} never became {mode}")


def test_audience_builder_sizes_and_exports_an_expression(
    browser: Any, served: Served, downloads: Path, screenshots: Path
) -> None:
    _open(browser, served, "audiences")
    _click_until(browser, "value_tier:high", "all")
    _click_until(browser, "rfm_segment:Champions", "none")
    _wait(browser, "return document.querySelector('[data-figure=\"audience-size\"]')", what="the audience size")
    params = {"not": "rfm_segment:Champions", "limit": 0}
    api = served.http.get("/v1/audiences/value_tier/high", params=params).json()
    expected = {
        u for u, p in served.expected.items() if p.get("value_tier") == "high" and p.get("rfm_segment") != "Champions"
    }
    assert expected, "the expression has members"
    assert _num(_figure(browser, "audience-size")) == api["size"] == len(expected)
    assert browser.find_element("css selector", '[data-testid="expression"]').text == api["expression"]
    browser.save_screenshot(str(screenshots / "dashboard-audiences.png"))

    browser.find_element("css selector", '[data-testid="export"]').click()
    deadline = time.monotonic() + 30
    while not (files := [p for p in downloads.glob("*.csv")]):
        assert time.monotonic() < deadline, "no CSV downloaded"
        time.sleep(0.2)
    rows = list(csv.DictReader(io.StringIO(files[0].read_text())))
    exported = served.http.get(
        "/v1/audiences/value_tier/high:export",
        params={"not": "rfm_segment:Champions", "fields": "value_tier,rfm_segment"},
    ).text
    assert rows == list(csv.DictReader(io.StringIO(exported)))
    assert {r["user_id"] for r in rows} == expected
    assert all(r["value_tier"] == "high" and r["rfm_segment"] != "Champions" for r in rows)


def test_chinese_labels_from_the_catalogue(browser: Any, served: Served, screenshots: Path) -> None:
    _open(browser, served, "overview")
    _select(browser, "lang", "zh")
    _wait(browser, "return document.documentElement.lang === 'zh-CN' && document.body.dataset.page === 'overview'")
    _open(browser, served, "overview")
    assert browser.find_element("css selector", 'nav a[data-nav="churn"]').text == "流失预警"
    titles = browser.execute_script("return [...document.querySelectorAll('.card h2')].map(h => h.textContent)")
    assert "RFM 客户分群" in titles and "价值等级" in titles  # the catalogue's zh labels
    assert _console_errors(browser) == []
    browser.save_screenshot(str(screenshots / "dashboard-overview-zh.png"))
    _select(browser, "lang", "en")


def test_with_a_token_the_page_asks_for_it_once(browser: Any, served: Served) -> None:
    secret = "s3cret-token"
    settings = served.settings.model_copy(update={"api_token": SecretStr(secret), "api_port": free_port()})
    with _serving(settings) as url:  # another origin: its own session storage, no token yet
        browser.get(f"{url}/#/overview")
        _wait(browser, "const t = document.querySelector('[data-testid=\"token\"]'); return t && t.offsetParent")
        assert all("401" in m for m in _console_errors(browser))  # the refused requests, nothing else
        browser.find_element("css selector", '[data-testid="token"]').send_keys(secret)
        browser.find_element("css selector", "#notice button").click()
        _wait(browser, "return document.querySelector('[data-figure=\"users\"]')", what="the overview")
        assert _num(_figure(browser, "users")) == served.http.get("/v1/insights/overview").json()["users"]
        titles = browser.execute_script("return [...document.querySelectorAll('.card h2')].map(h => h.textContent)")
        assert "RFM segment" in titles  # the catalogue's label: /v1/tags was read with the token
        assert _console_errors(browser) == []
