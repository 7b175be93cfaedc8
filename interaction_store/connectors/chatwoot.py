"""Chatwoot: the webhooks of any Chatwoot installation to chat events.

Pure mappings of the JSON Chatwoot posts (field names as in Chatwoot's webhook payloads:
``event``, ``id``, ``content``, ``message_type``, ``sender``, ``conversation``,
``account``...) to wire-shaped events, plus the contacts Chatwoot knows for the visitor.

- ``message_created``: an ``incoming`` message is ``chat.message`` inbound; an
  ``outgoing`` or ``template`` one (an agent or a bot) is outbound. Private notes and
  ``activity`` messages ("Conversation was resolved by ...") are not interactions: None.
- ``conversation_status_changed``: ``resolved`` is ``chat.ended`` plus
  ``conversation.resolved``; ``open`` again is ``conversation.reopened``; ``pending`` and
  ``snoozed`` record nothing.
- ``contact_updated``: no event, only the contacts (email, phone) the contact now has.

The visitor is the contact ``chat:chatwoot-<account>-<contact id>``; the conversation is
the thread ``chatwoot:<account>:<conversation id>``; each message's id comes from its
Chatwoot id, so a redelivered webhook is the same event. The email and phone number
Chatwoot holds for the visitor are returned as ``ChatwootDelivery.known_contacts``: the
route links the visitor to whoever owns them (a verified link: the visitor gave them to
the helpdesk).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from interaction_store.events import derive_conversation_id, derive_event_id

__all__ = [
    "EVENTS",
    "ChatwootDelivery",
    "ChatwootPayloadError",
    "map_webhook",
    "secret_is_valid",
    "visitor_contact",
]

#: The webhook events this connector takes; any other is acknowledged and ignored.
EVENTS = frozenset({"message_created", "conversation_status_changed", "contact_updated"})
_INBOUND = {"incoming"}
_OUTBOUND = {"outgoing", "template"}
_MESSAGE_TYPES = {*_INBOUND, *_OUTBOUND, "activity"}


class ChatwootPayloadError(ValueError):
    """A field every Chatwoot webhook of its event carries is missing or malformed."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class ChatwootDelivery:
    """What one webhook gives: events to append and the visitor's known contacts."""

    events: list[dict[str, Any]] = field(default_factory=list)
    #: The visitor's contact (``chat:...``), when the webhook names one.
    visitor: str | None = None
    #: ``email:...`` and ``phone:...`` contacts Chatwoot holds for the visitor.
    known_contacts: list[str] = field(default_factory=list)


def secret_is_valid(expected: str, given: str | None) -> bool:
    if given is None or not given.isascii():
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def visitor_contact(account_id: str, contact_id: str) -> str:
    return f"chat:chatwoot-{account_id}-{contact_id}"


def map_webhook(payload: Any) -> ChatwootDelivery:
    """The events and contacts of one webhook body (already parsed from JSON)."""
    if not isinstance(payload, Mapping):
        raise ChatwootPayloadError("body", "must be a JSON object")
    event = payload.get("event")
    if not isinstance(event, str) or not event:
        raise ChatwootPayloadError("event", "required")
    if event == "message_created":
        return _message(payload)
    if event == "conversation_status_changed":
        return _status(payload)
    if event == "contact_updated":
        account = _id(payload, "account", "id")
        contact_id = _id(payload, "id")
        return ChatwootDelivery(
            visitor=visitor_contact(account, contact_id), known_contacts=_known(payload)
        )
    return ChatwootDelivery()


def _message(payload: Mapping[str, Any]) -> ChatwootDelivery:
    message_type = payload.get("message_type")
    if message_type not in _MESSAGE_TYPES:
        expected = ", ".join(sorted(_MESSAGE_TYPES))
        raise ChatwootPayloadError("message_type", f"{message_type!r} is not one of {expected}")
    if payload.get("private") is True or message_type not in _INBOUND | _OUTBOUND:
        return ChatwootDelivery()
    account = _id(payload, "account", "id")
    conversation = _object(payload, "conversation")
    visitor = _visitor_of(conversation, account)
    inbound = message_type in _INBOUND
    sender = _mapping(payload.get("sender"))
    data: dict[str, Any] = {
        "direction": "inbound" if inbound else "outbound",
        "contact": visitor,
        "external_id": f"chatwoot:{account}:message:{_id(payload, 'id')}",
        "thread_key": _thread(account, conversation),
        "text": _text(payload.get("content")),
        "attributes": _attributes(payload, conversation),
    }
    if not inbound and sender.get("type") == "user" and sender.get("id") is not None:
        data["agent_id"] = _agent(sender)
    return ChatwootDelivery(
        events=[
            {
                "type": "chat.message",
                "occurred_at": _time(payload.get("created_at"), "created_at").isoformat(),
                "data": data,
                "metadata": {"connector": "chatwoot"},
            }
        ],
        visitor=visitor,
        known_contacts=_known(_sender_of(conversation)),
    )


