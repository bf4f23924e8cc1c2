"""``/v1/audiences``: every audience with its size, one audience (or an expression) with a page of
members, and its CSV export.

An audience is a tag value (one set per state shard, ``P:v2:{sN}:aud:TAG:VALUE``, written by the
workers in the same atomic write as the profile). Its size is the shards' ``SCARD`` summed. An
expression combines the path's audience with query terms ``tag:value``::

    (path OR any ``or``) AND every ``and`` AND NOT any ``not``

Members are produced by scanning *sources* (the smallest required set, or each OR'ed set) and
checking each candidate against the other sets with ``SMISMEMBER`` in one round trip per page;
a member of several OR'ed sets is produced once (by the first). The size of an expression is
``SCARD`` (one set), else ``SINTERCARD`` terms by inclusion-exclusion (``inclusion_terms``; with
more than ``MAX_INCLUSION_TERMS`` OR'ed and NOT'ed sets, a count over the members, given with the
first page only): its cost grows with the sets involved, not with the database.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from stream.api.context import ApiContext, api_of
from stream.api.models import AudienceList, AudienceMembers, AudienceSize
from stream.api.problems import ProblemError
from stream.api.profiles import check_fields, comma_list
from stream.core.pipeline import MODEL_AUDIENCE_TAGS
from stream.storage.reads import Pair, Reads
from stream.tagging.definitions import TagCatalogue
from stream.tagging.profile import field_types, typed_value

router = APIRouter(tags=["audiences"])

MAX_PAGE = 1000
EXPORT_PAGE = 1000

# the expression's query terms, shared by the members and the export endpoints
AndTerms = Annotated[list[str] | None, Query(alias="and", description="tag:value (repeatable)")]
OrTerms = Annotated[list[str] | None, Query(alias="or", description="tag:value (repeatable)")]
NotTerms = Annotated[list[str] | None, Query(alias="not", description="tag:value (repeatable)")]


@dataclass(frozen=True)
class Expression:
    """``(any_of[0] OR any_of[1] ...) AND all_of... AND NOT none_of...``"""

    any_of: tuple[Pair, ...]
    all_of: tuple[Pair, ...] = ()
    none_of: tuple[Pair, ...] = ()

    def text(self) -> str:
        def term(p: Pair) -> str:
            return f"{p[0]}:{p[1]}"

        head = " OR ".join(term(p) for p in self.any_of)
        parts = [f"({head})" if len(self.any_of) > 1 and (self.all_of or self.none_of) else head]
        parts += [term(p) for p in self.all_of]
        parts += [f"NOT {term(p)}" for p in self.none_of]
        return " AND ".join(parts)

    @property
    def single(self) -> bool:
        return len(self.any_of) == 1 and not self.all_of and not self.none_of


def parse_term(text: str, what: str, catalogue: TagCatalogue) -> Pair:
    tag, sep, value = text.partition(":")
    if not sep or not tag:
        raise ProblemError(422, "Invalid term", f"{what}={text!r}: expected tag:value, e.g. churn_band:high")
    return check_audience(tag, value, catalogue)


def check_tag(tag: str, catalogue: TagCatalogue) -> None:
    definition = catalogue.domain(tag)
    if tag not in MODEL_AUDIENCE_TAGS and (definition is None or not definition.audience):
        raise ProblemError(404, "Unknown audience", f"{tag!r} is no audience tag (see GET /v1/audiences)")


def check_audience(tag: str, value: str, catalogue: TagCatalogue) -> Pair:
    """(tag, value) when ``tag`` is an audience tag and ``value`` in its domain, else a 404 naming it."""
    check_tag(tag, catalogue)
    definition = catalogue.domain(tag)
    if definition is not None and definition.values is not None and value not in definition.values:
        raise ProblemError(
            404, "Unknown audience", f"{value!r} is not a value of {tag} ({', '.join(definition.values)})"
        )
    return (tag, value)


def expression_of(
    tag: str, value: str, and_: Sequence[str], or_: Sequence[str], not_: Sequence[str], catalogue: TagCatalogue
) -> Expression:
    base = check_audience(tag, value, catalogue)
    return Expression(
        (base, *(parse_term(t, "or", catalogue) for t in or_)),
        tuple(parse_term(t, "and", catalogue) for t in and_),
        tuple(parse_term(t, "not", catalogue) for t in not_),
    )


@dataclass(frozen=True)
class Plan:
    """How to enumerate an expression: scan ``sources`` in order; keep a candidate of source i that
    is in every ``require`` set, in no ``exclude`` set and in no earlier source. ``pivot``: which
    required set is scanned (AND only), kept in the cursor so every page scans the same one."""

    sources: tuple[Pair, ...]
    require: tuple[Pair, ...]
    exclude: tuple[Pair, ...]
    pivot: int = 0


async def plan(reads: Reads, expr: Expression, pivot: int | None = None) -> Plan:
    """With one OR'ed set and AND terms, scan the smallest required set (or ``pivot``)."""
    if len(expr.any_of) == 1 and expr.all_of:
        required = (expr.any_of[0], *expr.all_of)
        if pivot is None or not 0 <= pivot < len(required):
            sizes = await reads.audience_sizes(required)
            pivot = min(range(len(required)), key=lambda i: sizes[i])
        rest = tuple(p for i, p in enumerate(required) if i != pivot)
        return Plan((required[pivot],), rest, expr.none_of, pivot)
    return Plan(expr.any_of, expr.all_of, expr.none_of)


