"""The hot requests, answered before FastAPI's routing: a page of a customer's timeline,
the routing context of a ringing call, and a connector's append.

These are the requests a contact centre makes all day, and FastAPI's own work for each
(matching the route among the routers, solving its dependencies, validating a dozen
parameters one by one) costs more than a read and a good part of an append. This lane
answers the plain form of the three with the routes' own code for the work and the answer
(``timeline_answer``, ``context_answer``, ``append_events_answer``), so the two lanes
cannot answer differently:

    GET  /v1/customers/{customer_id}/timeline[?limit=&cursor=&channel=&type=&conversation_id=]
    GET  /v1/customers/{customer_id}/context
    POST /v1/events

It takes a request only when every parameter is plainly valid and its API key was checked
within the service's key cache; anything else (``as_of``, ``since``, ``min_position``, a
parameter to refuse, a key not seen for a few seconds, a missing or wrong one) goes on to
the app, which checks and answers it as always. An exception the shared code raises (an
unknown customer, invalid events, a conflict) is answered by the app's own handler for
it, as FastAPI would. The request still passes the service's middleware (latency
metrics, the last-resort 500), under its route's name.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, Final, NamedTuple, get_args
from urllib.parse import parse_qsl

from starlette._utils import is_async_callable
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from interaction_store import views
from interaction_store.api.app import Service
from interaction_store.api.routes.appends import append_events_answer
from interaction_store.api.routes.customers import (
    context_answer,
    position_of,
    timeline_answer,
)
from interaction_store.events import Channel
from interaction_store.keys import ApiKey

__all__ = ["HotLane"]

Answer = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Exception], Any]

_READ: Final = re.compile(r"/v1/customers/([^/]+)/(timeline|context)")
#: The timeline's parameters this lane reads itself, with their largest length.
_TIMELINE_PARAMETERS: Final = {
    "limit": 3,
    "cursor": 1000,
    "channel": 7,
    "type": 100,
    "conversation_id": 250,
}
_CHANNELS: Final = frozenset(get_args(Channel))
_LIMIT: Final = re.compile(r"[1-9][0-9]{0,2}")
_MAX_ID: Final = 250  # as PathId


class _Route(NamedTuple):
    """What the middleware outside reads of a request's route: its path template."""

    path: str


#: The routes this lane stands in for (the metrics name a request by its route).
_TIMELINE: Final = _Route("/v1/customers/{customer_id}/timeline")
_CONTEXT: Final = _Route("/v1/customers/{customer_id}/context")
_APPEND: Final = _Route("/v1/events")


class HotLane:
    """ASGI middleware: the plain timeline, context and append requests, answered without
    routing. ``service`` gives the running ``Service`` (None before the lifespan)."""

    def __init__(self, app: ASGIApp, service: Callable[[], Service | None]) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        svc = self.service() if scope["type"] == "http" else None
        answer = _answer(svc, scope) if svc is not None else None
        if answer is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await answer(request)
        except Exception as exc:
            handler = _handler(scope["app"], exc)
            if handler is None:
                raise
            if is_async_callable(handler):  # as Starlette tells them apart
                response = await handler(request, exc)
            else:
                response = await run_in_threadpool(handler, request, exc)
        await response(scope, receive, send)


def _answer(svc: Service, scope: Scope) -> Answer | None:
    """The answer of a request this lane takes; None for the app."""
    if scope.get("root_path"):
        return None
    if scope["method"] == "POST" and scope["path"] == "/v1/events":
        return _append(svc, scope)
    if scope["method"] == "GET" and (match := _READ.fullmatch(scope["path"])):
        customer_id, endpoint = match.groups()
        if len(customer_id) > _MAX_ID or "\x00" in customer_id:
            return None
        if endpoint == "context":
            return _context(svc, scope, customer_id)
        return _timeline(svc, scope, customer_id)
    return None


def _timeline(svc: Service, scope: Scope, customer_id: str) -> Answer | None:
    key = _checked_key(svc, scope, "timeline:read")
    query = _plain_query(scope["query_string"])
    if key is None or query is None:
        return None
    if any(len(value) > _TIMELINE_PARAMETERS.get(name, -1) for name, value in query.items()):
        return None
    limit = query.get("limit", "50")
    channel = query.get("channel")
    if not _LIMIT.fullmatch(limit) or int(limit) > 500:
        return None
    if channel is not None and channel not in _CHANNELS:
        return None
    scope["route"] = _TIMELINE

    async def timeline(request: Request) -> Response:
        cursor = query.get("cursor")
        read = views.timeline_read(
            customer_id,
            limit=int(limit),
            before=position_of(cursor) if cursor else None,
            channel=channel,
            type=query.get("type"),
            conversation_id=query.get("conversation_id"),
        )
        return await timeline_answer(svc, key, customer_id, read, int(limit))

    return timeline


def _context(svc: Service, scope: Scope, customer_id: str) -> Answer | None:
    key = _checked_key(svc, scope, "timeline:read")
    if key is None or scope["query_string"]:  # min_position, or a parameter to refuse
        return None
    scope["route"] = _CONTEXT
    return lambda request: context_answer(svc, key, customer_id)


def _append(svc: Service, scope: Scope) -> Answer | None:
    key = _checked_key(svc, scope, "events:append")
    if key is None or scope["query_string"]:  # the app refuses any parameter
        return None
    scope["route"] = _APPEND
    return lambda request: append_events_answer(request, svc, key)


def _checked_key(svc: Service, scope: Scope, scope_needed: str) -> ApiKey | None:
    """The request's key, when the service checked it lately and it allows
    ``scope_needed``; None when the app has to look (or refuse)."""
    headers = scope["headers"] = list(scope["headers"])  # as Starlette's Headers do
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            token = credentials.strip()
            if scheme.lower() != "bearer" or not token:
                return None
            key = svc.remembered_key(token)
            return key if isinstance(key, ApiKey) and key.allows(scope_needed) else None
    return None


def _plain_query(query_string: bytes) -> dict[str, str] | None:
    """The query's parameters, each given once with a value and no NUL; None otherwise."""
    if not query_string:
        return {}
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    query = dict(pairs)
    if len(query) != len(pairs) or any(not v or "\x00" in v for v in query.values()):
        return None
    return query


def _handler(app: Any, exc: Exception) -> Handler | None:
    """The app's handler for ``exc``, as FastAPI's exception middleware finds it (by the
    exception's classes, nearest first; 500 and ``Exception`` are the last resort's)."""
    for kind in type(exc).__mro__:
        if kind is Exception:
            return None
        found: Handler | None = app.exception_handlers.get(kind)
        if found is not None:
            return found
    return None
