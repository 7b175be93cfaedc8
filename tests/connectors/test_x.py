"""X's Account Activity webhook, mapped field by field, with payloads written from X's
Account Activity data objects (tweet_create_events, direct_message_events, users)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from interaction_store.connectors.x import (
    XPayloadError,
    crc_response_token,
    map_activity,
    signature_is_valid,
)
from interaction_store.events import parse_events

FIXTURES = Path(__file__).parent / "fixtures" / "x"
SECRET = "consumer-secret-0123456789"


def fixture(name: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return payload


def test_the_crc_answer_and_the_signature_follow_the_documented_algorithm() -> None:
    expected = base64.b64encode(
        hmac.new(SECRET.encode(), b"challenge-42", hashlib.sha256).digest()
    ).decode()
    assert crc_response_token(SECRET, "challenge-42") == f"sha256={expected}"
    body = json.dumps(fixture("mention")).encode()
    signed = (
        "sha256="
        + base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
    )
    assert signature_is_valid(SECRET, body, signed)
    assert not signature_is_valid(SECRET, body + b" ", signed)
    assert not signature_is_valid("another-secret", body, signed)
    assert not signature_is_valid(SECRET, body, None)
    assert not signature_is_valid(SECRET, body, "sha256=é")


def test_a_mention_is_received_from_the_authors_user_id() -> None:
    (event,) = map_activity(fixture("mention"))
    assert event["type"] == "tweet.received"
    assert event["occurred_at"] == "2026-11-30T09:41:07+00:00"
    data = event["data"]
    assert data["kind"] == "mention"
    assert data["contact"] == {"kind": "twitter", "value": "2222222222"}
    assert data["handle"] == "DevPatel_NYC"
    assert data["external_id"] == "x:tweet:1863000000000000001"
    assert data["thread_key"] == "x:1863000000000000001"  # a new post starts a thread
    assert data["text"].endswith("reading these? 😤")
    assert data["attributes"] == {"lang": "en"}
    (model,) = parse_events([event])
    assert str(model.data.contact) == "twitter:2222222222"


def test_our_reply_is_sent_to_the_customer_in_the_thread_of_their_post() -> None:
    threads = {"1863000000000000001": "x:1863000000000000001"}
    (event,) = map_activity(fixture("our_reply"), thread_of=threads.get)
    assert event["type"] == "tweet.sent"
    assert event["data"]["kind"] == "reply"
    assert event["data"]["contact"] == {"kind": "twitter", "value": "2222222222"}
    assert event["data"]["handle"] == "DevPatel_NYC"
    assert event["data"]["thread_key"] == "x:1863000000000000001"
    assert event["data"]["attributes"]["in_reply_to_status_id"] == "1863000000000000001"
    parse_events([event])


def test_a_reply_to_our_reply_stays_in_the_thread_and_keeps_its_full_text() -> None:
    threads = {"1863000000000000002": "x:1863000000000000001"}
    (event,) = map_activity(fixture("customer_reply"), thread_of=threads.get)
    assert event["type"] == "tweet.received"
    assert event["data"]["kind"] == "reply"
    assert event["data"]["thread_key"] == "x:1863000000000000001"
    assert event["data"]["text"].endswith("find the fault.")  # extended_tweet.full_text


def test_a_reply_whose_parent_is_unknown_is_threaded_on_the_parent() -> None:
    (event,) = map_activity(fixture("customer_reply"))
    assert event["data"]["thread_key"] == "x:1863000000000000002"


def test_the_posts_conversation_id_wins_when_x_sends_one() -> None:
    (event,) = map_activity(fixture("v2_post_with_conversation"), thread_of=lambda _: "x:other")
    assert event["data"]["thread_key"] == "x:1862999999999999000"
    assert event["data"]["kind"] == "mention"  # it replies to someone else
    assert event["occurred_at"] == "2026-11-30T11:00:00+00:00"


def test_direct_messages_both_ways_are_one_conversation() -> None:
    received, sent = map_activity(fixture("direct_messages"))
    assert received["type"] == "tweet.received"
    assert sent["type"] == "tweet.sent"
    for event in (received, sent):
        assert event["data"]["kind"] == "direct_message"
        assert event["data"]["contact"] == {"kind": "twitter", "value": "2222222222"}
        assert event["data"]["handle"] == "DevPatel_NYC"
        assert event["data"]["thread_key"] == "x:dm:1111111111-2222222222"
    assert received["data"]["external_id"] == "x:dm:1863000000000000100"
    assert received["data"]["text"] == "Account 88-1203-77. Thanks"
    assert received["occurred_at"] == "2026-11-30T09:46:40+00:00"
    parse_events([received, sent])


def test_likes_reposts_typing_and_our_broadcasts_are_not_interactions() -> None:
    assert map_activity(fixture("not_interactions")) == []


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ([], "body"),
        ({"tweet_create_events": []}, "for_user_id"),
        ({"for_user_id": "1", "tweet_create_events": {}}, "tweet_create_events"),
        ({"for_user_id": "1", "tweet_create_events": ["x"]}, "tweet_create_events.0"),
        (
            {"for_user_id": "1", "tweet_create_events": [{"id_str": "9"}]},
            "tweet_create_events.0.user",
        ),
        (
            {"for_user_id": "1", "tweet_create_events": [{"id_str": "9", "user": {"id_str": "2"}}]},
            "tweet_create_events.0.created_at",
        ),
        (
            {
                "for_user_id": "1",
                "tweet_create_events": [
                    {"id_str": "9", "user": {"id_str": "2"}, "created_at": "last Tuesday"}
                ],
            },
            "tweet_create_events.0.created_at",
        ),
        (
            {
                "for_user_id": "1",
                "direct_message_events": [
                    {
                        "type": "message_create",
                        "id": "5",
                        "created_timestamp": "1",
                        "message_create": {"sender_id": "2"},
                    }
                ],
            },
            "direct_message_events.0.message_create.target.recipient_id",
        ),
        (
            {
                "for_user_id": "1",
                "direct_message_events": [
                    {
                        "type": "message_create",
                        "id": "5",
                        "created_timestamp": "soon",
                        "message_create": {"sender_id": "2", "target": {"recipient_id": "1"}},
                    }
                ],
            },
            "direct_message_events.0.created_timestamp",
        ),
    ],
)
def test_a_malformed_delivery_names_the_field(payload: Any, field: str) -> None:
    with pytest.raises(XPayloadError) as caught:
        map_activity(payload)
    assert caught.value.field == field
