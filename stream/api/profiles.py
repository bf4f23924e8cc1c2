"""``GET /v1/profiles/{user_id}`` and ``POST /v1/profiles:batchGet``: typed portraits.

The typing is the worker's ``/profiles`` implementation (``stream.service.profiles``); this module
only shapes it: tags (optionally grouped by taxonomy level), model scores, segment, churn band and
the meta fields. An anonymous id (``anon:<id>``) that was merged into a user answers with that
user's profile (``requested_id`` says so).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query

from stream.api.context import ApiContext, api_of
from stream.api.models import BatchGetRequest, BatchGetResponse, ModelScores, Profile
from stream.api.problems import ProblemError
from stream.service.profiles import typed_profile, typed_profiles
from stream.tagging.definitions import TagCatalogue
from stream.tagging.profile import META_FIELDS, MODEL_FIELDS

router = APIRouter(tags=["profiles"])

GroupBy = Literal["level"]
ANON = "anon:"


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
    levels = {t.name: t.level for t in catalogue.tags}
    tags = {
        k: v
        for k, v in typed.items()
        if k not in MODEL_FIELDS and k not in META_FIELDS and not k.startswith("_") and (fields is None or k in fields)
    }
    scores = {k: typed.get(k) for k in MODEL_FIELDS if fields is None or k in fields}
    grouped: dict[str, dict[str, Any]] | None = None
    if group_by == "level":
        grouped = {}
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


def _split(fields: str | None) -> list[str] | None:
    return [f.strip() for f in fields.split(",") if f.strip()] if fields is not None else None


@router.post("/v1/profiles:batchGet", response_model=BatchGetResponse, response_model_exclude_none=True)
async def batch_get(body: BatchGetRequest, api: Annotated[ApiContext, Depends(api_of)]) -> BatchGetResponse:
    """Up to 1,000 profiles in one call, in the order asked; ``missing`` lists ids without one."""
    fields = check_fields(body.fields, api.catalogue)
    found = await typed_profiles(api.reads, body.user_ids, api.catalogue)
    unknown_anon = [uid for uid, p in zip(body.user_ids, found, strict=True) if p is None and uid.startswith(ANON)]
    targets = await api.reads.aliases(unknown_anon)
    followed = dict(zip(targets, await typed_profiles(api.reads, list(targets.values()), api.catalogue), strict=True))
    profiles: list[Profile] = []
    missing: list[str] = []
    for uid, typed in zip(body.user_ids, found, strict=True):
        if typed is not None:
            profiles.append(shape(uid, typed, api.catalogue, fields, body.group_by))
        elif followed.get(uid) is not None:
            profiles.append(shape(targets[uid], followed[uid] or {}, api.catalogue, fields, body.group_by, uid))
        else:
            missing.append(uid)
    return BatchGetResponse(profiles=profiles, missing=missing)


@router.get("/v1/profiles/{user_id:path}", response_model=Profile, response_model_exclude_none=True)
async def get_profile(
    user_id: str,
    api: Annotated[ApiContext, Depends(api_of)],
    group_by: Annotated[GroupBy | None, Query(description="level: tags grouped by taxonomy level")] = None,
    fields: Annotated[str | None, Query(description="comma-separated tags/model fields to return")] = None,
) -> Profile:
    """A user's profile. The id is one percent-encoded path segment (``{`` as ``%7B``, ``/`` as
    ``%2F``, UTF-8 bytes for non-ASCII); ``anon:<id>`` addresses an anonymous visitor."""
    selected = check_fields(_split(fields), api.catalogue)
    typed = await typed_profile(api.reads, user_id, api.catalogue)
    if typed is not None:
        return shape(user_id, typed, api.catalogue, selected, group_by)
    if user_id.startswith(ANON):
        target = (await api.reads.aliases([user_id])).get(user_id)
        if target is not None:
            merged = await typed_profile(api.reads, target, api.catalogue)
            if merged is not None:
                return shape(target, merged, api.catalogue, selected, group_by, user_id)
    raise ProblemError(404, "Unknown user", f"no profile for {user_id!r} (unknown user, expired or erased)")
