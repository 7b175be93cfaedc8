"""Webhooks and inbound feeds of the channel connectors: each maps what the source sends
to events (``interaction_store.connectors``) and appends them, idempotently."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from interaction_store.api.deps import Appender, Svc
from interaction_store.api.problems import Problem
from interaction_store.api.routes.appends import APPENDED, append_answer, counted, read_body
from interaction_store.connectors.email import EmailSource, MalformedEmail, email_event

__all__ = ["router"]

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
    try:
        event = email_event(raw, source)
    except MalformedEmail as exc:
        raise Problem(
            422, "Invalid message", str(exc), errors=[{"field": "body", "reason": str(exc)}]
        ) from None
    result = await run_in_threadpool(svc.store.append_batch, [event])
    return append_answer(counted(request, result))
