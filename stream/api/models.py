"""Response and request models of the read API: the contract the OpenAPI document is generated from
(``/openapi.json``, browsable at ``/docs``; every endpoint in docs/api.md).

Values of tags are typed (``stream.tagging.profile.type_profile``): numbers as numbers, booleans
as booleans, times as ISO 8601 text in UTC. Rates and shares are fractions in [0, 1]; money is in
the catalogue's base currency (``unit``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TagValue = str | int | float | bool | None


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Problem(Model):
    """An error as RFC 9457 problem details (``application/problem+json``)."""

    type: str = Field(default="about:blank", description="a URI naming the kind of problem")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = Field(default=None, description="the request path")
    errors: list[dict[str, object]] | None = Field(default=None, description="invalid request fields, when any")


# -- profiles ---------------------------------------------------------------------------------
class ModelScores(Model):
    """What the online models say about the user (absent values: not scored yet)."""

    churn_risk: float | None = Field(default=None, description="probability in [0, 1]")
    churn_band: str | None = Field(default=None, description="low / medium / high")
    churn_model: int | None = Field(default=None, description="version of the churn model that scored it")
    behaviour_segment: str | None = Field(default=None, description="segment id (see /v1/insights/segments)")


class Firing(Model):
    """A rule firing of the user: sent, or suppressed with the reason."""

    at: str = Field(description="evaluation time it fired at (ISO 8601)")
    rule_id: str
    rule_version: int
    channel: str
    outcome: str = Field(description="send or suppressed")
    reason: str | None = Field(default=None, description="why it was suppressed (cooldown, cap, quiet_hours, holdout)")
    trigger_id: str


class MergedIdentity(Model):
    subject: str = Field(description="the anonymous subject (anon:<id>) merged into this user")
    linked_at: str = Field(description="event time of the link (ISO 8601)")


class ActivityWindow(Model):
    """What the user did in the last ``days`` days (whole UTC days up to evaluated_at)."""

    days: int
    events: int
    page_views: int
    searches: int
    cart_adds: int
    checkouts: int
    orders: int
    order_value: float = Field(description="paid order value in the base currency")
    refunds: int
    ratings: int
    complaints: int


class Profile(Model):
    """A user's portrait as the workers published it (``include`` adds parts of the user's state)."""

    user_id: str = Field(description="the subject the profile belongs to")
    requested_id: str | None = Field(
        default=None, description="the id asked for, when it was a merged anonymous id that now points to user_id"
    )
    evaluated_at: str | None = Field(default=None, description="the clock time the tags are exact at (ISO 8601)")
    updated_at: str | None = Field(default=None, description="wall-clock time the profile was written (ISO 8601)")
    rfm_version: int | None = None
    rfm_segment: str | None = None
    churn_band: str | None = None
    scores: ModelScores
    tags: dict[str, TagValue] | None = Field(
        default=None, description="tag -> typed value (absent with group_by=level)"
    )
    tags_by_level: dict[str, dict[str, TagValue]] | None = Field(
        default=None, description="taxonomy level (L1, L2, L3) -> tag -> typed value (with group_by=level)"
    )
    activity: list[ActivityWindow] | None = Field(default=None, description="with include=activity: 7, 30, 90 days")
    history: list[Firing] | None = Field(default=None, description="with include=history: recent firings, oldest first")
    identities: list[MergedIdentity] | None = Field(default=None, description="with include=identities")


class TagLabel(Model):
    en: str
    zh: str | None = None


class TagInfo(Model):
    """A profile field: a catalogue tag or a model output."""

    name: str
    level: str = Field(description="L1, L2, L3, or model")
    category: str
    type: str = Field(description="str, int, float, bool, money, ratio or time")
    unit: str | None
    audience: bool = Field(description="whether /v1/audiences has its values")
    owner: str
    description: str
    label: TagLabel = Field(description="display name per language (English default)")
    values: list[str] | None = Field(default=None, description="the value domain, when declared")


class TagList(Model):
    version: int
    tags: list[TagInfo]


class BatchGetRequest(Model):
    user_ids: list[str] = Field(min_length=1, max_length=1000, description="1 to 1,000 ids, answered in order")
    fields: list[str] | None = Field(
        default=None, description="only these tags (and model fields); default every field"
    )
    group_by: Literal["level"] | None = None


class BatchGetResponse(Model):
    profiles: list[Profile] = Field(description="the profiles found, in the order asked")
    missing: list[str] = Field(description="ids without a profile (unknown, expired or erased)")


# -- audiences --------------------------------------------------------------------------------
class AudienceSize(Model):
    tag: str
    value: str
    size: int
    level: str | None = Field(default=None, description="taxonomy level of the tag (model tags: model)")


class AudienceList(Model):
    """Every audience (tag value) with its size (``SCARD``, live)."""

    audiences: list[AudienceSize]
    total_users: int | None = Field(default=None, description="users with a profile, from the last insights pass")


class AudienceMembers(Model):
    """One audience, or an expression over several: its size and a page of members."""

    expression: str = Field(description="the audience as evaluated: (any of) AND (all of) AND NOT (none of)")
    size: int | None = Field(
        description="members of the whole audience (not of this page); with OR or NOT terms (a count, not one "
        "command) only on the first page, null on the next ones"
    )
    members: list[str]
    next_cursor: str | None = Field(default=None, description="pass as cursor for the next page; null at the end")


# -- insights ---------------------------------------------------------------------------------
class Share(Model):
    value: str
    users: int
    share: float = Field(description="users / total of this breakdown (0 when empty)")


class InsightsMeta(Model):
    computed_at: str | None = Field(description="when the aggregate was computed (ISO 8601, wall clock)")
    clock: str | None = Field(description="the service clock the profiles were exact at (ISO 8601)")
    pass_seconds: float | None = Field(default=None, description="how long the aggregate pass took")


class Overview(Model):
    meta: InsightsMeta
    users: int = Field(description="users with a profile")
    active_7d: int = Field(description="users with an activity event in the last 7 days (events_7d > 0)")
    active_30d: int = Field(description="users with an activity event in the last 30 days (events_30d > 0)")
    events_per_second: float | None = Field(description="events applied per second, from the shared counters")
    events_applied: int
    rfm_segments: list[Share]
    value_tiers: list[Share]
    churn_bands: list[Share]


class RfmCell(Model):
    r: int = Field(ge=1, le=5)
    f: int = Field(ge=1, le=5)
    users: int
    avg_monetary: float | None = Field(description="mean monetary_90d of the cell's users (null when empty)")


class RfmGrid(Model):
    meta: InsightsMeta
    buyers: int = Field(description="users with r_score and f_score")
    unit: str | None = Field(description="currency of avg_monetary")
    cells: list[RfmCell] = Field(description="all 25 cells, r then f ascending")


class FunnelStep(Model):
    stage: str
    users: int = Field(description="users whose deepest stage in 7 days is this one or a later one")
    conversion: float | None = Field(description="users / users of the previous step (null for the first)")


class Funnel(Model):
    meta: InsightsMeta
    window_days: int
    steps: list[FunnelStep]
    cart_abandoned: int = Field(description="users with cart_abandoned = true")
    carted: int = Field(description="users who carted or went further in 7 days, or have an abandoned cart")
    cart_abandonment_rate: float | None = Field(description="cart_abandoned / carted")


class ActivityHeatmap(Model):
    meta: InsightsMeta
    window_days: int
    counts: list[list[int]] = Field(
        description="7 rows (Monday..Sunday) x 24 hours: activity events at that local hour of week"
    )
    total: int


class CategoryCount(Model):
    category: str
    users: int = Field(description="users with the category among their top_categories")
    first: int = Field(description="users whose top category it is")


class TopCategories(Model):
    meta: InsightsMeta
    categories: list[CategoryCount]


class Satisfaction(Model):
    meta: InsightsMeta
    rated_users: int = Field(description="users with avg_rating_90d")
    average_rating: float | None = Field(description="mean of the users' avg_rating_90d (1-5)")
    promoters: int
    passives: int
    detractors: int
    nps: float | None = Field(description="(promoters - detractors) / answers x 100, in [-100, 100]")
    users_with_complaints: int
    complaints: int = Field(description="sum of complaints_90d")
    classes: list[Share] = Field(description="users by satisfaction (happy / neutral / unhappy)")


class HistogramBin(Model):
    low: float
    high: float
    users: int


class AtRiskUser(Model):
    user_id: str
    churn_risk: float
    churn_band: str | None
    value_tier: str | None
    monetary_90d: float | None
    rfm_segment: str | None
    days_since_last_order: int | None


class ChurnRisk(Model):
    meta: InsightsMeta
    scored_users: int
    histogram: list[HistogramBin] = Field(description="10 bins of churn_risk; the last includes 1.0")
    bands: list[Share]
    valuable_tiers: list[str] = Field(description="value tiers counted as valuable")
    at_risk_valuable: list[AtRiskUser] = Field(description="highest churn_risk first among valuable users")


class Segment(Model):
    segment_id: str
    users: int = Field(description="users in the segment now (audience size)")
    share: float | None = Field(description="the model's share of recent learns (null when not published)")
    description: str | None


class Segments(Model):
    segments: list[Segment]
    model_version: int | None = None


class GroupEffect(Model):
    exposures: int
    conversions: int
    expired: int
    open: int
    rate: float | None = Field(description="conversions / closed exposures")


class RuleInsight(Model):
    rule_id: str
    firings: int = Field(description="firings sent (outcome send)")
    suppressed: dict[str, int] = Field(description="suppressed firings by reason")
    treated: GroupEffect
    control: GroupEffect
    uplift: float | None = Field(description="treated rate - control rate")
    uplift_ci95: tuple[float, float] | None = Field(description="95 % interval of the uplift (Newcombe)")
    relative_uplift: float | None


class RulesInsight(Model):
    rules: list[RuleInsight]


class TrendPoint(Model):
    hour: str = Field(description="start of the hour (ISO 8601, service clock)")
    users: int | None
    sizes: dict[str, int] = Field(description="tag:value -> audience size")


class TrendChange(Model):
    audience: str
    first: int
    last: int
    change: float | None = Field(description="(last - first) / first; null when first is 0")


class Trends(Model):
    since: str
    until: str
    points: list[TrendPoint]
    changes: list[TrendChange]
