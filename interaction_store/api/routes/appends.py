"""Appends from connectors: a batch whose streams follow from its events, or a named
stream with an expected version; ``Idempotency-Key`` for retries of whole requests."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from interaction_store.api.app import Service
from interaction_store.api.deps import MAX_POSITION, Appender, PathId, Svc
from interaction_store.api.models import AppendAnswer, problems
from interaction_store.api.problems import Problem
from interaction_store.keys import ApiKey
from interaction_store.store import ANY, NO_STREAM, AppendResult

__all__ = [
    "APPENDED",
    "append_answer",
    "append_events_answer",
    "counted",
    "read_body",
    "router",
]

router = APIRouter(tags=["appends"])


async def read_body(request: Request, svc: Service) -> bytes:
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


#: A JSON integer of 20 digits or more, perhaps beyond 64 bits, which orjson reads as a
#: rounded float. Where one may be, the body is read exactly, and the store refuses what
#: it cannot hold exactly, naming the field. (One inside a string costs a slower read.)
_LONG_INTEGER = re.compile(rb"(?<![0-9.eE+-])-?[0-9]{20,}(?![0-9.eE])")


def _parse(body: bytes) -> Any:
    try:
        if _LONG_INTEGER.search(body):
            return json.loads(body, parse_constant=_not_json)
        return orjson.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise Problem(422, "Invalid request", f"the body is not JSON: {exc}") from None


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


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


def counted(request: Request, result: AppendResult) -> AppendResult:
    appended = request.app.state.metrics.appended
    appended.labels("appended").inc(result.appended)
    appended.labels("already_present").inc(result.already_present)
    return result


def append_answer(result: AppendResult) -> Response:
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
        return append_answer(counted(request, await run_in_threadpool(append)))
    if not 1 <= len(idempotency_key) <= 255 or "\x00" in idempotency_key:
        reason = "1 to 255 characters, none of them NUL"
        raise Problem(
            422,
            "Invalid request",
            f"Idempotency-Key: {reason}",
            errors=[{"field": "Idempotency-Key", "reason": reason}],
        )
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
        answer = append_answer(counted(request, await run_in_threadpool(append)))
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


def _body_of(schema: str) -> dict[str, Any]:
    """The request body in the OpenAPI document (the handler reads and checks it itself,
    so that an oversized body is refused before it is parsed)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }
    }


#: The answers of an append (without its problems).
STORED: dict[int | str, dict[str, Any]] = {
    201: {"model": AppendAnswer, "description": "Appended."},
    200: {"model": AppendAnswer, "description": "Every event was stored already (a retry)."},
}
APPENDED = {**STORED, **problems(401, 403, 409, 413, 422)}


@router.post(
    "/v1/events",
    status_code=201,
    response_model=None,
    responses=APPENDED,
    openapi_extra=_body_of("AppendRequest"),
)
async def append_events(request: Request, svc: Svc, key: Appender) -> Response:
    """Append a batch (``{"events": [...]}``), atomically. Each event's stream is derived
    from its data. 201 with the positions; 200 when every event was stored already.
    ``Idempotency-Key`` makes a retried request answer exactly as the first did."""
    return await append_events_answer(request, svc, key)


async def append_events_answer(request: Request, svc: Service, key: ApiKey) -> Response:
    """The answer to an append of a batch by ``key`` (the route's, and the hot lane's:
    see ``api.hot``)."""
    body = await read_body(request, svc)
    events = _events_of(_parse(body), svc)
    return await _append_once(request, svc, key, body, lambda: svc.store.append_batch(events))


@router.post(
    "/v1/streams/{stream_id}/events",
    status_code=201,
    response_model=None,
    responses=APPENDED,
    openapi_extra=_body_of("StreamAppendRequest"),
)
async def append_to_stream(
    request: Request, svc: Svc, key: Appender, stream_id: PathId
) -> Response:
    """Append to a named stream. ``expected_version``: ``any`` (default), ``no_stream`` or
    the stream's exact current version; a mismatch answers 409."""
    body = await read_body(request, svc)
    payload = _parse(body)
    events = _events_of(payload, svc)
    raw = payload.get("expected_version", "any")
    expected: Any
    if raw == "any":
        expected = ANY
    elif raw == "no_stream":
        expected = NO_STREAM
    elif isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= MAX_POSITION:
        expected = raw
    else:
        reason = f"any, no_stream or an integer from 0 to {MAX_POSITION}"
        raise Problem(
            422,
            "Invalid request",
            f"expected_version: {reason}",
            errors=[{"field": "expected_version", "reason": reason}],
        )
    return await _append_once(
        request, svc, key, body, lambda: svc.store.append(stream_id, events, expected)
    )
