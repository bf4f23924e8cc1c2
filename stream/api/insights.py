"""``/v1/insights/*``: what the dashboard shows, each answered from memory or O(1) reads.

Population figures come from the latest aggregate pass (``stream.api.refresher``; every answer
carries its ``meta.computed_at`` and the clock its profiles were exact at). Rules come from the
shared counters (``P:v2:*:stats``), segment sizes and trends from audience sizes and the hourly
snapshots. Definitions: ``stream.api.aggregate`` and docs/api.md.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from stream.api.aggregate import ACTIVITY_DAYS, HISTOGRAM_BINS, VALUABLE_TIERS, Aggregate, parse_float
from stream.api.context import ApiContext, api_of
from stream.api.models import (
    ActivityHeatmap,
    AtRiskUser,
    CategoryCount,
    ChurnRisk,
    Funnel,
    FunnelStep,
    GroupEffect,
    HistogramBin,
    InsightsMeta,
    Overview,
    RfmCell,
    RfmGrid,
    RuleInsight,
    RulesInsight,
    Satisfaction,
    Segment,
    Segments,
    Share,
    TopCategories,
    TrendChange,
    TrendPoint,
    Trends,
)
from stream.api.problems import ProblemError
from stream.api.refresher import CHURN_BANDS, HOUR, Snapshot
from stream.rules.counters import RuleCounter, parsed
from stream.rules.effect import GroupStats, RuleEffect, effects
from stream.rules.uplift import newcombe
from stream.tagging.engine import RFM_SEGMENTS as ENGINE_RFM_SEGMENTS
from stream.tagging.profile import to_iso

router = APIRouter(prefix="/v1/insights", tags=["insights"])

FIRST_PASS_WAIT_S = 10.0
# the segments in the engine's order, then the one of users without an order
RFM_SEGMENTS = (*(name for name, _, _ in ENGINE_RFM_SEGMENTS), "Prospects")


async def snapshot_of(api: ApiContext) -> Snapshot:
    snapshot = await api.refresher.wait_ready(FIRST_PASS_WAIT_S)
    if snapshot is None:
        detail = "the first aggregate pass is still running; retry shortly"
        raise ProblemError(503, "Insights not ready", detail, headers={"Retry-After": "5"})
    return snapshot


def meta_of(snapshot: Snapshot) -> InsightsMeta:
    return InsightsMeta(
        computed_at=to_iso(snapshot.computed_at), clock=to_iso(snapshot.clock), pass_seconds=snapshot.seconds
    )


def shares(counts: Counter[str], order: Iterable[str] = ()) -> list[Share]:
    """Every value's users and share, in ``order`` first, then by size."""
    total = sum(counts.values())
    ordered = list(dict.fromkeys(order))
    rest = sorted((v for v in counts if v not in ordered), key=lambda v: (-counts[v], v))
    return [Share(value=v, users=counts[v], share=counts[v] / total if total else 0.0) for v in [*ordered, *rest]]


def _domain(api: ApiContext, tag: str) -> tuple[str, ...]:
    definition = api.catalogue.domain(tag)
    return tuple(definition.values or ()) if definition is not None else ()


@router.get("/overview", response_model=Overview)
async def overview(api: Annotated[ApiContext, Depends(api_of)]) -> Overview:
    """Users, active users, events per second and the main breakdowns."""
    snapshot = await snapshot_of(api)
    agg = snapshot.aggregate
    stats = await api.reads.stats()
    return Overview(
        meta=meta_of(snapshot),
        users=agg.users,
        active_7d=agg.active_7d,
        active_30d=agg.active_30d,
        events_per_second=api.refresher.events_per_second(),
        events_applied=stats.get("events_applied", 0),
        rfm_segments=shares(agg.counts("rfm_segment"), _domain(api, "rfm_segment") or RFM_SEGMENTS),
        value_tiers=shares(agg.counts("value_tier"), _domain(api, "value_tier")),
        churn_bands=shares(agg.counts("churn_band"), CHURN_BANDS),
    )