async def keep(reads: Reads, p: Plan, source: int, candidates: list[str]) -> list[str]:
    """The candidates of ``p.sources[source]`` that belong to the expression (one round trip)."""
    checks = (*p.require, *p.exclude, *p.sources[:source])
    if not candidates or not checks:
        return candidates
    flags = await reads.memberships(candidates, checks)
    n_req = len(p.require)
    return [
        uid
        for i, uid in enumerate(candidates)
        if all(flags[j][i] for j in range(n_req)) and not any(flags[j][i] for j in range(n_req, len(checks)))
    ]


@dataclass(frozen=True)
class Cursor:
    """Where a page starts: the pivot of the plan, the source, its SSCAN cursor, and how many
    members of that SSCAN step earlier pages returned."""

    pivot: int = 0
    source: int = 0
    scan: int = 0
    skip: int = 0

    def encode(self) -> str:
        return f"{self.pivot}.{self.source}.{self.scan}.{self.skip}"

    @classmethod
    def decode(cls, text: str | None) -> Cursor | None:
        if not text:
            return None
        try:
            pivot, source, scan, skip = (int(x) for x in text.split("."))
        except ValueError:
            raise ProblemError(400, "Invalid cursor", f"cursor {text!r}: pass next_cursor back unchanged") from None
        if min(pivot, source, scan, skip) < 0:
            raise ProblemError(400, "Invalid cursor", f"cursor {text!r}: pass next_cursor back unchanged")
        return cls(pivot, source, scan, skip)


async def page(reads: Reads, p: Plan, at: Cursor | None, limit: int) -> tuple[list[str], Cursor | None]:
    """Up to ``limit`` members from ``at``; (members, next cursor or None at the end).

    A step of SSCAN that gave more than the page holds is repeated from the same SSCAN cursor and
    the part already returned skipped (SSCAN answers a step alike while the set is not resized)."""
    at = at or Cursor(p.pivot)
    if at.source >= len(p.sources):
        raise ProblemError(400, "Invalid cursor", "the cursor does not belong to this audience")
    source, scan, skip = at.source, at.scan, at.skip
    out: list[str] = []
    while source < len(p.sources):
        nxt, candidates = await reads.scan_audience(p.sources[source], scan, max(limit, 100))
        members = (await keep(reads, p, source, candidates))[skip:]
        room = limit - len(out)
        if len(members) > room:
            out.extend(members[:room])
            return out, Cursor(p.pivot, source, scan, skip + room)
        out.extend(members)
        skip = 0
        source, scan = (source + 1, 0) if nxt == 0 else (source, nxt)
        if len(out) == limit:
            break
    return out, (Cursor(p.pivot, source, scan, 0) if source < len(p.sources) else None)


async def members_of(reads: Reads, p: Plan, batch: int = EXPORT_PAGE) -> AsyncIterator[list[str]]:
    cursor: Cursor | None = None
    while True:
        members, cursor = await page(reads, p, cursor, batch)
        if members:
            yield members
        if cursor is None:
            return


MAX_INCLUSION_TERMS = 8  # OR'ed + NOT'ed sets up to which a size is 2^n - 1 SINTERCARDs


def cheap_size(expr: Expression) -> bool:
    """Whether the size is a few server-side commands (``SCARD``, ``SINTERCARD``) rather than a
    count of members in this process."""
    return len(expr.any_of) + len(expr.none_of) <= MAX_INCLUSION_TERMS


def inclusion_terms(expr: Expression) -> list[tuple[int, tuple[Pair, ...]]]:
    """The size of ``(A1 OR .. Ak) AND R AND NOT (N1 OR .. Nm)`` by inclusion-exclusion:
    sum over non-empty T of the A's and any S of the N's of (-1)^(|T|+1+|S|) |T and R and S|,
    as (sign, sets to intersect)."""
    terms = []
    for t in range(1, 1 << len(expr.any_of)):
        chosen = tuple(p for i, p in enumerate(expr.any_of) if t >> i & 1)
        for n in range(1 << len(expr.none_of)):
            excluded = tuple(p for i, p in enumerate(expr.none_of) if n >> i & 1)
            sign = -1 if (len(chosen) + 1 + len(excluded)) % 2 else 1
            terms.append((sign, (*chosen, *expr.all_of, *excluded)))
    return terms


