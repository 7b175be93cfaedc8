"""GET and POST /v1/connectors/x on the real app and database: the CRC challenge is
answered, signed deliveries reach the log once with replies in their post's thread, and
unsigned or malformed ones are refused and write nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
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
from tests.connectors.test_x import SECRET, fixture
from tests.helpers import count_events

PATH = "/v1/connectors/x"


@pytest.fixture
def http(pool: ConnectionPool[Any], database_url: str) -> Iterator[TestClient]:
    settings = Settings(database_url=database_url, x_consumer_secret=SECRET)
    with TestClient(create_app(settings, pool=pool, projector=False)) as client:
        yield client


def signed(body: bytes, secret: str = SECRET) -> str:
    return (
        "sha256="
        + base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    )


def deliver(http: TestClient, payload: Any, *, signature: str | None = None) -> Any:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "x-twitter-webhooks-signature": signature or signed(body),
    }
    return http.post(PATH, content=body, headers=headers)


def test_the_crc_challenge_is_answered_with_the_hmac_of_its_token(http: TestClient) -> None:
    answer = http.get(PATH, params={"crc_token": "Y2hhbGxlbmdl"})
    assert answer.status_code == 200
    expected = signed(b"Y2hhbGxlbmdl")
    assert answer.json() == {"response_token": expected}
    missing = http.get(PATH)
    assert missing.status_code == 422
    assert missing.json()["errors"][0]["field"] == "crc_token"


def test_a_conversation_on_x_is_one_thread_in_the_customers_timeline(
    http: TestClient, store: Store, pool: ConnectionPool[Any]
) -> None:
    for name in ("mention", "our_reply", "customer_reply", "direct_messages"):
        answer = deliver(http, fixture(name))
        assert answer.status_code == 201, (name, answer.text)
    ProjectionRunner(store, all_projections()).catch_up()
    with pool.connection() as conn:
        customer = views.lookup_customer(conn, "twitter:2222222222")
        assert customer is not None
        items = views.timeline(conn, customer)
    assert [(i.type, i.direction) for i in items] == [  # newest first, by when written
        ("tweet.received", "inbound"),  # 10:02, the reply to our reply
        ("tweet.sent", "outbound"),  # 09:55, our reply
        ("tweet.sent", "outbound"),  # 09:51, the direct messages
        ("tweet.received", "inbound"),  # 09:46
        ("tweet.received", "inbound"),  # 09:41, the first mention
    ]
    public = {items[i].conversation_id for i in (0, 1, 4)}
    assert len(public) == 1  # the mention, our reply and theirs: one conversation
    assert {i.conversation_id for i in items[2:4]}.isdisjoint(public)


def test_a_delivery_is_stored_once_however_often_it_comes(
    http: TestClient, database_url: str
) -> None:
    payload = fixture("direct_messages")
    assert deliver(http, payload).status_code == 201
    with ThreadPoolExecutor(8) as threads:
        answers = list(threads.map(lambda _: deliver(http, payload).status_code, range(8)))
    assert answers == [200] * 8
    assert count_events(database_url) == 2


def test_activity_that_is_not_an_interaction_is_acknowledged(
    http: TestClient, database_url: str
) -> None:
    answer = deliver(http, fixture("not_interactions"))
    assert answer.status_code == 200
    assert answer.json()["events"] == []
    assert count_events(database_url) == 0


@pytest.mark.parametrize(
    "signature",
    [signed(b"something else"), signed(b"{}", "another secret"), "sha256="],
    ids=["other-body", "other-secret", "empty"],
)
def test_a_delivery_not_signed_with_our_secret_is_refused(
    http: TestClient, database_url: str, signature: str
) -> None:
    answer = deliver(http, fixture("mention"), signature=signature)
    assert answer.status_code == 403
    assert answer.headers["content-type"] == "application/problem+json"
    assert count_events(database_url) == 0


def test_an_unsigned_delivery_is_refused(http: TestClient, database_url: str) -> None:
    answer = http.post(PATH, content=json.dumps(fixture("mention")))
    assert answer.status_code == 403
    assert count_events(database_url) == 0


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"[1, 2", 400, None),
        ({"tweet_create_events": []}, 422, "for_user_id"),
        (
            fixture("mention")
            | {
                "tweet_create_events": [*fixture("mention")["tweet_create_events"], {"id_str": "7"}]
            },
            422,
            "tweet_create_events.1.user",
        ),
    ],
    ids=["not-json", "no-account", "second-post-malformed"],
)
def test_a_malformed_delivery_is_refused_whole_and_writes_nothing(
    http: TestClient, database_url: str, body: Any, status: int, field: str | None
) -> None:
    answer = deliver(http, body)
    assert answer.status_code == status, answer.text
    if field is not None:
        assert answer.json()["errors"] == [{"field": field, "reason": "required"}]
    assert count_events(database_url) == 0


def test_without_a_secret_the_route_is_off(pool: ConnectionPool[Any], database_url: str) -> None:
    app = create_app(Settings(database_url=database_url), pool=pool, projector=False)
    with TestClient(app) as client:
        assert client.get(PATH, params={"crc_token": "x"}).status_code == 404
