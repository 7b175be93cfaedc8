"""The v1 endpoints: reads for agent tools, appends for connectors, health for operators."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from interaction_store import views
from interaction_store.api.app import Service, require, service
from interaction_store.api.problems import Problem
from interaction_store.keys import ApiKey
from interaction_store.store import ANY, NO_STREAM, AppendResult, Checkpoint, RecordedEvent

__all__ = ["router"]

router = APIRouter()

Svc = Annotated[Service, Depends(service)]
Reader = Annotated[ApiKey, Depends(require("timeline:read"))]
Auditor = Annotated[ApiKey, Depends(require("audit:read"))]
Appender = Annotated[ApiKey, Depends(require("events:append"))]

#: How long ``min_position`` may hold a read while the views catch up.
READ_YOUR_WRITES_WAIT = 2.0


def _read_your_writes(
    request: Request,
    min_position: Annotated[
        int | None,
        Query(
            ge=1,
            description="Answer only once the views include this position (an append's"
            " answer); 503 with Retry-After if they do not within 2 s.",
        ),
    ] = None,
) -> None:
    if min_position is not None:
        _wait_for_views(request.app.state.service, min_position)


Fresh = Depends(_read_your_writes)


# Health -------------------------------------------------------------------------------


@router.get("/healthz", tags=["operations"])
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"])
def readyz(svc: Svc) -> Response:
    """The database answers and the projector keeps up."""
    try:
        with svc.connection() as conn:
            conn.execute("SELECT 1")
    except Exception:
        raise Problem(503, "Not ready", "the database does not answer") from None
    runner = svc.runner
    if runner is None:
        body: dict[str, Any] = {"status": "ready", "projector": "not run by this process"}
        return Response(orjson.dumps(body), media_type="application/json")
    lags = runner.lag()
    stalled = {lag.projection for lag in runner.stalled(after=60.0)}
    body = {
        "status": "stalled" if stalled else "ready",
        "projections": {
            lag.projection: {
                "position": lag.position,
                "behind_events": lag.events,
                "behind_seconds": round(lag.seconds, 3),
            }
            for lag in lags
        },
    }
    return Response(
        orjson.dumps(body), status_code=503 if stalled else 200, media_type="application/json"
    )


@router.get("/metrics", tags=["operations"], include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus text format."""
    body = request.app.state.metrics.render()
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


# Reads --------------------------------------------------------------------------------


def _customer_or_404(svc: Service, customer_id: str) -> str:
    with svc.connection() as conn:
        found = views.find_customer(conn, customer_id)
    if found is None:
        raise Problem(404, "Not found", f"no customer {customer_id}")
    return found


@router.get("/v1/customers/lookup", tags=["customers"], dependencies=[Fresh])
def lookup(
    svc: Svc,
    key: Reader,
    identity: Annotated[str, Query(description="kind:value, e.g. email:alice@example.com")],
) -> dict[str, str]:
    """The customer of an identity (normalised like appends; merges followed)."""
    try:
        with svc.connection() as conn:
            customer_id = views.lookup_customer(
                conn, identity, phone_region=svc.settings.default_phone_region
            )
    except ValueError as exc:
        raise Problem(
            422, "Invalid request", str(exc), errors=[{"field": "identity", "reason": str(exc)}]
        ) from None
    if customer_id is None:
        raise Problem(404, "Not found", f"no customer has the identity {identity}")
    return {"identity": identity, "customer_id": customer_id}


def _conversation_json(c: views.ConversationSummary) -> dict[str, Any]:
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


