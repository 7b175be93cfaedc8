"""Webhooks and inbound feeds of the channel connectors: each maps what the source sends
to events (``interaction_store.connectors``) and appends them, idempotently."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from interaction_store.api.app import Service
from interaction_store.api.deps import Appender, Svc
from interaction_store.api.problems import Problem
from interaction_store.api.routes.appends import APPENDED, append_answer, counted, read_body
from interaction_store.connectors.email import EmailSource, MalformedEmail, email_event
from interaction_store.connectors.twilio import (
    TwilioPayloadError,
    call_event,
    signature_is_valid,
    sms_event,
)
from interaction_store.exceptions import IdempotencyConflict

__all__ = ["router", "twilio_router"]

router = APIRouter(tags=["connectors"])
#: Twilio cannot send an API key: its requests are proven by their signature instead.
twilio_router = APIRouter(tags=["connectors"])

_TWIML = {"content": {"text/xml": {}}, "description": "Recorded (or nothing to record)."}
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


@router.post(
    "/v1/connectors/email/inbound",
    status_code=201,
    response_model=None,
    responses=APPENDED,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def email_inbound(request: Request, svc: Svc, key: Appender) -> Response:
    """One raw RFC 5322 message (``message/rfc822``), as a mail server's pipe or a relay
    delivers it: ``email.received`` from a customer, ``email.sent`` from one of the
    support addresses. The same message again answers 200 and stores nothing; another
    message reusing its Message-ID answers 409."""
    raw = await read_body(request, svc)
    if not raw.strip():
        raise Problem(
            422,
            "Invalid request",
            "the body is empty: send the message itself",
            errors=[{"field": "body", "reason": "an RFC 5322 message is required"}],
        )
    settings = svc.settings
    source = EmailSource(settings.email_mailbox, settings.support_address_list())
    try:  # parsing a large mail takes a while: not on the event loop
        event = await run_in_threadpool(email_event, raw, source)
    except (MalformedEmail, ValueError, LookupError) as exc:
        raise Problem(
            422, "Invalid message", str(exc), errors=[{"field": "body", "reason": str(exc)}]
        ) from None
    result = await run_in_threadpool(svc.store.append_batch, [event])
    return append_answer(counted(request, result))


@twilio_router.post(
    "/v1/connectors/twilio/voice",
    response_class=Response,
    responses={200: _TWIML, 403: {"description": "The signature does not match."}},
    openapi_extra=_FORM,
)
async def twilio_voice(request: Request, svc: Svc) -> Response:
    """A Twilio Voice status callback (configure it as the number's status callback URL,
    for the completed event at least): the finished call as ``call.completed``."""
    return await _twilio(request, svc, call_event)


@twilio_router.post(
    "/v1/connectors/twilio/sms",
    response_class=Response,
    responses={200: _TWIML, 403: {"description": "The signature does not match."}},
    openapi_extra=_FORM,
)
async def twilio_sms(request: Request, svc: Svc) -> Response:
    """A Twilio Messaging webhook: an incoming message (the number's "A message comes in"
    URL) or the status callback of one we sent."""
    return await _twilio(request, svc, sms_event)


async def _twilio(
    request: Request, svc: Service, mapping: Callable[..., dict[str, Any] | None]
) -> Response:
    token = svc.settings.twilio_auth_token
    assert token is not None  # the routes exist only with a token
    body = await read_body(request, svc)
    try:
        params = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise Problem(400, "Bad request", "the body is not form-encoded") from None
    url = _public_url(request, svc)
    if not signature_is_valid(
        token.get_secret_value(), url, params, request.headers.get("x-twilio-signature")
    ):
        raise Problem(403, "Forbidden", "X-Twilio-Signature does not match this request")
    try:
        event = mapping(dict(params))
    except TwilioPayloadError as exc:
        raise Problem(
            422, "Invalid request", str(exc), errors=[{"field": exc.field, "reason": exc.reason}]
        ) from None
    if event is not None:
        # Twilio's ids are unique, so the same id again is a redelivery, which differs
        # only in when it was received (these callbacks carry no time of their own).
        with contextlib.suppress(IdempotencyConflict):
            counted(request, await run_in_threadpool(svc.store.append_batch, [event]))
    return Response('<?xml version="1.0" encoding="UTF-8"?><Response/>', media_type="text/xml")


def _public_url(request: Request, svc: Service) -> str:
    """The URL the sender signed: the configured public base URL with this request's path
    and query, else the URL as this server received it."""
    base = svc.settings.public_url
    if not base:
        return str(request.url)
    query = f"?{request.url.query}" if request.url.query else ""
    return base.rstrip("/") + request.url.path + query
