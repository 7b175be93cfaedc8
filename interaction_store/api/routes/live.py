"""The live timeline: server-sent events of a customer's new interactions, resumable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from interaction_store import views
from interaction_store.api.app import Service
from interaction_store.api.deps import MAX_POSITION, PathId, Reader, Svc, still_allowed
from interaction_store.api.models import problems
from interaction_store.api.problems import Problem
from interaction_store.api.routes.customers import item_json, not_found
from interaction_store.store import Checkpoint

__all__ = ["router"]

router = APIRouter(tags=["customers"])

#: How often a live timeline looks for new items, and how often it sends a keep-alive.
LIVE_POLL_SECONDS = 0.2
LIVE_KEEPALIVE_SECONDS = 15.0


@router.get(
    "/v1/customers/{customer_id}/timeline/live",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "An endless event stream."},
        **problems(401, 403, 404, 422),
    },
)
async def customer_timeline_live(
    request: Request, svc: Svc, key: Reader, customer_id: PathId
) -> StreamingResponse:
    """Server-sent events: each new interaction of the customer as it reaches the
    timeline, its position as the event id. Reconnect with ``Last-Event-ID`` to get
    exactly what was missed. Items moved in later by a link or merge, or applied late
    by a dead letter's retry, are not replayed: they are in the timeline's pages. Each
    connection is one read of the timeline in the access log; a revoked key ends it."""
    found = await run_in_threadpool(_customer, svc, customer_id)
    last_id = request.headers.get("last-event-id")
    if last_id is not None and not _a_position(last_id):
        raise Problem(422, "Invalid request", "Last-Event-ID: the position of an event")
    start = await run_in_threadpool(_live_start, svc, int(last_id) if last_id else None)
    svc.accessed(key, found, "timeline")

    async def stream() -> AsyncIterator[bytes]:
        after, quiet = start, 0.0
        recheck = time.monotonic() + svc.key_cache_seconds
        yield b": live timeline of " + found.encode() + b"\n\n"
        while not await request.is_disconnected():
            if time.monotonic() >= recheck:  # a key revoked meanwhile ends the stream
                if not await still_allowed(svc, request, "timeline:read"):
                    yield b": the API key was revoked\n\n"
                    return
                recheck = time.monotonic() + svc.key_cache_seconds
            items, after = await run_in_threadpool(_live_items, svc, found, after)
            for item in items:
                data = orjson.dumps(item_json(item), option=orjson.OPT_UTC_Z)
                yield b"id: %d\nevent: interaction\ndata: %s\n\n" % (item.position, data)
            if items:
                quiet = 0.0
                continue
            await asyncio.sleep(LIVE_POLL_SECONDS)
            quiet += LIVE_POLL_SECONDS
            if quiet >= LIVE_KEEPALIVE_SECONDS:
                quiet = 0.0
                yield b": keep-alive\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _a_position(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= MAX_POSITION


def _customer(svc: Service, customer_id: str) -> str:
    with svc.connection() as conn:
        found = views.find_customer_read(customer_id).run(conn)
    if found is None:
        raise not_found(customer_id)
    return found


def _live_start(svc: Service, last_position: int | None) -> Checkpoint:
    """Where a live timeline starts: after the event a client saw last, else now (the
    timeline's checkpoint)."""
    with svc.connection() as conn:
        if last_position is not None:
            row = conn.execute(
                "SELECT transaction_id::text, position FROM events WHERE position = %s",
                (last_position,),
            ).fetchone()
            if row is None:
                raise Problem(422, "Invalid request", "Last-Event-ID: no event at that position")
        else:
            row = conn.execute(
                "SELECT transaction_id::text, position FROM projection_checkpoints"
                " WHERE projection = 'timeline'"
            ).fetchone()
    return Checkpoint(int(row[0]), int(row[1])) if row else Checkpoint.START


def _live_items(
    svc: Service, customer_id: str, after: Checkpoint
) -> tuple[list[views.TimelineItem], Checkpoint]:
    """The customer's items applied after ``after``, in the order they were applied (the
    log's commit-safe order), and the checkpoint to continue from."""
    with svc.connection() as conn:
        rows = conn.execute(
            """
            SELECT t.position, t.event_id, t.customer_id, t.occurred_at, t.channel,
                   t.direction, t.type, t.conversation_id, t.agent_id,
                   t.contact_kind || ':' || t.contact_value, t.subject, t.snippet,
                   e.transaction_id::text
              FROM timeline AS t JOIN events AS e ON e.position = t.position
             WHERE t.customer_id = %s
               AND (e.transaction_id, e.position) > (%s::text::xid8, %s)
             ORDER BY e.transaction_id, e.position
             LIMIT 100
            """,
            (customer_id, str(after.transaction_id), after.position),
        ).fetchall()
    if not rows:
        return [], after
    last = rows[-1]
    return [views.TimelineItem(*row[:12]) for row in rows], Checkpoint(int(last[12]), last[0])
