"""RFC 9457 problem details: every error the API answers, in one shape.

``{"type", "title", "status", "detail", ...}`` with ``application/problem+json``. Nothing
internal (tracebacks, SQL, keys) ever goes into one.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from interaction_store.exceptions import (
    ConcurrencyError,
    EventValidationError,
    IdempotencyConflict,
)

__all__ = ["JSON", "Problem", "install_problem_handlers", "problem_response"]

log = logging.getLogger(__name__)

_TYPES = "https://interaction-store.dev/problems/"


class JSON(JSONResponse):
    """A JSON response rendered by orjson (datetimes, UUIDs and dataclasses natively)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z)


class Problem(Exception):
    """Raise to answer with a problem: ``status``, a short ``title``, a ``detail`` for
    this occurrence, and any extra members."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.kind = kind or title.lower().replace(" ", "-")
        self.headers = headers or {}
        self.extra = extra


def problem_response(problem: Problem) -> JSON:
    body: dict[str, Any] = {
        "type": _TYPES + problem.kind,
        "title": problem.title,
        "status": problem.status,
    }
    if problem.detail:
        body["detail"] = problem.detail
    body.update(problem.extra)
    return JSON(
        body,
        status_code=problem.status,
        headers=problem.headers,
        media_type="application/problem+json",
    )


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "(request)"


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSON:
        return problem_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSON:
        title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "Error")
        detail = exc.detail if isinstance(exc.detail, str) else None
        # Keep the exception's headers: a 405 must say which methods are allowed (Allow).
        headers = dict(exc.headers) if exc.headers else None
        return problem_response(Problem(exc.status_code, title, detail, headers=headers))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSON:
        errors = [
            {"field": _location(tuple(e.get("loc", ()))), "reason": e.get("msg", "invalid")}
            for e in exc.errors()
        ]
        return problem_response(
            Problem(
                422,
                "Invalid request",
                "; ".join(f"{e['field']}: {e['reason']}" for e in errors[:5]),
                errors=errors,
            )
        )

    @app.exception_handler(EventValidationError)
    async def _invalid_events(request: Request, exc: EventValidationError) -> JSON:
        return problem_response(
            Problem(
                422,
                "Invalid events",
                exc.message,
                errors=[
                    {"index": e.index, "field": e.location, "reason": e.reason} for e in exc.errors
                ],
            )
        )

    @app.exception_handler(ConcurrencyError)
    async def _conflict(request: Request, exc: ConcurrencyError) -> JSON:
        extra: dict[str, Any] = (
            {"stream_id": exc.stream_id, "expected": exc.expected, "actual": exc.actual}
            if exc.stream_id
            else {}
        )
        return problem_response(
            Problem(409, "Version conflict", exc.message, kind="version-conflict", **extra)
        )

    @app.exception_handler(IdempotencyConflict)
    async def _idempotency(request: Request, exc: IdempotencyConflict) -> JSON:
        return problem_response(
            Problem(409, "Event id reused", exc.message, event_id=str(exc.event_id))
        )

    app.add_middleware(_Unexpected)


class _Unexpected:
    """The last resort: an exception no handler took answers a 500 problem, and the log
    says where it was raised but not its message, which can quote what a customer wrote.
    (Starlette's own last resort re-raises it to the server, which logs it whole.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            log.error(
                "unhandled %s on %s %s, raised at:\n%s",
                type(exc).__name__,
                scope.get("method"),
                scope.get("path"),
                "".join(traceback.format_tb(exc.__traceback__)).rstrip(),
            )
            if not started:  # else the answer is under way: it ends where it stopped
                answer = Problem(500, "Internal error", "the server failed; the error is logged")
                await problem_response(answer)(scope, receive, send)
