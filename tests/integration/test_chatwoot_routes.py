"""POST /v1/connectors/chatwoot on the real app and database: a chat reaches the log once
however often Chatwoot redelivers it, the visitor joins the customer who owns the email
Chatwoot knows for them, and a request without the shared secret writes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from psycopg_pool import ConnectionPool

from interaction_store import views
from interaction_store.api import create_app
from interaction_store.projections import ProjectionRunner, all_projections
from interaction_store.settings import Settings
from interaction_store.store import Store
from tests.connectors.test_chatwoot import fixture
from tests.helpers import count_events

SECRET = "chatwoot-shared-secret-7f3a"
PATH = "/v1/connectors/chatwoot"


@pytest.fixture
def http(pool: ConnectionPool[Any], database_url: str) -> Iterator[TestClient]:
    settings = Settings(database_url=database_url, chatwoot_secret=SECRET)
    with TestClient(create_app(settings, pool=pool, projector=False)) as client:
        yield client


def deliver(http: TestClient, payload: Any, *, secret: str | None = SECRET) -> Any:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Webhook-Secret"] = secret
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return http.post(PATH, content=body, headers=headers)


def project(store: Store) -> None:
    ProjectionRunner(store, all_projections()).catch_up()


def test_a_chat_is_stored_once_however_often_it_is_delivered(
    http: TestClient, database_url: str
) -> None:
    payload = fixture("message_created_anonymous")
    first = deliver(http, payload)
    assert first.status_code == 201, first.text
    with ThreadPoolExecutor(8) as threads:  # Chatwoot retrying, all at once
        answers = list(threads.map(lambda _: deliver(http, payload).status_code, range(8)))
    assert answers == [200] * 8
    assert count_events(database_url) == 1


def test_the_visitor_joins_the_customer_who_owns_the_email_chatwoot_knows(
    http: TestClient, store: Store, pool: ConnectionPool[Any]
) -> None:
    store.append_batch(
        [
            {
                "type": "customer.registered",
                "occurred_at": "2026-11-01T09:00:00Z",
                "data": {
                    "customer_id": "cu-margaret",
                    "name": "Margaret Chen",
                    "contacts": ["email:margaret.chen@northwind.example"],
                },
            }
        ]
    )
    project(store)
    answer = deliver(http, fixture("message_created_incoming"))
    assert answer.status_code == 201, answer.text
    assert len(answer.json()["events"]) == 2  # the message and the link
    assert deliver(http, fixture("message_created_outgoing")).status_code == 201
    project(store)
    with pool.connection() as conn:
        assert views.lookup_customer(conn, "chat:chatwoot-1-77") == "cu-margaret"
        items = views.timeline(conn, "cu-margaret")
        link = conn.execute(
            "SELECT confidence, source FROM identities WHERE kind = 'chat'"
        ).fetchone()
    assert [(i.type, i.direction) for i in items] == [
        ("chat.message", "outbound"),
        ("chat.message", "inbound"),
    ]
    assert link == ("verified", "chatwoot")
    # Already linked: the next message links nothing again.
    again = fixture("message_created_incoming") | {"id": 4830}
    assert len(deliver(http, again).json()["events"]) == 1


def test_a_contact_update_links_an_anonymous_visitor_later(
    http: TestClient, store: Store, pool: ConnectionPool[Any]
) -> None:
    assert deliver(http, fixture("message_created_anonymous")).status_code == 201
    store.append_batch(
        [
            {
                "type": "email.received",
                "occurred_at": "2026-11-29T08:00:00Z",
                "data": {
                    "contact": "email:tomas@ibanez.example",
                    "external_id": "support:<t1@ibanez.example>",
                    "subject": "Factura",
                },
            }
        ]
    )
    project(store)
    with pool.connection() as conn:
        emailer = views.lookup_customer(conn, "email:tomas@ibanez.example")
        assert views.lookup_customer(conn, "chat:chatwoot-1-912") != emailer
    update = deliver(http, fixture("contact_updated"))
    assert update.status_code == 201, update.text
    project(store)
    with pool.connection() as conn:
        assert views.lookup_customer(conn, "chat:chatwoot-1-912") == emailer
        channels = {item.channel for item in views.timeline(conn, emailer)}
    assert channels == {"chat", "email"}
    assert deliver(http, fixture("contact_updated")).status_code == 200  # linked already
    # When a customer claims the email later, the chat visitor linked to it goes along.
    store.append_batch(
        [
            {
                "type": "customer.registered",
                "occurred_at": "2026-11-30T12:00:00Z",
                "data": {"customer_id": "cu-tomas", "contacts": ["email:tomas@ibanez.example"]},
            }
        ]
    )
    project(store)
    with pool.connection() as conn:
        assert views.lookup_customer(conn, "chat:chatwoot-1-912") == "cu-tomas"
        assert {item.channel for item in views.timeline(conn, "cu-tomas")} == {"chat", "email"}


def test_resolving_in_chatwoot_resolves_the_conversation(
    http: TestClient, store: Store, pool: ConnectionPool[Any]
) -> None:
    assert deliver(http, fixture("message_created_incoming")).status_code == 201
    assert deliver(http, fixture("conversation_resolved")).status_code == 201
    assert deliver(http, fixture("conversation_resolved")).status_code == 200
    project(store)
    with pool.connection() as conn:
        (conversation,) = conn.execute("SELECT status FROM conversations").fetchall()
    assert conversation == ("resolved",)
    assert deliver(http, fixture("conversation_reopened")).status_code == 201
    project(store)
    with pool.connection() as conn:
        assert conn.execute("SELECT status FROM conversations").fetchone() == ("open",)


@pytest.mark.parametrize("secret", [None, "wrong", SECRET + "x"], ids=["none", "wrong", "longer"])
def test_a_request_without_the_secret_is_refused_and_writes_nothing(
    http: TestClient, database_url: str, secret: str | None
) -> None:
    answer = deliver(http, fixture("message_created_incoming"), secret=secret)
    assert answer.status_code == 403
    assert answer.headers["content-type"] == "application/problem+json"
    assert count_events(database_url) == 0


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, None),
        ({"event": "message_created", "id": 5}, 422, "message_type"),
        (
            fixture("message_created_incoming") | {"content": "nul \u0000 byte"},
            422,
            "events[0].data.text",
        ),
    ],
    ids=["not-json", "missing-field", "nul"],
)
def test_a_malformed_webhook_is_refused_with_its_reason_and_writes_nothing(
    http: TestClient, database_url: str, body: Any, status: int, field: str | None
) -> None:
    answer = deliver(http, body)
    assert answer.status_code == status, answer.text
    if field is not None:
        assert field in {error["field"] for error in answer.json()["errors"]}
    assert count_events(database_url) == 0


def test_without_a_secret_the_route_is_off(pool: ConnectionPool[Any], database_url: str) -> None:
    app = create_app(Settings(database_url=database_url), pool=pool, projector=False)
    with TestClient(app) as client:
        assert deliver(client, fixture("message_created_incoming")).status_code == 404


def test_odd_ids_and_addresses_beside_known_contacts_are_refused_or_passed_over(
    http: TestClient, database_url: str
) -> None:
    """What Chatwoot holds is what visitors typed: a visitor id that is none, or an email
    holding a NUL, is never a 500."""
    message = fixture("message_created_incoming")
    message["conversation"]["meta"]["sender"]["id"] = "a b"  # and Chatwoot knows an email
    refused = deliver(http, message)
    assert refused.status_code == 422, refused.text
    assert any("contact" in error["field"] for error in refused.json()["errors"])
    update = fixture("contact_updated")
    update["email"], update["phone_number"] = "sam@example.com\x00", None
    passed_over = deliver(http, update)  # no known contact is an address: nothing to link
    assert passed_over.status_code == 200, passed_over.text
    assert count_events(database_url) == 0
