"""Chatwoot's webhooks: chat messages, status changes and contact updates of any
Chatwoot installation. Chatwoot sends no API key: the route is protected by a shared
secret in the ``X-Webhook-Secret`` header."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import uuid5

import orjson
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from interaction_store import feeds
from interaction_store.api.app import Service
from interaction_store.api.deps import Svc
from interaction_store.api.models import problems
from interaction_store.api.problems import Problem
from interaction_store.api.routes.appends import STORED, append_answer, counted, read_body
from interaction_store.connectors.chatwoot import (
    ChatwootDelivery,
    ChatwootPayloadError,
    map_webhook,
    secret_is_valid,
)
from interaction_store.events import EVENT_NAMESPACE
from interaction_store.exceptions import IdempotencyConflict
from interaction_store.projections.timeline import is_provisional
from interaction_store.store import AppendResult

__all__ = ["SECRET_HEADER", "router"]

SECRET_HEADER = "X-Webhook-Secret"

router = APIRouter(tags=["connectors"])


@router.post(
    "/v1/connectors/chatwoot",
    status_code=201,
    response_model=None,
    responses={
        **STORED,
        **problems(400, 403, 413, 422, described_as={403: "X-Webhook-Secret is missing or wrong."}),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        "parameters": [
            {"name": SECRET_HEADER, "in": "header", "required": True, "schema": {"type": "string"}}
        ],
    },
)
async def chatwoot(request: Request, svc: Svc) -> Response:
    """A Chatwoot webhook (``message_created``, ``conversation_status_changed``,
    ``contact_updated``; other events are acknowledged and ignored). When Chatwoot knows
    the visitor's email or phone, the visitor is linked (verified) to the customer who
    owns it, so the chat joins that customer's timeline."""
    secret = svc.settings.chatwoot_secret
    assert secret is not None  # the route exists only with a secret
    body = await read_body(request, svc)
    if not secret_is_valid(secret.get_secret_value(), request.headers.get(SECRET_HEADER)):
        raise Problem(403, "Forbidden", f"{SECRET_HEADER} is missing or wrong")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Problem(400, "Bad request", f"the body is not JSON: {exc}") from None
    try:
        delivery = map_webhook(payload)
    except ChatwootPayloadError as exc:
        raise Problem(
            422, "Invalid request", str(exc), errors=[{"field": exc.field, "reason": exc.reason}]
        ) from None
    result = await run_in_threadpool(_append, svc, delivery)
    if result is None:
        return append_answer(AppendResult(()))
    return append_answer(counted(request, result))


def _append(svc: Service, delivery: ChatwootDelivery) -> AppendResult | None:
    events: list[dict[str, Any]] = list(delivery.events)
    link = None
    if delivery.visitor is not None and delivery.known_contacts:
        link = _link(svc, delivery.visitor, delivery.known_contacts)
    if link is None:
        return svc.store.append_batch(events) if events else None
    try:
        return svc.store.append_batch([*events, link])
    except IdempotencyConflict:
        # Another delivery stored the same link a moment ago (with its own time).
        return svc.store.append_batch(events) if events else None


def _link(svc: Service, visitor: str, known: list[str]) -> dict[str, Any] | None:
    """``customer.identity_linked`` of the visitor to the owner of its first known contact
    that a customer claims (else of the first one's provisional customer); None when the
    visitor is linked there already, or no known contact is a valid address."""
    region = svc.settings.default_phone_region
    owners: list[str] = []
    with svc.connection() as conn:
        keyring = svc.store.sealer.keyring(conn)
        for contact in known:
            try:
                owners.append(feeds.owner_of(conn, contact, keyring, phone_region=region))
            except ValueError:
                continue  # Chatwoot holds what the visitor typed: not always an address
        if not owners:
            return None
        claimed = [owner for owner in owners if not is_provisional(owner)]
        owner = (claimed or owners)[0]
        try:
            current = feeds.owner_of(conn, visitor, keyring)
        except ValueError:  # not a visitor id: the message itself is refused, naming it
            return None
        if current == owner:
            return None  # linked already
        # One id per move (from whom to whom): a redelivery, or another message before the
        # views caught up, repeats it; a move back later is a new one.
        link_id = uuid5(EVENT_NAMESPACE, f"chatwoot-link:{visitor}:{current}->{owner}")
        if feeds.is_stored(conn, link_id):
            return None
    return {
        "id": str(link_id),
        "type": "customer.identity_linked",
        "occurred_at": datetime.now(UTC).isoformat(),
        "data": {
            "customer_id": owner,
            "contact": visitor,
            "confidence": "verified",
            "source": "chatwoot",
            "reason": "the visitor's contact details in Chatwoot",
        },
        "metadata": {"connector": "chatwoot"},
    }
