"""Errors as RFC 9457 problem details (``application/problem+json``), for every failure: a
``ProblemError`` raised by an endpoint, an unknown path or method, an invalid request, Redis out of
reach, and a bug (500, logged with its traceback, none sent)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException

from stream.api.models import Problem

__all__ = ["COMMON", "Problem", "ProblemError", "install"]

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
COMMON = ((401, "missing or wrong bearer token"), (422, "invalid request"), (503, "Redis unreachable"))


class ProblemError(Exception):
    """Raise in an endpoint to answer with a problem document."""

    def __init__(
        self, status: int, title: str, detail: str | None = None, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.headers = dict(headers or {})


def problem_response(
    request: Request,
    status: int,
    detail: str | None,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    body = Problem(
        title=title or HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=request.url.path,
        errors=errors,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=status, media_type=MEDIA_TYPE, headers=dict(headers or {})
    )


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": ".".join(str(p) for p in e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type"))}
        for e in exc.errors()
    ]


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem document."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(request, exc.status, exc.detail, exc.title, exc.headers)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else None
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no endpoint {request.url.path} (see /docs)"
        return problem_response(request, exc.status_code, detail, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc)
        first = errors[0] if errors else {"loc": "?", "msg": "invalid"}
        return problem_response(request, 422, f"{first['loc']}: {first['msg']}", errors=errors)

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _redis(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(request, 503, f"Redis unreachable: {exc}", headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error answering %s %s", request.method, request.url.path)
        return problem_response(request, 500, f"internal error: {type(exc).__name__} (logged)")