@router.get("/rfm", response_model=RfmGrid)
async def rfm(api: Annotated[ApiContext, Depends(api_of)]) -> RfmGrid:
    """Users by R and F score (1-5 each), with the mean 90-day monetary value of each cell."""
    snapshot = await snapshot_of(api)
    agg = snapshot.aggregate
    monetary = api.catalogue.domain("monetary_90d")
    cells = []
    for r in range(1, 6):
        for f in range(1, 6):
            n = agg.rfm_users.get((r, f), 0)
            avg = round(agg.rfm_cents[(r, f)] / n / 100, 2) if n else None
            cells.append(RfmCell(r=r, f=f, users=n, avg_monetary=avg))
    return RfmGrid(
        meta=meta_of(snapshot),
        buyers=sum(agg.rfm_users.values()),
        unit=monetary.unit if monetary is not None else None,
        cells=cells,
    )


def funnel_of(agg: Aggregate) -> tuple[list[FunnelStep], float | None]:
    steps: list[FunnelStep] = []
    previous: int | None = None
    for stage, users in agg.funnel():
        conversion = None if previous is None else (users / previous if previous else None)
        steps.append(FunnelStep(stage=stage, users=users, conversion=conversion))
        previous = users
    rate = agg.cart_abandoned / agg.carted if agg.carted else None
    return steps, rate


@router.get("/funnel", response_model=Funnel)
async def funnel(api: Annotated[ApiContext, Depends(api_of)]) -> Funnel:
    """The 7-day funnel (browsed, carted, checkout, paid) with step-to-step conversion and cart abandonment."""
    snapshot = await snapshot_of(api)
    agg = snapshot.aggregate
    steps, rate = funnel_of(agg)
    return Funnel(
        meta=meta_of(snapshot),
        window_days=7,
        steps=steps,
        cart_abandoned=agg.cart_abandoned,
        carted=agg.carted,
        cart_abandonment_rate=rate,
    )


@router.get("/activity", response_model=ActivityHeatmap)
async def activity(api: Annotated[ApiContext, Depends(api_of)]) -> ActivityHeatmap:
    """Activity events of the last 28 days by local hour of week (each user's time zone)."""
    snapshot = await snapshot_of(api)
    agg = snapshot.aggregate
    return ActivityHeatmap(
        meta=meta_of(snapshot), window_days=ACTIVITY_DAYS, counts=agg.activity_grid(), total=sum(agg.activity)
    )


