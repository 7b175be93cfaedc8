"""End to end: a customer who emails, calls, texts, chats and tweets, through the
connectors' own routes, appears as one customer with all five in one timeline: the chat
joins by the email Chatwoot knows, the phone and the X account once an agent links them."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode

from fastapi.testclient import TestClient
from psycopg_pool import ConnectionPool

from interaction_store.api import create_app
from interaction_store.connectors.twilio import signature
from interaction_store.keys import create_key
from interaction_store.settings import Settings
from tests.connectors.test_chatwoot import fixture as chatwoot_fixture
from tests.connectors.test_twilio import CALL, INBOUND_SMS
from tests.connectors.test_x import fixture as x_fixture
from tests.integration.test_x_routes import signed

TOKEN = "0123456789abcdef0123456789abcdef"
BASE = "https://store.example.com"
MAIL = (
    b"From: Sam Ortiz <sam@example.com>\r\nTo: help@acme.example\r\n"
    b"Subject: Where is my order?\r\nDate: Mon, 30 Nov 2026 09:00:00 +0000\r\n"
    b"Message-ID: <q1@example.com>\r\n\r\nIt was due yesterday.\r\n"
)


def twilio(http: TestClient, path: str, params: dict[str, str]) -> None:
    pairs = list(params.items())
    answer = http.post(
        path,
        content=urlencode(pairs),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature(TOKEN, BASE + path, pairs),
        },
    )
    assert answer.status_code == 200, answer.text


def test_email_call_and_sms_become_one_customers_timeline(
    pool: ConnectionPool[Any], database_url: str
) -> None:
    settings = Settings(
        database_url=database_url,
        support_addresses="help@acme.example",
        twilio_auth_token=TOKEN,
        public_url=BASE,
        chatwoot_secret="chat-secret",
        x_consumer_secret="consumer-secret-0123456789",
    )
    key, _ = create_key(pool, "agent desktop", ["admin"])
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings, pool=pool)) as http:
        mail = http.post(
            "/v1/connectors/email/inbound",
            content=MAIL,
            headers={**auth, "Content-Type": "message/rfc822"},
        )
        assert mail.status_code == 201, mail.text
        twilio(http, "/v1/connectors/twilio/voice", {**CALL, "From": "+16285550187"})
        twilio(http, "/v1/connectors/twilio/sms", {**INBOUND_SMS, "From": "+16285550187"})
        chat = chatwoot_fixture("message_created_anonymous")
        chat["conversation"]["meta"]["sender"]["email"] = "Sam@Example.com"
        answer = http.post(
            "/v1/connectors/chatwoot", json=chat, headers={"X-Webhook-Secret": "chat-secret"}
        )
        assert answer.status_code == 201, answer.text
        tweet = json.dumps(x_fixture("mention")).encode()
        answer = http.post(
            "/v1/connectors/x",
            content=tweet,
            headers={"x-twitter-webhooks-signature": signed(tweet)},
        )
        assert answer.status_code == 201, answer.text

        # Twilio's answers carry no position to wait for: poll until the call is projected.
        deadline = time.monotonic() + 10
        while (
            before := http.get(
                "/v1/customers/lookup", params={"identity": "phone:+16285550187"}, headers=auth
            )
        ).status_code == 404 and time.monotonic() < deadline:
            time.sleep(0.05)
        emailer = http.get(
            "/v1/customers/lookup",
            params={"identity": "email:sam@example.com", "min_position": mail.json()["position"]},
            headers=auth,
        ).json()["customer_id"]
        assert before.json()["customer_id"] != emailer  # two provisional customers so far

        registered = http.post(
            "/v1/events",
            json={
                "events": [
                    {
                        "type": "customer.registered",
                        "occurred_at": "2026-11-30T09:30:00Z",
                        "data": {"customer_id": "cu-sam", "name": "Sam Ortiz",
                                 "contacts": ["email:sam@example.com"]},
                    },
                    {
                        "type": "customer.identity_linked",
                        "occurred_at": "2026-11-30T09:31:00Z",
                        "data": {"customer_id": "cu-sam", "contact": "phone:+16285550187",
                                 "reason": "caller confirmed the order number"},
                    },
                    {
                        "type": "customer.identity_linked",
                        "occurred_at": "2026-11-30T09:32:00Z",
                        "data": {"customer_id": "cu-sam", "contact": "twitter:2222222222",
                                 "reason": "confirmed by DM"},
                    },
                ]
            },
            headers=auth,
        )  # fmt: skip
        assert registered.status_code == 201, registered.text
        timeline = http.get(
            "/v1/customers/cu-sam/timeline",
            params={"min_position": registered.json()["position"]},
            headers=auth,
        )
        assert timeline.status_code == 200, timeline.text
        items = timeline.json()["items"]
        assert sorted(i["channel"] for i in items) == ["chat", "email", "sms", "twitter", "voice"]
        assert {i["type"] for i in items} == {
            "email.received",
            "call.completed",
            "sms.received",
            "chat.message",
            "tweet.received",
        }
        for identity in ("email:sam@example.com", "phone:+1 628 555 0187"):
            found = http.get("/v1/customers/lookup", params={"identity": identity}, headers=auth)
            assert found.json()["customer_id"] == "cu-sam"
