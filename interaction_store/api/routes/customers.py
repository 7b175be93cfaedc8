"""What agent tools read about a customer: lookup, the summary, the routing context and
the cross-channel timeline.

Lookup, context and timeline are the reads made while a call rings, so they run on the
async pool, on the event loop, with one query each; the summary takes several queries
and runs in a worker thread.
"""

from __future__ import annotations

import base64
import contextlib
from typing import Annotated, Any, TypeVar

import psycopg
from fastapi import APIRouter, Query
from pydantic import AwareDatetime
from starlette.concurrency import run_in_threadpool

from interaction_store import views
from interaction_store.api.app import Service
from interaction_store.api.deps import Fresh, PathId, Reader, Svc, text_query
from interaction_store.api.models import (
    ContextAnswer,
    CustomerAnswer,
    LookupAnswer,
    TimelinePage,
    problems,
)
from interaction_store.api.problems import JSON, Problem
from interaction_store.asof import as_of, parse_as_of, recorded_at
from interaction_store.keys import ApiKey

__all__ = [
    "context_answer",
    "conversation_json",
    "item_json",
    "not_found",
    "position_of",
    "router",
    "timeline_answer",
]

router = APIRouter(tags=["customers"], dependencies=[Fresh])
T = TypeVar("T")

_READ_PROBLEMS = problems(401, 403, 404, 422, 503)


async def _read(svc: Service, read: views.Read[T]) -> T:
    async with svc.reads.connection() as conn:
        return await read.run_async(conn)


def not_found(customer_id: str) -> Problem:
    return Problem(404, "Not found", f"no customer {customer_id}")


#: ``as_of``: the views as they stood at a position of the log, or at a time.
AsOf = Annotated[
    str | None,
    Query(
        description="a position of the log (digits), or a date-time with its UTC offset:"
        " the view as it stood then, with the identity graph of then",
        pattern=r"^([0-9]{1,18}|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}"
        r"(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:[0-9]{2}))$",
    ),
]


def _as_of_position(conn: psycopg.Connection[Any], text: str) -> int:
    """The position ``as_of`` names; a Problem (422) when it names none."""
    try:
        return parse_as_of(conn, text)
    except ValueError as exc:
        raise Problem(
            422, "Invalid request", f"as_of: {exc}", errors=[{"field": "as_of", "reason": str(exc)}]
        ) from None


@router.get("/v1/customers/lookup", response_model=LookupAnswer, responses=_READ_PROBLEMS)
async def lookup(
    svc: Svc,
    key: Reader,
    identity: Annotated[str, text_query("kind:value, e.g. email:alice@example.com")],
) -> JSON:
    """The customer of an identity (normalised like appends; merges followed)."""
    try:
        read = views.lookup_read(identity, phone_region=svc.settings.default_phone_region)
    except ValueError as exc:
        raise Problem(
            422, "Invalid request", str(exc), errors=[{"field": "identity", "reason": str(exc)}]
        ) from None
    customer_id = await _read(svc, read)
    if customer_id is None:
        raise Problem(404, "Not found", f"no customer has the identity {identity}")
    return JSON({"identity": identity, "customer_id": customer_id})


@router.get("/v1/customers/{customer_id}", response_model=CustomerAnswer, responses=_READ_PROBLEMS)
async def customer_summary(svc: Svc, key: Reader, customer_id: PathId, as_of: AsOf = None) -> JSON:
    """The omniscient summary: profile, identities, channels, open conversations,
    preferred agent and priority. A merged customer's id answers for its target. With
    ``as_of``, the summary as it stood then."""
    summary = await run_in_threadpool(_summary, svc, customer_id, as_of)
    svc.accessed(key, summary["customer_id"], "summary")
    return JSON(summary)


def _summary(svc: Service, customer_id: str, as_of_text: str | None = None) -> dict[str, Any]:
    with svc.connection() as conn:
        past: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        now = None  # service levels are judged at the moment read
        if as_of_text is not None:
            position = _as_of_position(conn, as_of_text)
            past = as_of(conn, position, customer_id, sealer=svc.store.sealer)
            now = recorded_at(conn, position)
        with past:
            found = views.find_customer_read(customer_id).run(conn)
            if found is None:
                raise not_found(customer_id)
            s = views.customer(conn, found, service_levels=svc.service_levels, now=now)
    p = s.profile
    return {
        "customer_id": s.customer_id,
        "aliases": s.aliases,
        "profile": None
        if p is None
        else {
            "name": p.name,
            "tier": p.tier,
            "account_value": p.account_value,
            "churn_risk": p.churn_risk,
            "registered_at": p.registered_at,
            "erased_at": p.erased_at,
        },
        "identities": [
            {
                "kind": i.kind,
                "value": i.value,
                "confidence": i.confidence,
                "reason": i.reason,
                "source": i.source,
            }
            for i in s.identities
        ],
        "channels": {
            c.channel: {
                "count": c.interactions,
                "inbound": c.inbound,
                "outbound": c.outbound,
                "last_contact_at": c.last_contact_at,
            }
            for c in s.channels
        },
        "interactions": s.interactions,
        "last_contact_at": s.last_contact_at,
        "open_conversations": [conversation_json(c) for c in s.open_conversations],
        "preferred_agent": s.preferred_agent,
        "priority": s.priority,
    }


