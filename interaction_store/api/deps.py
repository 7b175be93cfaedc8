"""What the endpoints depend on: the service, the caller's API key and scope, and
read-your-writes.

All of these are ``async``: FastAPI runs a plain ``def`` dependency in a worker thread,
and a hop to a thread for every dependency of every request costs more than most reads.
Only the rare path that must block (a key not seen for a few seconds, a wait for the
views) goes to a thread.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from interaction_store.api.app import Service
from interaction_store.api.problems import Problem
from interaction_store.keys import ApiKey
from interaction_store.projections import all_projections

__all__ = [
    "MAX_POSITION",
    "READ_YOUR_WRITES_WAIT",
    "Administrator",
    "Appender",
    "Auditor",
    "Fresh",
    "PathId",
    "Reader",
    "Svc",
    "id_query",
    "known_query_parameters",
    "require",
    "service",
    "still_allowed",
    "text_query",
    "wait_for_views",
]

#: The largest position or version PostgreSQL can hold (bigint).
MAX_POSITION = 2**63 - 1
#: Text PostgreSQL can store: anything but the NUL character.
_STORABLE = r"^[^\x00]*$"
#: A customer, conversation or stream id in a path.
PathId = Annotated[str, Path(min_length=1, max_length=250, pattern=_STORABLE)]


def id_query(description: str | None = None) -> Any:
    """A required query parameter naming something by id (as ``PathId`` does in paths)."""
    return Query(description=description, min_length=1, max_length=250, pattern=_STORABLE)


def text_query(description: str | None = None, *, max_length: int = 1000) -> Any:
    """A text query parameter PostgreSQL can store (no NUL), at most ``max_length``."""
    return Query(description=description, max_length=max_length, pattern=_STORABLE)


#: How long ``min_position`` may hold a read while the views catch up.
READ_YOUR_WRITES_WAIT = 2.0

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="interaction-store"'}
# Declares the scheme in the OpenAPI document; the checks and the problems are ours.
_bearer = HTTPBearer(auto_error=False, description="An API key: Authorization: Bearer isk_...")


async def known_query_parameters(request: Request) -> None:
    """Refuse query parameters the endpoint does not take (422 naming them): a misspelt
    filter (``chanel=email``) would otherwise be ignored and answer unfiltered data."""
    if not request.query_params:
        return
    route = request.scope.get("route")
    known = _query_parameters(route) if isinstance(route, APIRoute) else None
    if known is None:
        return
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        reason = "not a parameter of this endpoint"
        raise Problem(
            422,
            "Invalid request",
            f"{', '.join(unknown)}: {reason}",
            errors=[{"field": name, "reason": reason} for name in unknown],
        )


def _query_parameters(route: APIRoute) -> frozenset[str]:
    # Worked out once per route and kept on it (routes are not hashable).
    found: frozenset[str] | None = getattr(route, "_interaction_store_query", None)
    if found is None:
        found = _walk_query_parameters(route)
        route._interaction_store_query = found  # type: ignore[attr-defined]
    return found


def _walk_query_parameters(route: APIRoute) -> frozenset[str]:
    names: set[str] = set()
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        names.update(param.alias for param in dependant.query_params)
        pending.extend(dependant.dependencies)
    return frozenset(names)


async def service(request: Request) -> Service:
    found: Service = request.app.state.service
    return found


Svc = Annotated[Service, Depends(service)]


def require(scope: str) -> object:
    """A dependency: the request's API key, which must carry ``scope`` (or ``admin``)."""

    async def check(
        svc: Svc,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ApiKey:
        token = credentials.credentials.strip() if credentials else ""
        if not token:
            raise Problem(
                401,
                "Unauthorized",
                "send an API key: Authorization: Bearer isk_...",
                headers=_CHALLENGE,
            )
        key = await _key_of(svc, token)
        if key is None:
            raise Problem(
                401, "Unauthorized", "the API key is unknown or revoked", headers=_CHALLENGE
            )
        if not key.allows(scope):
            raise Problem(403, "Forbidden", f"this API key lacks the scope {scope}")
        return key

    return Depends(check)


async def still_allowed(svc: Service, request: Request, scope: str) -> bool:
    """Whether the request's key still carries ``scope``, for an answer that lasts (the
    live timeline): asked again as the key cache expires, a revocation ends it."""
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    key = await _key_of(svc, token)
    return key is not None and key.allows(scope)


async def _key_of(svc: Service, token: str) -> ApiKey | None:
    """The key's record, from the service's cache or looked up (None: unknown, revoked)."""
    remembered = svc.remembered_key(token)
    return await run_in_threadpool(svc.verify, token) if remembered is False else remembered


Reader = Annotated[ApiKey, require("timeline:read")]
Auditor = Annotated[ApiKey, require("audit:read")]
Appender = Annotated[ApiKey, require("events:append")]
Administrator = Annotated[ApiKey, require("admin")]


async def _read_your_writes(
    svc: Svc,
    key: Reader,  # first: a request without a key learns nothing of the log, nor waits
    min_position: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_POSITION,
            description="Answer only once the views include this position (an append's"
            " answer); 503 with Retry-After if they do not within 2 s.",
        ),
    ] = None,
) -> None:
    if min_position is not None:
        await run_in_threadpool(wait_for_views, svc, min_position)


Fresh = Depends(_read_your_writes)


#: The views a read may come from: ``min_position`` waits for all of them, since the
#: summary, the context and a conversation read other views than the timeline, and the
#: views can be at different positions (a batch that failed is applied view by view).
_VIEWS = tuple(projection.name for projection in all_projections())


def wait_for_views(svc: Service, position: int) -> None:
    """Read-your-writes: wait (bounded) until every view has applied ``position``."""
    deadline = time.monotonic() + READ_YOUR_WRITES_WAIT
    while True:
        with svc.connection() as conn:
            row = conn.execute(
                "SELECT %(p)s <= coalesce(pg_sequence_last_value("
                "           pg_get_serial_sequence('events', 'position')), 0),"
                " (SELECT count(*) FROM projection_checkpoints AS c, events AS e"
                "   WHERE e.position = %(p)s AND c.projection = ANY (%(views)s)"
                "     AND (c.transaction_id, c.position) >= (e.transaction_id, e.position))"
                " = cardinality(%(views)s)",
                {"p": position, "views": list(_VIEWS)},
            ).fetchone()
        assert row is not None
        given_out, applied = row
        if applied:
            return
        if not given_out:  # waiting could not help
            reason = "no append has been given this position"
            raise Problem(
                422,
                "Invalid request",
                f"min_position: {reason}",
                errors=[{"field": "min_position", "reason": reason}],
            )
        if time.monotonic() >= deadline:
            raise Problem(
                503,
                "Not yet",
                f"the views have not reached position {position} yet; retry shortly",
                kind="views-behind",
                headers={"Retry-After": "1"},
            )
        time.sleep(0.02)