@router.get("/v1/customers/{customer_id}", tags=["customers"], dependencies=[Fresh])
def customer_summary(svc: Svc, key: Reader, customer_id: str) -> dict[str, Any]:
    """The omniscient summary: profile, identities, channels, open conversations,
    preferred agent and priority. A merged customer's id answers for its target."""
    found = _customer_or_404(svc, customer_id)
    with svc.connection() as conn:
        s = views.customer(conn, found, service_levels=svc.service_levels)
    return {
        "customer_id": s.customer_id,
        "aliases": s.aliases,
        "profile": None
        if s.profile is None
        else {
            "name": s.profile.name,
            "tier": s.profile.tier,
            "account_value": s.profile.account_value,
            "churn_risk": s.profile.churn_risk,
            "registered_at": s.profile.registered_at,
            "erased_at": s.profile.erased_at,
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
        "open_conversations": [_conversation_json(c) for c in s.open_conversations],
        "preferred_agent": s.preferred_agent,
        "priority": s.priority,
    }


@router.get("/v1/customers/{customer_id}/context", tags=["customers"], dependencies=[Fresh])
def customer_context(svc: Svc, key: Reader, customer_id: str) -> dict[str, Any]:
    """The small routing context for a call that is ringing now (one query)."""
    with svc.connection() as conn:
        found = views.context(conn, customer_id, service_levels=svc.service_levels)
    if found is None:
        raise Problem(404, "Not found", f"no customer {customer_id}")
    return found


def _cursor(position: int) -> str:
    return base64.urlsafe_b64encode(f"p{position}".encode()).decode().rstrip("=")


def _position_of(cursor: str) -> int:
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


def _wait_for_views(svc: Service, position: int) -> None:
    """Read-your-writes: wait (bounded) until the timeline has applied ``position``."""
    deadline = time.monotonic() + READ_YOUR_WRITES_WAIT
    while True:
        with svc.connection() as conn:
            row = conn.execute(
                "SELECT EXISTS (SELECT FROM events WHERE position = %s)"
                " AND (SELECT (transaction_id, position) FROM projection_checkpoints"
                "      WHERE projection = 'timeline')"
                "   >= (SELECT (transaction_id, position) FROM events WHERE position = %s)",
                (position, position),
            ).fetchone()
        if row and row[0]:
            return
        if time.monotonic() >= deadline:
            raise Problem(
                503,
                "Not yet",
                f"the views have not reached position {position} yet; retry shortly",
                kind="views-behind",
                headers={"Retry-After": "1"},
            )
        time.sleep(0.02)


@router.get("/v1/customers/{customer_id}/timeline", tags=["customers"], dependencies=[Fresh])
def customer_timeline(
    svc: Svc,
    key: Reader,
    customer_id: str,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    channel: Annotated[str | None, Query(pattern="^(email|voice|chat|sms|twitter)$")] = None,
    type: Annotated[str | None, Query(max_length=100)] = None,
    conversation_id: Annotated[str | None, Query(max_length=200)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """The customer's interactions on every channel, newest first."""
    before = _position_of(cursor) if cursor else None
    with svc.connection() as conn:
        items = views.timeline(
            conn,
            customer_id,
            limit=limit,
            before=before,
            channel=channel,
            type=type,
            conversation_id=conversation_id,
            since=since,
            until=until,
        )
    # One query when there are items; only an empty page asks whether the customer exists.
    found = items[0].customer_id if items else _customer_or_404(svc, customer_id)
    return {
        "customer_id": found,
        "items": [_item_json(i) for i in items],
        "next_cursor": _cursor(items[-1].position) if len(items) == limit else None,
    }


#: How often a live timeline looks for new items, and how often it sends a keep-alive.
LIVE_POLL_SECONDS = 0.2
LIVE_KEEPALIVE_SECONDS = 15.0


def _item_json(i: views.TimelineItem) -> dict[str, Any]:
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


@router.get("/v1/customers/{customer_id}/timeline/live", tags=["customers"])
async def customer_timeline_live(
    request: Request, svc: Svc, key: Reader, customer_id: str
) -> StreamingResponse:
    """Server-sent events: each new interaction of the customer as it reaches the
    timeline, its position as the event id. Reconnect with ``Last-Event-ID`` to get
    exactly what was missed. Items moved in later by a link or merge are not replayed."""
    found = await run_in_threadpool(_customer_or_404, svc, customer_id)
    last_id = request.headers.get("last-event-id")
    if last_id is not None and not last_id.isdigit():
        raise Problem(422, "Invalid request", "Last-Event-ID: the position of an event")
    start = await run_in_threadpool(_live_start, svc, int(last_id) if last_id else None)

    async def stream() -> AsyncIterator[bytes]:
        after, quiet = start, 0.0
        yield b": live timeline of " + found.encode() + b"\n\n"
        while not await request.is_disconnected():
            items, after = await run_in_threadpool(_live_items, svc, found, after)
            for item in items:
                data = orjson.dumps(_item_json(item))
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


@router.get("/v1/conversations/{conversation_id}", tags=["conversations"], dependencies=[Fresh])
def conversation(svc: Svc, key: Reader, conversation_id: str) -> dict[str, Any]:
    """A conversation with its service-level state and follow-ups."""
    with svc.connection() as conn:
        found = views.conversation(conn, conversation_id, service_levels=svc.service_levels)
    if found is None:
        raise Problem(404, "Not found", f"no conversation {conversation_id}")
    return _conversation_json(found)


def _event_json(e: RecordedEvent) -> dict[str, Any]:
    return {
        "id": e.event_id,
        "type": e.type,
        "schema_version": e.schema_version,
        "occurred_at": e.occurred_at,
        "recorded_at": e.recorded_at,
        "position": e.position,
        "checkpoint": str(e.checkpoint),
        "stream_id": e.stream_id,
        "stream_version": e.stream_version,
        "data": e.data,
        "metadata": e.metadata,
        "hash": e.hash.hex(),
    }


@router.get("/v1/streams/{stream_id}", tags=["log"])
def read_stream(
    svc: Svc,
    key: Auditor,
    stream_id: str,
    from_version: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """A stream's events in order, from ``from_version``."""
    events = svc.store.read_stream(stream_id, from_version=from_version, limit=limit)
    if not events and from_version == 0:
        raise Problem(404, "Not found", f"no stream {stream_id}")
    return {"stream_id": stream_id, "events": [_event_json(e) for e in events]}


@router.get("/v1/log", tags=["log"])
def read_log(
    svc: Svc,
    key: Auditor,
    after: Annotated[str | None, Query(description="a checkpoint: transaction_id:position")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    types: Annotated[list[str] | None, Query()] = None,
) -> dict[str, Any]:
    """The whole log in commit-safe order; continue from ``next`` (gap-safe)."""
    try:
        checkpoint = Checkpoint.parse(after) if after else Checkpoint.START
    except ValueError as exc:
        raise Problem(
            422, "Invalid request", str(exc), errors=[{"field": "after", "reason": str(exc)}]
        ) from None
    events = svc.store.read_all(after=checkpoint, limit=limit, types=types)
    return {
        "events": [_event_json(e) for e in events],
        "next": str(events[-1].checkpoint) if events else str(checkpoint),
    }


# Appends ------------------------------------------------------------------------------


async def _body(request: Request, svc: Service) -> bytes:
    """The body, once its size is known to be within the limit (413 before reading more)."""
    limit = svc.settings.max_request_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise Problem(413, "Payload too large", f"the body exceeds {limit:,} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Problem(413, "Payload too large", f"the body exceeds {limit:,} bytes")
    return bytes(body)


def _parse(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Problem(422, "Invalid request", f"the body is not JSON: {exc}") from None


def _events_of(payload: Any, svc: Service) -> list[Any]:
    if not isinstance(payload, dict) or not isinstance(payload.get("events"), list):
        raise Problem(
            422,
            "Invalid request",
            'the body must be {"events": [...]}',
            errors=[{"field": "events", "reason": "required: a list of events"}],
        )
    events: list[Any] = payload["events"]
    limit = svc.settings.max_batch_events
    if not events:
        raise Problem(422, "Invalid request", "events: the list is empty")
    if len(events) > limit:
        raise Problem(
            422,
            "Invalid request",
            f"events: {len(events)} events; the limit is {limit}",
            errors=[{"field": "events", "reason": f"at most {limit} events per request"}],
        )
    return events


def _counted(request: Request, result: AppendResult) -> AppendResult:
    appended = request.app.state.metrics.appended
    appended.labels("appended").inc(result.appended)
    appended.labels("already_present").inc(result.already_present)
    return result


def _append_answer(result: AppendResult) -> Response:
    body = {
        "events": [
            {
                "id": e.event_id,
                "position": e.position,
                "stream_id": e.stream_id,
                "stream_version": e.stream_version,
            }
            for e in result.events
        ],
        "position": result.position,
    }
    status = 201 if result.appended else 200  # a retried request changes nothing
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


IDEMPOTENCY_TTL_HOURS = 24
#: How long a retry waits for the first request with its key to finish before a 409.
IDEMPOTENCY_WAIT = 5.0


async def _append_once(
    request: Request,
    svc: Service,
    key: ApiKey,
    body: bytes,
    append: Callable[[], AppendResult],
) -> Response:
    """Run ``append`` and answer; with an ``Idempotency-Key`` header, only once per key:
    a retry with the same key and payload gets the first answer again (waiting for it if
    the first is still running, up to 5 s, then 409), the same key with another payload
    422. Keys are kept 24 hours."""
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is None:
        return _append_answer(_counted(request, await run_in_threadpool(append)))
    if not 1 <= len(idempotency_key) <= 255:
        raise Problem(422, "Invalid request", "Idempotency-Key: 1 to 255 characters")
    fingerprint = hashlib.sha256(request.url.path.encode() + b"\0" + body).digest()
    claimed, stored = await run_in_threadpool(
        _claim_idempotency_key, svc, key.key_id, idempotency_key, fingerprint
    )
    if not claimed:
        assert stored is not None
        if bytes(stored[0]) != fingerprint:
            raise Problem(
                422,
                "Idempotency key reused",
                "this Idempotency-Key was used with another request payload",
            )
        if stored[1] is None:
            raise Problem(
                409,
                "Request in progress",
                "a request with this Idempotency-Key is still being processed",
                headers={"Retry-After": "1"},
            )
        return Response(bytes(stored[2]), status_code=stored[1], media_type="application/json")
    try:
        answer = _append_answer(_counted(request, await run_in_threadpool(append)))
    except BaseException:
        await run_in_threadpool(_release_idempotency_key, svc, key.key_id, idempotency_key)
        raise
    await run_in_threadpool(_store_idempotent_answer, svc, key.key_id, idempotency_key, answer)
    return answer


def _claim_idempotency_key(
    svc: Service, key_id: str, idempotency_key: str, fingerprint: bytes
) -> tuple[bool, tuple[Any, ...] | None]:
    with svc.connection() as conn:
        conn.execute(
            "DELETE FROM idempotency_keys WHERE key_id = %s AND idempotency_key = %s"
            " AND created_at < now() - make_interval(hours => %s)",
            (key_id, idempotency_key, IDEMPOTENCY_TTL_HOURS),
        )
        inserted = conn.execute(
            "INSERT INTO idempotency_keys (key_id, idempotency_key, fingerprint)"
            " VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            (key_id, idempotency_key, fingerprint),
        ).rowcount
        if inserted:
            return True, None
    deadline = time.monotonic() + IDEMPOTENCY_WAIT
    while True:  # the first request may still be running: wait for its answer
        with svc.connection() as conn:  # not held while waiting: the first one needs one
            row = conn.execute(
                "SELECT fingerprint, status, body FROM idempotency_keys"
                " WHERE key_id = %s AND idempotency_key = %s",
                (key_id, idempotency_key),
            ).fetchone()
        if row is None:  # the first failed and let go of the key: take it
            return _claim_idempotency_key(svc, key_id, idempotency_key, fingerprint)
        if row[1] is not None or bytes(row[0]) != fingerprint:
            return False, row
        if time.monotonic() >= deadline:
            return False, row
        time.sleep(0.01)


def _release_idempotency_key(svc: Service, key_id: str, idempotency_key: str) -> None:
    """The first request failed: a retry may try again."""
    with svc.connection() as conn:
        conn.execute(
            "DELETE FROM idempotency_keys WHERE key_id = %s AND idempotency_key = %s"
            " AND status IS NULL",
            (key_id, idempotency_key),
        )


def _store_idempotent_answer(
    svc: Service, key_id: str, idempotency_key: str, answer: Response
) -> None:
    with svc.connection() as conn:
        conn.execute(
            "UPDATE idempotency_keys SET status = %s, body = %s"
            " WHERE key_id = %s AND idempotency_key = %s",
            (answer.status_code, bytes(answer.body), key_id, idempotency_key),
        )


@router.post("/v1/events", tags=["appends"], status_code=201)
async def append_events(request: Request, svc: Svc, key: Appender) -> Response:
    """Append a batch (``{"events": [...]}``), atomically. Each event's stream is derived
    from its data. 201 with the positions; 200 when every event was stored already.
    ``Idempotency-Key`` makes a retried request answer exactly as the first did."""
    body = await _body(request, svc)
    events = _events_of(_parse(body), svc)
    return await _append_once(request, svc, key, body, lambda: svc.store.append_batch(events))


@router.post("/v1/streams/{stream_id}/events", tags=["appends"], status_code=201)
async def append_to_stream(request: Request, svc: Svc, key: Appender, stream_id: str) -> Response:
    """Append to a named stream. ``expected_version``: ``any`` (default), ``no_stream`` or
    the stream's exact current version; a mismatch answers 409."""
    body = await _body(request, svc)
    payload = _parse(body)
    events = _events_of(payload, svc)
    raw = payload.get("expected_version", "any")
    expected: Any
    if raw == "any":
        expected = ANY
    elif raw == "no_stream":
        expected = NO_STREAM
    elif isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        expected = raw
    else:
        raise Problem(
            422,
            "Invalid request",
            "expected_version: any, no_stream or a version (0 or more)",
            errors=[{"field": "expected_version", "reason": "any, no_stream or an integer ≥ 0"}],
        )
    return await _append_once(
        request, svc, key, body, lambda: svc.store.append(stream_id, events, expected)
    )
