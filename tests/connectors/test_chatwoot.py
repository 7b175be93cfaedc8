"""Chatwoot's webhooks, mapped field by field, with payloads written from the fields of
Chatwoot's webhook documentation (message, conversation and contact objects)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from interaction_store.connectors.chatwoot import (
    ChatwootPayloadError,
    map_webhook,
    secret_is_valid,
)
from interaction_store.events import derive_conversation_id, parse_events

FIXTURES = Path(__file__).parent / "fixtures" / "chatwoot"


def fixture(name: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return payload


def test_an_incoming_message_is_the_visitors_chat_message() -> None:
    delivery = map_webhook(fixture("message_created_incoming"))
    (event,) = delivery.events
    assert event["type"] == "chat.message"
    assert event["occurred_at"] == "2026-11-30T10:15:02.318000+00:00"
    data = event["data"]
    assert data["direction"] == "inbound"
    assert data["contact"] == "chat:chatwoot-1-77"
    assert data["external_id"] == "chatwoot:1:message:4821"
    assert data["thread_key"] == "chatwoot:1:311"
    assert data["text"] == "Bonjour — my parcel from order #A-1043 hasn't arrived 📦"
    assert data["attributes"] == {"inbox": "Website chat", "channel_type": "Channel::WebWidget"}
    assert "agent_id" not in data
    assert delivery.visitor == "chat:chatwoot-1-77"
    assert delivery.known_contacts == [
        "email:Margaret.Chen@northwind.example",
        "phone:+14155550142",
    ]
    (model,) = parse_events(delivery.events)  # fits the catalogue
    assert str(model.data.contact) == "chat:chatwoot-1-77"


def test_an_agents_reply_is_outbound_in_the_same_conversation() -> None:
    incoming = map_webhook(fixture("message_created_incoming")).events[0]
    (reply,) = map_webhook(fixture("message_created_outgoing")).events
    assert reply["data"]["direction"] == "outbound"
    assert reply["data"]["agent_id"] == "priya.nair@acme.example"
    assert reply["data"]["contact"] == incoming["data"]["contact"]  # still the visitor
    assert reply["data"]["thread_key"] == incoming["data"]["thread_key"]
    assert reply["occurred_at"] == "2026-11-30T10:17:45+00:00"  # "... UTC" form
    parse_events([reply])


@pytest.mark.parametrize("name", ["message_created_private_note", "message_created_activity"])
def test_private_notes_and_activity_messages_are_not_interactions(name: str) -> None:
    assert map_webhook(fixture(name)).events == []


def test_a_visitor_chatwoot_knows_nothing_about_has_no_known_contacts() -> None:
    delivery = map_webhook(fixture("message_created_anonymous"))
    (event,) = delivery.events
    assert event["occurred_at"] == "2026-11-30T12:00:00+00:00"  # Unix seconds
    assert event["data"]["attributes"] == {}  # no inbox named
    assert delivery.known_contacts == []
    parse_events(delivery.events)


def test_resolving_ends_the_chat_and_resolves_its_conversation() -> None:
    delivery = map_webhook(fixture("conversation_resolved"))
    ended, resolved = delivery.events
    conversation = derive_conversation_id("chat", "chatwoot:1:311")
    assert ended["type"] == "chat.ended"
    assert ended["data"]["ended_by"] == "agent"
    assert ended["data"]["agent_id"] == "priya.nair@acme.example"
    assert ended["data"]["thread_key"] == "chatwoot:1:311"
    assert resolved["type"] == "conversation.resolved"
    assert resolved["data"] == {
        "conversation_id": conversation,
        "agent_id": "priya.nair@acme.example",
        "reason": "Chatwoot",
    }
    assert resolved["occurred_at"] == "2026-11-30T10:20:00+00:00"
    models = parse_events(delivery.events)
    assert models[0].data.conversation_id is None  # derived from the thread on append
    assert delivery.known_contacts == [
        "email:Margaret.Chen@northwind.example",
        "phone:+14155550142",
    ]


def test_a_redelivered_resolution_is_the_same_events_and_a_later_one_is_new() -> None:
    first = map_webhook(fixture("conversation_resolved")).events
    again = map_webhook(fixture("conversation_resolved")).events
    assert [e["id"] for e in first] == [e["id"] for e in again]
    later = fixture("conversation_resolved")
    later["timestamp"] += 3600
    assert {e["id"] for e in map_webhook(later).events}.isdisjoint(e["id"] for e in first)


def test_reopening_reopens_and_pending_records_nothing() -> None:
    (reopened,) = map_webhook(fixture("conversation_reopened")).events
    assert reopened["type"] == "conversation.reopened"
    assert reopened["data"]["conversation_id"] == derive_conversation_id("chat", "chatwoot:1:311")
    assert "agent_id" not in reopened["data"]
    pending = fixture("conversation_reopened") | {"status": "pending"}
    assert map_webhook(pending).events == []


def test_a_contact_update_gives_only_the_contacts() -> None:
    delivery = map_webhook(fixture("contact_updated"))
    assert delivery.events == []
    assert delivery.visitor == "chat:chatwoot-1-912"
    assert delivery.known_contacts == ["email:tomas@ibanez.example", "phone:+34 612 345 678"]


def test_a_huge_message_is_kept_whole_for_the_store_to_judge() -> None:
    payload = fixture("message_created_incoming")
    payload["content"] = "ü" * 300_000
    (event,) = map_webhook(payload).events
    assert len(event["data"]["text"]) == 300_000


def test_other_events_are_ignored() -> None:
    assert map_webhook({"event": "webwidget_triggered", "id": 1}).events == []


def _without(payload: dict[str, Any], *path: str) -> dict[str, Any]:
    payload = copy.deepcopy(payload)
    target = payload
    for name in path[:-1]:
        target = target[name]
    del target[path[-1]]
    return payload


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ([], "body"),
        ({"id": 1}, "event"),
        ({"event": "message_created", "id": 1, "message_type": "bot"}, "message_type"),
        (_without(fixture("message_created_incoming"), "account"), "account.id"),
        (_without(fixture("message_created_incoming"), "id"), "id"),
        (_without(fixture("message_created_incoming"), "created_at"), "created_at"),
        (fixture("message_created_incoming") | {"created_at": "yesterday"}, "created_at"),
        (fixture("message_created_incoming") | {"conversation": "311"}, "conversation"),
        (
            _without(
                _without(fixture("message_created_incoming"), "conversation", "meta"),
                "conversation",
                "contact_inbox",
            ),
            "conversation.meta.sender.id",
        ),
        (_without(fixture("conversation_resolved"), "account_id"), "account.id"),
        (_without(fixture("conversation_resolved"), "timestamp"), "timestamp"),
    ],
)
def test_a_malformed_webhook_names_the_field(payload: Any, field: str) -> None:
    if field == "timestamp":
        payload = _without(payload, "created_at")
    with pytest.raises(ChatwootPayloadError) as caught:
        map_webhook(payload)
    assert caught.value.field == field


def test_the_shared_secret_is_compared_whole() -> None:
    assert secret_is_valid("s3cret-value", "s3cret-value")
    assert not secret_is_valid("s3cret-value", "s3cret")
    assert not secret_is_valid("s3cret-value", None)
    assert not secret_is_valid("s3cret-value", "s3cret-valué")