@router.get("/categories", response_model=TopCategories)
async def categories(
    api: Annotated[ApiContext, Depends(api_of)],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> TopCategories:
    """Categories by the users who have them among their top 3 (decayed interest)."""
    snapshot = await snapshot_of(api)
    agg = snapshot.aggregate
    ranked = sorted(agg.categories, key=lambda c: (-agg.categories[c], c))[:limit]
    return TopCategories(
        meta=meta_of(snapshot),
        categories=[CategoryCount(category=c, users=agg.categories[c], first=agg.first_categories[c]) for c in ranked],
    )


@router.get("/satisfaction", response_model=Satisfaction)
async def satisfaction(api: Annotated[ApiContext, Depends(api_of)]) -> Satisfaction:
    """Average rating, NPS (promoters - detractors, in points) and complaints over 90 days."""
    snapshot = await snapshot_of(api)
    agg = snapshot.aggregate
    nps = agg.counts("nps_class")
    answers = nps["promoter"] + nps["passive"] + nps["detractor"]
    return Satisfaction(
        meta=meta_of(snapshot),
        rated_users=agg.rated_users,
        average_rating=agg.rating_sum / agg.rated_users if agg.rated_users else None,
        promoters=nps["promoter"],
        passives=nps["passive"],
        detractors=nps["detractor"],
        nps=100.0 * (nps["promoter"] - nps["detractor"]) / answers if answers else None,
        users_with_complaints=agg.users_with_complaints,
        complaints=agg.complaints,
        classes=shares(agg.counts("satisfaction"), _domain(api, "satisfaction")),
    )


@router.get("/churn", response_model=ChurnRisk)
async def churn(
    api: Annotated[ApiContext, Depends(api_of)],
    limit: Annotated[int, Query(ge=0, le=50, description="users in the at-risk list")] = 50,
) -> ChurnRisk:
    """The churn-risk histogram, the bands, and the highest-risk valuable users (流失预警)."""
    snapshot = await snapshot_of(api)
    agg = snapshot.aggregate
    width = 1 / HISTOGRAM_BINS
    at_risk = []
    for risk, uid, profile in agg.at_risk()[:limit]:
        days = parse_float(profile.get("days_since_last_order"))
        at_risk.append(
            AtRiskUser(
                user_id=uid,
                churn_risk=risk,
                churn_band=profile.get("churn_band"),
                value_tier=profile.get("value_tier"),
                monetary_90d=parse_float(profile.get("monetary_90d")),
                rfm_segment=profile.get("rfm_segment"),
                days_since_last_order=int(days) if days is not None else None,
            )
        )
    return ChurnRisk(
        meta=meta_of(snapshot),
        scored_users=agg.scored_users,
        histogram=[
            HistogramBin(low=round(i * width, 10), high=round((i + 1) * width, 10), users=n)
            for i, n in enumerate(agg.histogram)
        ],
        bands=shares(agg.counts("churn_band"), CHURN_BANDS),
        valuable_tiers=list(VALUABLE_TIERS),
        at_risk_valuable=at_risk,
    )


@router.get("/segments", response_model=Segments, response_model_exclude_none=True)
async def segments(api: Annotated[ApiContext, Depends(api_of)]) -> Segments:
    """Behaviour segments: users in each now, the model's share and a readable description."""
    snapshot = await snapshot_of(api)
    status = await api.reads.model_status()
    published = {str(s.get("segment_id")): s for s in status.get("segments", []) if isinstance(s, dict)}
    counts = snapshot.aggregate.counts("behaviour_segment")
    ids = sorted(set(counts) | set(published), key=lambda s: (len(s), s))
    version = status.get("churn", {}).get("version") if isinstance(status.get("churn"), dict) else None
    return Segments(
        segments=[
            Segment(
                segment_id=sid,
                users=counts.get(sid, 0),
                share=published[sid].get("share") if sid in published else None,
                description=published[sid].get("text") if sid in published else None,
            )
            for sid in ids
        ],
        model_version=version,
    )


def _group(stats: GroupStats) -> GroupEffect:
    return GroupEffect(
        exposures=stats.exposures,
        conversions=stats.conversions,
        expired=stats.expired,
        open=stats.open,
        rate=stats.rate,
    )


@router.get("/rules", response_model=RulesInsight)
async def rules(api: Annotated[ApiContext, Depends(api_of)]) -> RulesInsight:
    """Per rule: firings sent, suppressions by reason, treated vs control conversion and the uplift."""
    stats = await api.reads.stats()
    firings: Counter[str] = Counter()
    suppressed: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for counter, n in parsed(stats):
        if not isinstance(counter, RuleCounter):
            continue
        if counter.outcome == "send":
            firings[counter.rule] += n
        else:
            suppressed[counter.rule][counter.outcome] += n
    measured = effects(stats)
    out = []
    for rule in sorted(set(firings) | set(suppressed) | set(measured)):
        effect = measured.get(rule) or RuleEffect()
        t, c = effect.treated, effect.control
        t_closed, c_closed = t.conversions + t.expired, c.conversions + c.expired
        interval = newcombe(t.conversions, t_closed, c.conversions, c_closed) if t_closed and c_closed else None
        out.append(
            RuleInsight(
                rule_id=rule,
                firings=firings[rule],
                suppressed=dict(sorted(suppressed[rule].items())),
                treated=_group(t),
                control=_group(c),
                uplift=effect.uplift,
                uplift_ci95=interval,
                relative_uplift=effect.relative_uplift,
            )
        )
    return RulesInsight(rules=out)


@router.get("/trends", response_model=Trends)
async def trends(
    api: Annotated[ApiContext, Depends(api_of)],
    days: Annotated[float, Query(gt=0, le=90, description="how far back from the latest snapshot")] = 7,
    audience: Annotated[
        list[str] | None, Query(description="tag:value to include (repeatable; default every audience)")
    ] = None,
) -> Trends:
    """Hourly snapshots of audience sizes (service clock) and each audience's change over the range."""
    until = int(await api.refresher.service_clock() // HOUR) * HOUR
    since = until - days * 86400
    found = await api.reads.trends(since, until)
    wanted = set(audience) if audience else None
    points = []
    for hour, doc in sorted(found.items()):
        sizes = {k: int(v) for k, v in (doc.get("sizes") or {}).items() if wanted is None or k in wanted}
        users = doc.get("users")
        points.append(TrendPoint(hour=to_iso(hour), users=int(users) if users is not None else None, sizes=sizes))
    changes = []
    if points:
        first, last = points[0].sizes, points[-1].sizes
        for name in sorted(set(first) | set(last)):
            a, b = first.get(name, 0), last.get(name, 0)
            changes.append(TrendChange(audience=name, first=a, last=b, change=(b - a) / a if a else None))
    return Trends(since=to_iso(since), until=to_iso(until), points=points, changes=changes)
