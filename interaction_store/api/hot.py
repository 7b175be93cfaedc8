"""The hot reads, answered before FastAPI's routing: a page of a customer's timeline and
the routing context of a ringing call.

Agent tools read these all day, and FastAPI's own work for such a request (matching the
route, solving its dependencies, validating a dozen parameters one by one) costs more
than the read itself. This lane answers the plain form of the two requests with the
routes' own code for the read and the answer (``timeline_answer``, ``context_answer``),
so the two lanes cannot answer differently:

    GET /v1/customers/{customer_id}/timeline[?limit=&cursor=&channel=&type=&conversation_id=]
    GET /v1/customers/{customer_id}/context

It takes a request only when every parameter is plainly valid and its API key was checked
within the service's key cache; anything else (``as_of``, ``since``, ``min_position``, a
parameter to refuse, a key not seen for a few seconds, a missing or wrong one) goes on to
the app, which checks and answers it as always. A problem the shared code raises (an
unknown customer, a cursor this API never gave) is answered as the app's handler would.
The request still passes the service's middleware (latency metrics, the last-resort 500),
under its route's name.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Final, NamedTuple
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from interaction_store import views
from interaction_store.api.app import Service
from interaction_store.api.problems import JSON, Problem, problem_response
from interaction_store.api.routes.customers import (
    context_answer,
    position_of,
    timeline_answer,
)
from interaction_store.keys import ApiKey

__all__ = ["HotReads"]

_PATH: Final = re.compile(r"/v1/customers/([^/]+)/(timeline|context)")
#: The timeline's parameters this lane reads itself, with their largest length.
_TIMELINE_PARAMETERS: Final = {
    "limit": 3,
    "cursor": 1000,
    "channel": 7,
    "type": 100,
    "conversation_id": 250,
}
_CHANNELS: Final = frozenset({"email", "voice", "chat", "sms", "twitter"})
_LIMIT: Final = re.compile(r"[1-9][0-9]{0,2}")
_MAX_ID: Final = 250  # as PathId


class _Route(NamedTuple):
    """What the middleware outside reads of a request's route: its path template."""

    path: str


#: The routes this lane stands in for, by endpoint (the metrics name requests by them).
_ROUTES: Final = {
    endpoint: _Route(f"/v1/customers/{{customer_id}}/{endpoint}")
    for endpoint in ("timeline", "context")
}


class HotReads:
    """ASGI middleware: the plain timeline and context requests, answered without routing.

    ``service`` gives the running ``Service`` (None before the lifespan has started)."""

    def __init__(self, app: ASGIApp, service: Callable[[], Service | None]) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = self._answer(scope) if scope["type"] == "http" else None
        if answer is None:
            await self.app(scope, receive, send)
            return
        try:
            response = await answer()
        except Problem as problem:
            response = problem_response(problem)
        await response(scope, receive, send)

    def _answer(self, scope: Scope) -> Callable[[], Awaitable[JSON]] | None:
        """The answer of a request this lane takes, to be awaited; None for the app."""
        if scope["method"] != "GET" or scope.get("root_path"):
            return None
        match = _PATH.fullmatch(scope["path"])
        if match is None:
            return None
        customer_id, endpoint = match.groups()
        svc = self.service()
        if svc is None or len(customer_id) > _MAX_ID or "\x00" in customer_id:
            return None
        key = _checked_key(svc, scope, "timeline:read")
        if key is None:
            return None
        query = _plain_query(scope["query_string"])
        if query is None:
            return None
        if endpoint == "context":
            if query:  # min_position, or a parameter to refuse
                return None
            scope["route"] = _ROUTES["context"]
            return lambda: context_answer(svc, key, customer_id)
        if any(len(value) > _TIMELINE_PARAMETERS.get(name, -1) for name, value in query.items()):
            return None
        limit = query.get("limit", "50")
        channel = query.get("channel")
        if not _LIMIT.fullmatch(limit) or int(limit) > 500:
            return None
        if channel is not None and channel not in _CHANNELS:
            return None
        scope["route"] = _ROUTES["timeline"]

        async def timeline() -> JSON:
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


def _checked_key(svc: Service, scope: Scope, scope_needed: str) -> ApiKey | None:
    """The request's key, when the service checked it lately and it allows
    ``scope_needed``; None when the app has to look (or refuse)."""
    for name, value in scope["headers"]:
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