def _status(payload: Mapping[str, Any]) -> ChatwootDelivery:
    """A status change; the payload is the conversation itself."""
    status = payload.get("status")
    account = _account_of(payload)
    conversation_key = _thread(account, payload)
    visitor = _visitor_of(payload, account)
    conversation_id = derive_conversation_id("chat", conversation_key)
    # The conversation's last activity tells one resolution from the next; a redelivery
    # carries the same one.
    stamp = payload.get("timestamp") or payload.get("updated_at") or payload.get("created_at")
    when = _time(stamp, "timestamp")
    key = f"chatwoot:{conversation_key}:{status}:{when.isoformat()}"
    assignee = _mapping(_object(payload, "meta").get("assignee"))
    agent = _agent(assignee) if assignee.get("id") is not None else None
    events: list[dict[str, Any]] = []
    if status == "resolved":
        ended: dict[str, Any] = {
            "contact": visitor,
            "external_id": f"{key}:ended",
            "thread_key": conversation_key,
            "ended_by": "agent" if agent else "system",
        }
        if agent:
            ended["agent_id"] = agent
        events.append(_event("chat.ended", key, when, ended))
        events.append(
            _event(
                "conversation.resolved",
                key,
                when,
                {"conversation_id": conversation_id, "agent_id": agent, "reason": "Chatwoot"},
            )
        )
    elif status == "open":
        events.append(
            _event(
                "conversation.reopened",
                key,
                when,
                {"conversation_id": conversation_id, "agent_id": agent, "reason": "Chatwoot"},
            )
        )
    return ChatwootDelivery(
        events=events, visitor=visitor, known_contacts=_known(_sender_of(payload))
    )


def _event(event_type: str, key: str, when: datetime, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(derive_event_id(event_type, key)),
        "type": event_type,
        "occurred_at": when.isoformat(),
        "data": {name: value for name, value in data.items() if value is not None},
        "metadata": {"connector": "chatwoot"},
    }


def _visitor_of(conversation: Mapping[str, Any], account: str) -> str:
    """The visitor: the conversation's contact (``meta.sender``, else its contact inbox)."""
    sender = _sender_of(conversation)
    contact_id = sender.get("id")
    if contact_id is None:
        inbox = conversation.get("contact_inbox")
        contact_id = inbox.get("contact_id") if isinstance(inbox, Mapping) else None
    if contact_id is None or str(contact_id).strip() == "":
        raise ChatwootPayloadError("conversation.meta.sender.id", "required")
    return visitor_contact(account, str(contact_id).strip())


def _sender_of(conversation: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = conversation.get("meta")
    sender = meta.get("sender") if isinstance(meta, Mapping) else None
    return sender if isinstance(sender, Mapping) else {}


def _known(contact: Mapping[str, Any]) -> list[str]:
    known = []
    for kind, name in (("email", "email"), ("phone", "phone_number")):
        value = contact.get(name)
        if isinstance(value, str) and value.strip():
            known.append(f"{kind}:{value.strip()}")
    return known


def _thread(account: str, conversation: Mapping[str, Any]) -> str:
    number = conversation.get("display_id", conversation.get("id"))
    if number is None or str(number).strip() == "":
        raise ChatwootPayloadError("conversation.id", "required")
    return f"chatwoot:{account}:{str(number).strip()}"


def _account_of(payload: Mapping[str, Any]) -> str:
    account = payload.get("account")
    if isinstance(account, Mapping) and account.get("id") is not None:
        return str(account["id"])
    if payload.get("account_id") is not None:
        return str(payload["account_id"])
    raise ChatwootPayloadError("account.id", "required")


def _agent(user: Mapping[str, Any]) -> str:
    email = user.get("email")
    if isinstance(email, str) and email.strip() and " " not in email.strip():
        return email.strip().lower()
    return f"chatwoot-user-{user['id']}"


def _attributes(payload: Mapping[str, Any], conversation: Mapping[str, Any]) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    inbox = payload.get("inbox")
    if isinstance(inbox, Mapping) and inbox.get("name"):
        attributes["inbox"] = str(inbox["name"])
    if conversation.get("channel"):
        attributes["channel_type"] = str(conversation["channel"])
    files = payload.get("attachments")
    if isinstance(files, list) and files:
        attributes["attachments"] = [
            {"type": str(f.get("file_type", "file")), "url": str(f.get("data_url", ""))}
            for f in files
            if isinstance(f, Mapping)
        ]
    return attributes


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _object(payload: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = payload.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ChatwootPayloadError(name, "must be an object")
    return value


def _id(payload: Mapping[str, Any], *path: str) -> str:
    value: Any = payload
    for name in path:
        value = value.get(name) if isinstance(value, Mapping) else None
    if value is None or isinstance(value, bool) or str(value).strip() == "":
        raise ChatwootPayloadError(".".join(path), "required")
    return str(value).strip()


def _text(content: Any) -> str:
    return content if isinstance(content, str) else ""


def _time(value: Any, name: str) -> datetime:
    """Chatwoot's times: Unix seconds, ISO 8601, or ``2020-03-03 13:05:57 UTC``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise ChatwootPayloadError(name, f"{value!r} is out of range") from None
    if isinstance(value, str) and value.strip():
        text = value.strip().removesuffix(" UTC").replace("Z", "+00:00")
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ChatwootPayloadError(name, f"{value!r} is not a time") from None
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise ChatwootPayloadError(name, "required")
