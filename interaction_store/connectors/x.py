"""X (Twitter): the Account Activity webhook to ``tweet.received`` and ``tweet.sent``.

Pure mappings of the JSON X posts for a subscribed account (``for_user_id``,
``tweet_create_events``, ``direct_message_events``, ``users``; field names as in X's
Account Activity data objects), plus the CRC answer and the signature check.

- A post that mentions or replies to our account is ``tweet.received`` (``mention`` or
  ``reply``); our reply to someone is ``tweet.sent`` (``reply``). Our own posts that
  answer no one, reposts, and deleted or withheld posts are not interactions.
- A direct message to us is ``tweet.received`` of kind ``direct_message``; one from us is
  ``tweet.sent``.
- The customer's identity is their numeric user id (``twitter:<id>``: a handle can be
  renamed, the id cannot); the handle is kept in ``handle`` for display.
- The conversation is the post's ``conversation_id`` when X sends it; else the thread of
  the post it replies to, which ``thread_of`` (injected: the route looks it up in the
  log) answers, or failing that the parent post itself; a post that replies to nothing
  starts its own. Direct messages between
  the same two accounts are one conversation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "XPayloadError",
    "crc_response_token",
    "map_activity",
    "signature_is_valid",
    "tweet_external_id",
]

_TWEET_TIME = "%a %b %d %H:%M:%S %z %Y"  # Wed Oct 10 20:19:24 +0000 2018


class XPayloadError(ValueError):
    """A field X always sends is missing or malformed."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _sha256(secret: str, message: bytes) -> str:
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return "sha256=" + base64.b64encode(digest).decode()


def crc_response_token(consumer_secret: str, crc_token: str) -> str:
    """The ``response_token`` that answers X's challenge-response check."""
    return _sha256(consumer_secret, crc_token.encode())


def signature_is_valid(consumer_secret: str, body: bytes, given: str | None) -> bool:
    """``x-twitter-webhooks-signature``: HMAC-SHA256 of the raw body with the app's
    consumer secret, base64, prefixed ``sha256=``."""
    if given is None or not given.isascii():
        return False
    return hmac.compare_digest(_sha256(consumer_secret, body).encode(), given.encode())


def tweet_external_id(tweet_id: str) -> str:
    return f"x:tweet:{tweet_id}"


def map_activity(
    payload: Any, *, thread_of: Callable[[str], str | None] = lambda _: None
) -> list[dict[str, Any]]:
    """The events of one Account Activity delivery (already parsed from JSON)."""
    if not isinstance(payload, Mapping):
        raise XPayloadError("body", "must be a JSON object")
    ours = _string(payload.get("for_user_id"), "for_user_id")
    users = _mapping(payload.get("users"))
    events: list[dict[str, Any]] = []
    for index, tweet in enumerate(_list(payload, "tweet_create_events")):
        event = _tweet(tweet, ours, thread_of, f"tweet_create_events.{index}")
        if event is not None:
            events.append(event)
    for index, message in enumerate(_list(payload, "direct_message_events")):
        event = _direct_message(message, ours, users, f"direct_message_events.{index}")
        if event is not None:
            events.append(event)
    return events


def _tweet(
    tweet: Any, ours: str, thread_of: Callable[[str], str | None], where: str
) -> dict[str, Any] | None:
    if not isinstance(tweet, Mapping):
        raise XPayloadError(where, "must be an object")
    if tweet.get("retweeted_status") is not None:
        return None  # a repost carries no words of its own to the account
    tweet_id = _string(tweet.get("id_str"), f"{where}.id_str")
    author = tweet.get("user")
    if not isinstance(author, Mapping):
        raise XPayloadError(f"{where}.user", "required")
    author_id = _string(author.get("id_str"), f"{where}.user.id_str")
    replied_to = _optional(tweet.get("in_reply_to_status_id_str"))
    replied_user = _optional(tweet.get("in_reply_to_user_id_str"))
    if author_id == ours:
        if replied_user is None or replied_user == ours:
            return None  # a post of ours to no one, or a thread of our own
        customer, handle = replied_user, _optional(tweet.get("in_reply_to_screen_name"))
        event_type, kind = "tweet.sent", "reply"
    else:
        customer, handle = author_id, _optional(author.get("screen_name"))
        event_type = "tweet.received"
        kind = "reply" if replied_user == ours else "mention"
    conversation = _optional(tweet.get("conversation_id_str")) or _optional(
        tweet.get("conversation_id")
    )
    if conversation is None and replied_to is not None:
        conversation = thread_of(replied_to) or replied_to
    thread = conversation or tweet_id
    data: dict[str, Any] = {
        "contact": {"kind": "twitter", "value": customer},
        "external_id": tweet_external_id(tweet_id),
        "thread_key": f"x:{thread}" if not thread.startswith("x:") else thread,
        "kind": kind,
        "text": _full_text(tweet),
        "attributes": {
            key: value
            for key, value in (("in_reply_to_status_id", replied_to), ("lang", tweet.get("lang")))
            if value
        },
    }
    if handle:
        data["handle"] = handle
    return {
        "type": event_type,
        "occurred_at": _tweet_time(tweet, where).isoformat(),
        "data": data,
        "metadata": {"connector": "x"},
    }


