"""POST /v1/connectors/twilio/voice and /sms on the real app and database: signed
callbacks are recorded once however often Twilio redelivers them, unsigned or malformed
ones are refused and write nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg_pool import ConnectionPool

from interaction_store import feeds
from interaction_store.api import create_app
from interaction_store.connectors.twilio import signature
from interaction_store.settings import Settings
from tests.connectors.test_twilio import CALL, INBOUND_SMS, RECORDED
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


def test_a_voicemail_is_the_calls_record_and_its_final_status_adds_nothing(
    http: TestClient, database_url: str
) -> None:
    assert post(http, "/v1/connectors/twilio/voicemail", RECORDED).status_code == 200
    assert post(http, "/v1/connectors/twilio/voicemail", RECORDED).status_code == 200
    # The call ends after the <Record> action answered: its status callback comes last.
    assert post(http, "/v1/connectors/twilio/voice", CALL).status_code == 200
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT type, payload->>'status' FROM events").fetchall()
    assert rows == [("call.completed", "voicemail")]


def sms_conversations(database_url: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT payload->>'conversation_id' FROM events ORDER BY position")
        return [row[0] for row in rows]


def test_an_sms_after_the_idle_gap_starts_a_new_conversation(
    pool: ConnectionPool[Any], database_url: str
) -> None:
    settings = Settings(
        database_url=database_url,
        twilio_auth_token=TOKEN,
        public_url=BASE,
        sms_idle_gap=timedelta(seconds=1),
    )
    path = "/v1/connectors/twilio/sms"
    with TestClient(create_app(settings, pool=pool, projector=False)) as http:
        assert post(http, path, INBOUND_SMS).status_code == 200
        reply = {
            "MessageSid": "SM00000000000000000000000000000002",
            "MessageStatus": "delivered",
            "From": INBOUND_SMS["To"],
            "To": INBOUND_SMS["From"],
        }
        assert post(http, path, reply).status_code == 200  # within the gap: same one
        time.sleep(1.5)
        assert post(http, path, INBOUND_SMS).status_code == 200  # a redelivery: no new one
        later = {**INBOUND_SMS, "MessageSid": "SM00000000000000000000000000000003"}
        assert post(http, path, later).status_code == 200
    first, second, third = sms_conversations(database_url)
    assert first == second
    assert third != first


def test_concurrent_messages_of_one_pair_agree_on_one_session(database_url: str) -> None:
    start = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    gap = timedelta(minutes=30)

    def session(minute: int) -> str:
        with psycopg.connect(database_url, autocommit=True) as conn:
            return feeds.sms_session(
                conn, "+16285550187|+14155550100", start + timedelta(minutes=minute), gap
            )

    with ThreadPoolExecutor(8) as threads:
        morning = set(threads.map(session, [0, 1, 2, 3, 4, 5, 6, 7]))
    assert len(morning) == 1
    assert session(20) in morning  # 13 minutes after the last: the same conversation
    (afternoon,) = {session(m) for m in (300, 301)}
    assert afternoon not in morning
    assert afternoon.endswith("|20261130T140000Z")