def conversation_json(c: views.ConversationSummary) -> dict[str, Any]:
    return {
        "conversation_id": c.conversation_id,
        "case": c.case,
        "customer_id": c.customer_id,
        "status": c.status,
        "channels": c.channels,
        "interactions": c.interactions,
        "opened_at": c.opened_at,
        "last_activity_at": c.last_activity_at,
        "resolved_at": c.resolved_at,
        "awaiting_since": c.awaiting_since,
        "response_due_at": c.response_due_at,
        "first_response_due_at": c.first_response_due_at,
        "first_response_at": c.first_response_at,
        "breached": c.breached,
        "follow_ups": [
            {"position": f.position, "channel": f.channel, "conversation_id": f.conversation_id}
            for f in c.follow_ups
        ],
        "follows_up": [f.waiting_conversation_id for f in c.follows_up],
    }


@router.get(
    "/v1/customers/{customer_id}/context", response_model=ContextAnswer, responses=_READ_PROBLEMS
)
async def customer_context(svc: Svc, key: Reader, customer_id: PathId) -> JSON:
    """The small routing context for a call that is ringing now (one query)."""
    return await context_answer(svc, key, customer_id)


async def context_answer(svc: Service, key: ApiKey, customer_id: str) -> JSON:
    """The context of ``customer_id`` read for ``key``, in its turn (``context_slots``):
    the route's answer, and the hot lane's (see ``api.hot``)."""
    async with svc.context_slots:
        found = await _read(svc, views.context_read(customer_id, service_levels=svc.service_levels))
    if found is None:
        raise not_found(customer_id)
    svc.accessed(key, found["customer_id"], "context")
    return JSON(found)


def _cursor(position: int) -> str:
    return base64.urlsafe_b64encode(f"p{position}".encode()).decode().rstrip("=")


def position_of(cursor: str) -> int:
    """The position a ``next_cursor`` stands for (a 422 problem for any other text)."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith("p"):
            raise ValueError(text)
        return int(text[1:])
    except ValueError:
        raise Problem(
            422,
            "Invalid request",
            "cursor: not a cursor this API gave out",
            errors=[{"field": "cursor", "reason": "not a cursor this API gave out"}],
        ) from None


@router.get(
    "/v1/customers/{customer_id}/timeline", response_model=TimelinePage, responses=_READ_PROBLEMS
)
async def customer_timeline(
    svc: Svc,
    key: Reader,
    customer_id: PathId,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, text_query("next_cursor of the previous page")] = None,
    channel: Annotated[str | None, Query(pattern="^(email|voice|chat|sms|twitter)$")] = None,
    type: Annotated[str | None, text_query(max_length=100)] = None,
    conversation_id: Annotated[str | None, text_query(max_length=250)] = None,
    since: Annotated[AwareDatetime | None, Query(description="with its UTC offset")] = None,
    until: Annotated[AwareDatetime | None, Query(description="with its UTC offset")] = None,
    as_of: AsOf = None,
) -> JSON:
    """The customer's interactions on every channel, newest first. With ``as_of``, the
    timeline as it stood then (whose customer each interaction was, then)."""
    read = views.timeline_read(
        customer_id,
        limit=limit,
        before=position_of(cursor) if cursor else None,
        channel=channel,
        type=type,
        conversation_id=conversation_id,
        since=since,
        until=until,
    )
    if as_of is None:
        return await timeline_answer(svc, key, customer_id, read, limit)
    items, found = await run_in_threadpool(_timeline_then, svc, customer_id, read, as_of)
    return _timeline_page(svc, key, customer_id, items, found, limit)


async def timeline_answer(
    svc: Service,
    key: ApiKey,
    customer_id: str,
    read: views.Read[list[views.TimelineItem]],
    limit: int,
) -> JSON:
    """The page ``read`` gives of ``customer_id``'s timeline now, read for ``key`` (the
    route's answer, and the hot lane's: see ``api.hot``)."""
    items = await _read(svc, read)
    # One query when there are items; only an empty page asks whether the customer is.
    if items:
        found: str | None = items[0].customer_id
    else:
        found = await _read(svc, views.find_customer_read(customer_id))
    return _timeline_page(svc, key, customer_id, items, found, limit)


def _timeline_page(
    svc: Service,
    key: ApiKey,
    customer_id: str,
    items: list[views.TimelineItem],
    found: str | None,
    limit: int,
) -> JSON:
    if found is None:
        raise not_found(customer_id)
    svc.accessed(key, found, "timeline")
    return JSON(
        {
            "customer_id": found,
            "items": [item_json(i) for i in items],
            "next_cursor": _cursor(items[-1].position) if len(items) == limit else None,
        }
    )


def _timeline_then(
    svc: Service, customer_id: str, read: views.Read[list[views.TimelineItem]], text: str
) -> tuple[list[views.TimelineItem], str | None]:
    with (
        svc.connection() as conn,
        as_of(conn, _as_of_position(conn, text), customer_id, sealer=svc.store.sealer),
    ):
        return read.run(conn), views.find_customer_read(customer_id).run(conn)


def item_json(i: views.TimelineItem) -> dict[str, Any]:
    return {
        "position": i.position,
        "event_id": i.event_id,
        "occurred_at": i.occurred_at,
        "channel": i.channel,
        "direction": i.direction,
        "type": i.type,
        "conversation_id": i.conversation_id,
        "contact": i.contact,
        "agent_id": i.agent_id,
        "subject": i.subject,
        "snippet": i.snippet,
    }
