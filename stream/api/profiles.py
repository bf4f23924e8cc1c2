"""``GET /v1/profiles/{user_id}`` and ``POST /v1/profiles:batchGet``: typed portraits.

The typing is the worker's ``/profiles`` implementation (``stream.service.profiles``); this module
only shapes it: tags (optionally grouped by taxonomy level), model scores, segment, churn band and
the meta fields. An anonymous id (``anon:<id>``) that was merged into a user answers with that
user's profile (``requested_id`` says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query

from stream.api.context import ApiContext, api_of
from stream.api.models import (
    ActivityWindow,
    BatchGetRequest,
    BatchGetResponse,
    Firing,
    MergedIdentity,
    ModelScores,
    Profile,
    TagInfo,
    TagLabel,
    TagList,
)
from stream.api.problems import ProblemError
from stream.rules.config import MODEL_TAG_DOMAINS
from stream.service.profiles import typed_profiles
from stream.tagging import state as slots
from stream.tagging.definitions import TagCatalogue
from stream.tagging.profile import META_FIELDS, MODEL_FIELDS, catalogue_rows, to_iso
from stream.tagging.state import UserState

router = APIRouter(tags=["profiles"])

GroupBy = Literal["level"]
Part = Literal["activity", "history", "identities"]
PARTS: tuple[Part, ...] = ("activity", "history", "identities")
ANON = "anon:"
ACTIVITY_WINDOWS = (7, 30, 90)


def known_fields(catalogue: TagCatalogue) -> frozenset[str]:
    return catalogue.names | frozenset(MODEL_FIELDS)


def check_fields(fields: list[str] | None, catalogue: TagCatalogue) -> frozenset[str] | None:
    """The selected fields, or a 422 naming the first unknown one."""
    if fields is None:
        return None
    known = known_fields(catalogue)
    for name in fields:
        if name not in known:
            raise ProblemError(422, "Unknown field", f"fields: {name!r} is no tag or model field (see `portrait tags`)")
    return frozenset(fields)


def shape(
    uid: str,
    typed: dict[str, Any],
    catalogue: TagCatalogue,
    fields: frozenset[str] | None = None,
    group_by: GroupBy | None = None,
    requested: str | None = None,
) -> Profile:
    """A typed profile hash as the API's ``Profile``."""
    tags = {
        k: v
        for k, v in typed.items()
        if k not in MODEL_FIELDS and k not in META_FIELDS and not k.startswith("_") and (fields is None or k in fields)
    }
    scores = {k: typed.get(k) for k in MODEL_FIELDS if fields is None or k in fields}
    grouped: dict[str, dict[str, Any]] | None = None
    if group_by == "level":
        grouped = {}
        levels = {t.name: t.level for t in catalogue.tags}
        for name, value in tags.items():
            grouped.setdefault(levels.get(name, "other"), {})[name] = value
    return Profile(
        user_id=uid,
        requested_id=requested,
        evaluated_at=typed.get("_evaluated_at"),
        updated_at=typed.get("_updated_at"),
        rfm_version=typed.get("_rfm_version"),
        rfm_segment=typed.get("rfm_segment"),
        churn_band=typed.get("churn_band"),
        scores=ModelScores(**scores),
        tags=None if grouped is not None else tags,
        tags_by_level=grouped,
    )