async def size_of(reads: Reads, expr: Expression) -> int:
    """The expression's size: ``SCARD`` for one set, else ``SINTERCARD`` terms (one round trip)
    up to ``MAX_INCLUSION_TERMS`` OR'ed and NOT'ed sets, else a count over the members."""
    if expr.single:
        return await reads.audience_size(expr.any_of[0])
    if cheap_size(expr):
        terms = inclusion_terms(expr)
        sizes = await reads.intersection_sizes([sets for _, sets in terms])
        return sum(sign * n for (sign, _), n in zip(terms, sizes, strict=True))
    p = await plan(reads, expr)
    total = 0
    async for members in members_of(reads, p):
        total += len(members)
    return total


@router.get("/v1/audiences", response_model=AudienceList, response_model_exclude_none=True)
async def list_audiences(
    api: Annotated[ApiContext, Depends(api_of)],
    tag: Annotated[str | None, Query(description="only this tag's values")] = None,
) -> AudienceList:
    """Every audience (the catalogue's value domains and every audience set found) with its size."""
    if tag is not None:
        check_tag(tag, api.catalogue)
    pairs = [p for p in api.refresher.pairs if tag is None or p[0] == tag]
    sizes = await api.reads.audience_sizes(pairs)
    levels = {t.name: t.level for t in api.catalogue.tags}
    latest = api.refresher.latest
    return AudienceList(
        audiences=[
            AudienceSize(tag=t, value=v, size=n, level=levels.get(t, "model" if t in MODEL_AUDIENCE_TAGS else None))
            for (t, v), n in zip(pairs, sizes, strict=True)
        ],
        total_users=latest.aggregate.users if latest is not None else None,
    )


def _csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _cell(kind: str, raw: str | None) -> str:
    if raw is None:
        return ""
    value = typed_value(kind, raw)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


@router.get(
    "/v1/audiences/{tag}/{value:path}:export",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "user_id and the selected fields, one row a member"}},
)
async def export_audience(
    tag: str,
    value: str,
    api: Annotated[ApiContext, Depends(api_of)],
    and_: AndTerms = None,
    or_: OrTerms = None,
    not_: NotTerms = None,
    fields: Annotated[str | None, Query(description="comma-separated profile fields to add as columns")] = None,
) -> StreamingResponse:
    """The audience's members as CSV (``user_id`` and the chosen profile fields), streamed in pages."""
    expr = expression_of(tag, value, and_ or [], or_ or [], not_ or [], api.catalogue)
    selected = comma_list(fields) or []
    check_fields(selected, api.catalogue)
    types = field_types(api.catalogue)
    p = await plan(api.reads, expr)

    kinds = [types.get(f, "str") for f in selected]

    async def rows() -> AsyncIterator[str]:
        yield _csv([["user_id", *selected]])
        async for members in members_of(api.reads, p):
            if not selected:
                yield _csv([[uid] for uid in members])
                continue
            values = await api.reads.profile_fields(members, selected)
            yield _csv(
                [
                    [uid, *(_cell(kind, v) for kind, v in zip(kinds, row, strict=True))]
                    for uid, row in zip(members, values, strict=True)
                ]
            )

    # header values are Latin-1: an ASCII fallback name, and the real one per RFC 6266 / 8187
    name = f"{tag}-{value}.csv"
    fallback = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    disposition = f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
    return StreamingResponse(rows(), media_type="text/csv", headers={"Content-Disposition": disposition})


@router.get("/v1/audiences/{tag}/{value:path}", response_model=AudienceMembers, response_model_exclude_none=True)
async def get_audience(
    tag: str,
    value: str,
    api: Annotated[ApiContext, Depends(api_of)],
    and_: AndTerms = None,
    or_: OrTerms = None,
    not_: NotTerms = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=0, le=MAX_PAGE, description="members per page (0: size only)")] = 100,
) -> AudienceMembers:
    """One audience, or ``(path OR or...) AND and... AND NOT not...``: its size and a page of members."""
    expr = expression_of(tag, value, and_ or [], or_ or [], not_ or [], api.catalogue)
    # a size that needs a count is given with the first page only: paging stays linear
    size = await size_of(api.reads, expr) if cursor is None or cheap_size(expr) else None
    members: list[str] = []
    nxt: str | None = None
    if limit:
        at = Cursor.decode(cursor)
        found, after = await page(api.reads, await plan(api.reads, expr, at.pivot if at else None), at, limit)
        members, nxt = found, after.encode() if after is not None else None
    return AudienceMembers(expression=expr.text(), size=size, members=members, next_cursor=nxt)
