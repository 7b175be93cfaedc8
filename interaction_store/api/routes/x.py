"""X's Account Activity webhook: the challenge-response check (GET) and the deliveries
(POST) of mentions, replies and direct messages. X sends no API key: the CRC answer
proves this service holds the app's consumer secret, and each delivery carries
``x-twitter-webhooks-signature``."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import psycopg
from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from interaction_store import feeds
from interaction_store.api.app import Service
from interaction_store.api.deps import Svc
from interaction_store.api.models import problems
from interaction_store.api.problems import JSON, Problem
from interaction_store.api.routes.appends import STORED, append_answer, counted, read_body
from interaction_store.connectors.x import (
    XPayloadError,
    crc_response_token,
    map_activity,
    signature_is_valid,
    tweet_external_id,
)
from interaction_store.events import derive_event_id
from interaction_store.store import AppendResult

__all__ = ["router"]

SIGNATURE_HEADER = "x-twitter-webhooks-signature"

router = APIRouter(tags=["connectors"])


@router.get(
    "/v1/connectors/x",
    responses={
        200: {
            "description": "The answer to the challenge.",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["response_token"],
                        "properties": {"response_token": {"type": "string"}},
                    }
                }
            },
        },
        **problems(422),
    },
)
async def x_crc(svc: Svc, crc_token: Annotated[str, Query(min_length=1, max_length=1000)]) -> JSON:
    """X's challenge-response check: ``response_token`` is ``sha256=`` and the base64
    HMAC-SHA256 of ``crc_token`` with the app's consumer secret."""
    secret = svc.settings.x_consumer_secret
    assert secret is not None  # the route exists only with a secret
    return JSON({"response_token": crc_response_token(secret.get_secret_value(), crc_token)})


@router.post(
    "/v1/connectors/x",
    status_code=201,
    response_model=None,
    responses={
        **STORED,
        **problems(
            400, 403, 413, 422, described_as={403: "The signature does not match the body."}
        ),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
    },
)
async def x_activity(request: Request, svc: Svc) -> Response:
    """An Account Activity delivery: posts that mention or reply to the account, its
    replies, and direct messages both ways. Other activity (likes, follows, ...) is
    acknowledged and ignored; a delivery already stored answers 200."""
    secret = svc.settings.x_consumer_secret
    assert secret is not None
    body = await read_body(request, svc)
    if not signature_is_valid(
        secret.get_secret_value(), body, request.headers.get(SIGNATURE_HEADER)
    ):
        raise Problem(403, "Forbidden", f"{SIGNATURE_HEADER} does not match this body")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Problem(400, "Bad request", f"the body is not JSON: {exc}") from None
    result = await run_in_threadpool(_append, svc, payload)
    if result is None:
        return append_answer(AppendResult(()))
    return append_answer(counted(request, result))


def _append(svc: Service, payload: Any) -> AppendResult | None:
    with svc.connection() as conn:
        try:
            events = map_activity(payload, thread_of=lambda tweet: _thread_of(conn, tweet))
        except XPayloadError as exc:
            raise Problem(
                422,
                "Invalid request",
                str(exc),
                errors=[{"field": exc.field, "reason": exc.reason}],
            ) from None
        # A direct-message thread is named by the two user ids: the log keeps its keyed
        # token instead, so an erased user's id is not left behind in it.
        keyring = svc.store.sealer.keyring(conn)
        for event in events:
            thread = event["data"].get("thread_key", "")
            if thread.startswith("x:dm:"):
                event["data"]["thread_key"] = "x:dm:" + keyring.token(thread).hex()
        # A redelivery is dropped before it is compared: the thread of a reply may have
        # become known since its first delivery.
        events = [
            event
            for event in events
            if not feeds.is_stored(
                conn, derive_event_id(event["type"], event["data"]["external_id"])
            )
        ]
    return svc.store.append_batch(events) if events else None


def _thread_of(conn: psycopg.Connection[Any], tweet_id: str) -> str | None:
    """The thread of a stored post, whichever side wrote it."""
    external = tweet_external_id(tweet_id)
    return feeds.stored_thread(
        conn,
        [derive_event_id(kind, external) for kind in ("tweet.received", "tweet.sent")],
    )