def activity_windows(state: UserState, now: float) -> list[ActivityWindow]:
    """Sums of the user's daily tiles over the last 7, 30 and 90 whole UTC days up to ``now``."""
    today = int(now // slots.DAY)
    out = []
    for days in ACTIVITY_WINDOWS:
        total = [0] * slots.TILE_WIDTH
        for day, tile in state.tiles.items():
            if today - days < day <= today:
                total = [a + b for a, b in zip(total, tile, strict=True)]
        out.append(
            ActivityWindow(
                days=days,
                events=total[slots.EVENTS],
                page_views=total[slots.PAGE_VIEWS],
                searches=total[slots.SEARCHES],
                cart_adds=total[slots.CART_ADDS],
                checkouts=total[slots.CHECKOUTS],
                orders=total[slots.ORDERS],
                order_value=total[slots.ORDER_CENTS] / 100,
                refunds=total[slots.REFUNDS],
                ratings=total[slots.RATING_COUNT],
                complaints=total[slots.COMPLAINTS],
            )
        )
    return out


def state_parts(state: UserState, parts: frozenset[str], now: float) -> dict[str, Any]:
    """The parts of a user's state ``include`` asks for, as ``Profile`` fields."""
    out: dict[str, Any] = {}
    if "activity" in parts:
        out["activity"] = activity_windows(state, now)
    if "history" in parts:
        out["history"] = [
            Firing(
                at=to_iso(r.at),
                rule_id=r.rule_id,
                rule_version=r.rule_version,
                channel=r.channel,
                outcome=r.outcome,
                reason=r.reason,
                trigger_id=r.trigger_id,
            )
            for r in state.delivery.recent
        ]
    if "identities" in parts:
        out["identities"] = [MergedIdentity(subject=m.subject, linked_at=to_iso(m.at)) for m in state.merged]
    return out


def check_parts(include: str | None) -> frozenset[str]:
    parts = frozenset(comma_list(include) or ())
    for part in sorted(parts):
        if part not in PARTS:
            raise ProblemError(422, "Unknown part", f"include: {part!r} is not one of {', '.join(PARTS)}")
    return parts


def comma_list(fields: str | None) -> list[str] | None:
    """The items of a comma-separated query value (blanks dropped); None when it was not given."""
    return [f.strip() for f in fields.split(",") if f.strip()] if fields is not None else None


@dataclass(frozen=True)
class Found:
    """A typed profile found for an asked id: ``subject``'s, which ``requested`` (an ``anon:<id>``)
    was merged into when it is set."""

    subject: str
    typed: dict[str, Any]
    requested: str | None = None


async def find_profiles(api: ApiContext, uids: list[str]) -> list[Found | None]:
    """The typed profile of each of ``uids`` in order (None: no profile), an unknown ``anon:<id>``
    answered by the user it was merged into: three round trips at most, whatever the count."""
    found = await typed_profiles(api.reads, uids, api.catalogue)
    unknown_anon = [uid for uid, p in zip(uids, found, strict=True) if p is None and uid.startswith(ANON)]
    targets = await api.reads.aliases(unknown_anon)
    followed = dict(zip(targets, await typed_profiles(api.reads, list(targets.values()), api.catalogue), strict=True))
    out: list[Found | None] = []
    for uid, typed in zip(uids, found, strict=True):
        via = followed.get(uid)
        if typed is not None:
            out.append(Found(uid, typed))
        elif via is not None:
            out.append(Found(targets[uid], via, uid))
        else:
            out.append(None)
    return out


@router.post("/v1/profiles:batchGet", response_model=BatchGetResponse, response_model_exclude_none=True)
async def batch_get(body: BatchGetRequest, api: Annotated[ApiContext, Depends(api_of)]) -> BatchGetResponse:
    """Up to 1,000 profiles in one call, in the order asked; ``missing`` lists ids without one."""
    fields = check_fields(body.fields, api.catalogue)
    profiles: list[Profile] = []
    missing: list[str] = []
    for uid, hit in zip(body.user_ids, await find_profiles(api, body.user_ids), strict=True):
        if hit is None:
            missing.append(uid)
        else:
            profiles.append(shape(hit.subject, hit.typed, api.catalogue, fields, body.group_by, hit.requested))
    return BatchGetResponse(profiles=profiles, missing=missing)


@router.get("/v1/profiles/{user_id:path}", response_model=Profile, response_model_exclude_none=True)
async def get_profile(
    user_id: str,
    api: Annotated[ApiContext, Depends(api_of)],
    group_by: Annotated[GroupBy | None, Query(description="level: tags grouped by taxonomy level")] = None,
    fields: Annotated[str | None, Query(description="comma-separated tags/model fields to return")] = None,
    include: Annotated[
        str | None, Query(description="comma-separated parts of the user's state: activity, history, identities")
    ] = None,
) -> Profile:
    """A user's profile. The id is one percent-encoded path segment (``{`` as ``%7B``, ``/`` as
    ``%2F``, UTF-8 bytes for non-ASCII); ``anon:<id>`` addresses an anonymous visitor (a merged
    one answers with the user it was merged into)."""
    selected = check_fields(comma_list(fields), api.catalogue)
    parts = check_parts(include)
    (hit,) = await find_profiles(api, [user_id])
    if hit is None:
        raise ProblemError(404, "Unknown user", f"no profile for {user_id!r} (unknown user, expired or erased)")
    profile = shape(hit.subject, hit.typed, api.catalogue, selected, group_by, hit.requested)
    if not parts:
        return profile
    blob = await api.reads.state(hit.subject)
    if blob is None:
        return profile
    state = UserState.from_bytes(blob)
    now = state.evaluated_at if state.evaluated_at is not None else 0.0
    return profile.model_copy(update=state_parts(state, parts, now))


@router.get("/v1/tags", response_model=TagList, response_model_exclude_none=True)
async def tags(api: Annotated[ApiContext, Depends(api_of)]) -> TagList:
    """Every profile field (the tag catalogue in force, then the model outputs) with its level,
    type, unit, description, value domain and display labels (English, Chinese when given)."""
    defs = {t.name: t for t in api.catalogue.tags}
    out = []
    for row in catalogue_rows(api.catalogue):
        definition = defs.get(row["name"])
        label = definition.label if definition is not None else None
        domain = definition or MODEL_TAG_DOMAINS.get(row["name"])
        values = list(domain.values) if domain is not None and domain.values else None
        out.append(
            TagInfo(
                **row,
                label=TagLabel(en=label.en, zh=label.zh) if label is not None else TagLabel(en=row["name"]),
                values=values,
            )
        )
    return TagList(version=api.catalogue.version, tags=out)
