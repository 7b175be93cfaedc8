"""POST /v1/connectors/twilio/voice and /sms on the real app and database: signed
callbacks are recorded once however often Twilio redelivers them, unsigned or malformed
ones are refused and write nothing."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from psycopg_pool import ConnectionPool

from interaction_store.api import create_app
from interaction_store.connectors.twilio import signature
from interaction_store.settings import Settings
from tests.connectors.test_twilio import CALL, INBOUND_SMS
from tests.helpers import count_events

TOKEN = "0123456789abcdef0123456789abcdef"
BASE = "https://store.example.com"


@pytest.fixture
def http(pool: ConnectionPool[Any], database_url: str) -> Iterator[TestClient]:
    settings = Settings(database_url=database_url, twilio_auth_token=TOKEN, public_url=BASE)
    with TestClient(create_app(settings, pool=pool, projector=False)) as client:
        yield client


def post(http: TestClient, path: str, params: dict[str, str], *, token: str = TOKEN) -> Any:
    pairs = list(params.items())
    return http.post(
        path,
        content=urlencode(pairs),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature(token, BASE + path, pairs),
        },
    )


def test_a_signed_call_callback_is_recorded_once_however_often_it_comes(
    http: TestClient, database_url: str
) -> None:
    path = "/v1/connectors/twilio/voice"
    assert post(http, path, {**CALL, "CallStatus": "ringing"}).status_code == 200
    assert count_events(database_url) == 0  # nothing to record yet
    first = post(http, path, CALL)
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("text/xml")
    with ThreadPoolExecutor(8) as pool:  # Twilio retrying, all at once
        answers = list(pool.map(lambda _: post(http, path, CALL).status_code, range(8)))
    assert answers == [200] * 8
    assert count_events(database_url) == 1


def test_sms_in_and_out_are_recorded_once_each(http: TestClient, database_url: str) -> None:
    path = "/v1/connectors/twilio/sms"
    assert post(http, path, INBOUND_SMS).status_code == 200
    assert post(http, path, INBOUND_SMS).status_code == 200
    callback = {
        "MessageSid": "SM00000000000000000000000000000001",
        "MessageStatus": "sent",
        "From": "+14155550100",
        "To": "+16285550187",
    }
    for status in ("queued", "sent", "delivered"):
        assert post(http, path, {**callback, "MessageStatus": status}).status_code == 200
    assert count_events(database_url) == 2


@pytest.mark.parametrize(
    ("token", "status"), [("not-the-token", 403), (None, 403)], ids=["wrong-token", "unsigned"]
)
def test_a_request_not_signed_by_twilio_is_refused(
    http: TestClient, database_url: str, token: str | None, status: int
) -> None:
    path = "/v1/connectors/twilio/voice"
    if token is None:
        answer = http.post(
            path,
            content=urlencode(CALL),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    else:
        answer = post(http, path, CALL, token=token)
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/problem+json"
    assert count_events(database_url) == 0


def test_a_malformed_callback_names_the_field_and_writes_nothing(
    http: TestClient, database_url: str
) -> None:
    answer = post(http, "/v1/connectors/twilio/voice", {**CALL, "CallSid": ""})
    assert answer.status_code == 422
    assert answer.json()["errors"] == [{"field": "CallSid", "reason": "required"}]
    assert count_events(database_url) == 0


def test_without_a_token_the_twilio_routes_are_off(
    pool: ConnectionPool[Any], database_url: str
) -> None:
    with TestClient(
        create_app(Settings(database_url=database_url), pool=pool, projector=False)
    ) as c:
        assert post(c, "/v1/connectors/twilio/voice", CALL).status_code == 404
