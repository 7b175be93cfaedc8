"""Reading the record itself: a conversation, a stream, and the whole log (auditors)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import StringConstraints
from starlette.concurrency import run_in_threadpool

from interaction_store import views
from interaction_store.api.app import Service
from interaction_store.api.deps import (
    MAX_POSITION,
    Auditor,
    Fresh,
    PathId,
    Reader,
    Svc,
)
from interaction_store.api.models import ConversationAnswer, LogPage, StreamPage, problems
from interaction_store.api.problems import JSON, Problem
from interaction_store.api.routes.customers import conversation_json
from interaction_store.events import CATALOGUE
from interaction_store.store import Checkpoint, RecordedEvent

__all__ = ["router"]

router = APIRouter()

#: A type of the event catalogue (a misspelt one is refused, not matched by nothing).
EventType = Annotated[
    str,
    StringConstraints(pattern="^(" + "|".join(re.escape(t) for t in sorted(CATALOGUE)) + ")$"),
]


@router.get(
    "/v1/conversations/{conversation_id}",
    tags=["conversations"],
    dependencies=[Fresh],
    response_model=ConversationAnswer,
    responses=problems(401, 403, 404, 422, 503),
)
async def conversation(svc: Svc, key: Reader, conversation_id: PathId) -> JSON:
    """A conversation with its service-level state and follow-ups."""
    return JSON(await run_in_threadpool(_conversation, svc, conversation_id))


def _conversation(svc: Service, conversation_id: str) -> dict[str, Any]:
    with svc.connection() as conn:
        found = views.conversation(conn, conversation_id, service_levels=svc.service_levels)
    if found is None:
        raise Problem(404, "Not found", f"no conversation {conversation_id}")
    return conversation_json(found)


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


@router.get(
    "/v1/streams/{stream_id}",
    tags=["log"],
    response_model=StreamPage,
    responses=problems(401, 403, 404, 422),
)
async def read_stream(
    svc: Svc,
    key: Auditor,
    stream_id: PathId,
    from_version: Annotated[int, Query(ge=0, le=MAX_POSITION)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSON:
    """A stream's events in order, from ``from_version``."""
    events = await run_in_threadpool(
        svc.store.read_stream, stream_id, from_version=from_version, limit=limit
    )
    if not events and from_version == 0:
        raise Problem(404, "Not found", f"no stream {stream_id}")
    return JSON({"stream_id": stream_id, "events": [_event_json(e) for e in events]})


@router.get("/v1/log", tags=["log"], response_model=LogPage, responses=problems(401, 403, 422))
async def read_log(
    svc: Svc,
    key: Auditor,
    after: Annotated[
        str | None,
        Query(
            description="a checkpoint: transaction_id:position (the next of a page)",
            pattern=r"^[0-9]{1,18}:[0-9]{1,18}$",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    types: Annotated[
        list[EventType] | None, Query(description="event types to keep (repeatable)")
    ] = None,
) -> JSON:
    """The whole log in commit-safe order; continue from ``next`` (gap-safe)."""
    try:
        checkpoint = Checkpoint.parse(after) if after else Checkpoint.START
    except ValueError as exc:
        raise Problem(
            422, "Invalid request", str(exc), errors=[{"field": "after", "reason": str(exc)}]
        ) from None
    events = await run_in_threadpool(svc.store.read_all, after=checkpoint, limit=limit, types=types)
    return JSON(
        {
            "events": [_event_json(e) for e in events],
            "next": str(events[-1].checkpoint) if events else str(checkpoint),
        }
    )
