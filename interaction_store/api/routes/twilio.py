"""Twilio's webhooks: Voice status callbacks, the voicemail ``<Record>`` action, and
Messaging webhooks. Twilio cannot send an API key: each request is proven by its
``X-Twilio-Signature`` instead."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from interaction_store import feeds
from interaction_store.api.app import Service
from interaction_store.api.deps import Svc
from interaction_store.api.problems import Problem
from interaction_store.api.routes.appends import counted, read_body
from interaction_store.api.routes.connectors import public_url
from interaction_store.connectors.twilio import (
    TwilioPayloadError,
    call_event,
    signature_is_valid,
    sms_event,
    voicemail_event,
)
from interaction_store.events import derive_event_id
from interaction_store.exceptions import IdempotencyConflict

__all__ = ["router"]

router = APIRouter(tags=["connectors"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/xml": {}}, "description": "Recorded (or nothing to record)."},
    403: {"description": "The signature does not match."},
}
_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "additionalProperties": {"type": "string"}}
            }
        },
    }
}
Mapping = Callable[[dict[str, str]], dict[str, Any] | None]


@router.post(
    "/v1/connectors/twilio/voice",
    response_class=Response,
    responses=_RESPONSES,
    openapi_extra=_FORM,
)
async def twilio_voice(request: Request, svc: Svc) -> Response:
    """A Twilio Voice status callback (configure it as the number's status callback URL,
    for the completed event at least): the finished call as ``call.completed``."""
    return await _twilio(request, svc, call_event)


@router.post(
    "/v1/connectors/twilio/voicemail",
    response_class=Response,
    responses=_RESPONSES,
    openapi_extra=_FORM,
)
async def twilio_voicemail(request: Request, svc: Svc) -> Response:
    """The ``action`` URL of a ``<Record>`` verb: the call as a voicemail, with its
    recording. The answer (an empty ``<Response/>``) ends the call."""
    return await _twilio(request, svc, voicemail_event)


@router.post(
    "/v1/connectors/twilio/sms",
    response_class=Response,
    responses=_RESPONSES,
    openapi_extra=_FORM,
)
async def twilio_sms(request: Request, svc: Svc) -> Response:
    """A Twilio Messaging webhook: an incoming message (the number's "A message comes in"
    URL) or the status callback of one we sent. Messages of one pair of numbers are one
    conversation until the pair is idle for longer than ``sms_idle_gap``."""
    return await _twilio(request, svc, sms_event, sessions=True)


async def _twilio(
    request: Request, svc: Service, mapping: Mapping, *, sessions: bool = False
) -> Response:
    token = svc.settings.twilio_auth_token
    assert token is not None  # the routes exist only with a token
    body = await read_body(request, svc)
    try:
        params = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise Problem(400, "Bad request", "the body is not form-encoded") from None
    if not signature_is_valid(
        token.get_secret_value(),
        public_url(request, svc),
        params,
        request.headers.get("x-twilio-signature"),
    ):
        raise Problem(403, "Forbidden", "X-Twilio-Signature does not match this request")
    try:
        event = mapping(dict(params))
    except TwilioPayloadError as exc:
        raise Problem(
            422, "Invalid request", str(exc), errors=[{"field": exc.field, "reason": exc.reason}]
        ) from None
    if event is not None:
        await run_in_threadpool(_append, request, svc, event, sessions)
    return Response('<?xml version="1.0" encoding="UTF-8"?><Response/>', media_type="text/xml")


def _append(request: Request, svc: Service, event: dict[str, Any], sessions: bool) -> None:
    data = event["data"]
    if sessions:
        with svc.connection() as conn:
            if feeds.is_stored(conn, derive_event_id(event["type"], data["external_id"])):
                return  # a redelivery: it must not move the pair's session either
            at = datetime.fromisoformat(event["occurred_at"])
            gap = svc.settings.sms_idle_gap
            # The pair is two phone numbers: the log and the session table keep only its
            # keyed token, so an erased number is not left behind in either.
            pair = svc.store.sealer.keyring(conn).token(f"sms-pair:{data['thread_key']}").hex()
            data["thread_key"] = feeds.sms_session(conn, pair, at, gap)
    # Twilio's ids are unique, so the same id again is a redelivery, which differs only
    # in when it was received (these callbacks carry no time of their own), or the final
    # status of a call already stored as a voicemail.
    with contextlib.suppress(IdempotencyConflict):
        counted(request, svc.store.append_batch([event]))