def _direct_message(
    message: Any, ours: str, users: Mapping[str, Any], where: str
) -> dict[str, Any] | None:
    if not isinstance(message, Mapping):
        raise XPayloadError(where, "must be an object")
    if message.get("type") != "message_create":
        return None
    body = message.get("message_create")
    if not isinstance(body, Mapping):
        raise XPayloadError(f"{where}.message_create", "required")
    sender = _string(body.get("sender_id"), f"{where}.message_create.sender_id")
    target = _mapping(body.get("target"))
    recipient = _string(target.get("recipient_id"), f"{where}.message_create.target.recipient_id")
    inbound = sender != ours
    customer = sender if inbound else recipient
    text = _mapping(body.get("message_data"))
    user = _mapping(users.get(customer))
    data: dict[str, Any] = {
        "contact": {"kind": "twitter", "value": customer},
        "external_id": f"x:dm:{_string(message.get('id'), f'{where}.id')}",
        "thread_key": f"x:dm:{'-'.join(sorted((ours, customer)))}",
        "kind": "direct_message",
        "text": str(text.get("text", "")),
    }
    if user.get("screen_name"):
        data["handle"] = str(user["screen_name"])
    return {
        "type": "tweet.received" if inbound else "tweet.sent",
        "occurred_at": _millis(message.get("created_timestamp"), f"{where}.created_timestamp"),
        "data": data,
        "metadata": {"connector": "x"},
    }


def _full_text(tweet: Mapping[str, Any]) -> str:
    extended = tweet.get("extended_tweet")
    if isinstance(extended, Mapping) and isinstance(extended.get("full_text"), str):
        return str(extended["full_text"])
    for name in ("full_text", "text"):
        if isinstance(tweet.get(name), str):
            return str(tweet[name])
    return ""


def _tweet_time(tweet: Mapping[str, Any], where: str) -> datetime:
    if tweet.get("timestamp_ms") is not None:
        return datetime.fromisoformat(_millis(tweet["timestamp_ms"], f"{where}.timestamp_ms"))
    created = _string(tweet.get("created_at"), f"{where}.created_at")
    for parse in (lambda t: datetime.strptime(t, _TWEET_TIME), datetime.fromisoformat):
        try:
            return parse(created.replace("Z", "+00:00")).astimezone(UTC)
        except ValueError:
            continue
    raise XPayloadError(f"{where}.created_at", f"{created!r} is not a time")


def _millis(value: Any, where: str) -> str:
    try:
        return datetime.fromtimestamp(int(str(value)) / 1000, UTC).isoformat()
    except (TypeError, ValueError, OverflowError, OSError):
        raise XPayloadError(where, f"{value!r} is not a time in milliseconds") from None


def _list(payload: Mapping[str, Any], name: str) -> list[Any]:
    value = payload.get(name, [])
    if not isinstance(value, list):
        raise XPayloadError(name, "must be a list")
    return value


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _string(value: Any, where: str) -> str:
    if value is None or isinstance(value, bool) or str(value).strip() == "":
        raise XPayloadError(where, "required")
    return str(value).strip()


def _optional(value: Any) -> str | None:
    return str(value).strip() if value is not None and str(value).strip() else None
