"""The email feed over HTTP: one raw message per request, from a mail server's pipe.

The other connectors' webhooks, which prove themselves by a signature or a shared secret
instead of an API key, are in ``twilio``, ``chatwoot`` and ``x``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from interaction_store.api.app import Service
from interaction_store.api.deps import Appender, Svc
from interaction_store.api.problems import Problem
from interaction_store.api.routes.appends import APPENDED, append_answer, counted, read_body
from interaction_store.connectors.email import EmailSource, MalformedEmail, email_event

__all__ = ["public_url", "router"]

router = APIRouter(tags=["connectors"])


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


def public_url(request: Request, svc: Service) -> str:
    """The URL a webhook's sender signed: the configured public base URL with this
    request's path and query, else the URL as this server received it."""
    base = svc.settings.public_url
    if not base:
        return str(request.url)
    query = f"?{request.url.query}" if request.url.query else ""
    return base.rstrip("/") + request.url.path + query
