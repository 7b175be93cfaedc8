"""Twilio: Voice status callbacks to ``call.completed``, Messaging webhooks to
``sms.received`` and ``sms.sent``, and the ``X-Twilio-Signature`` check.

Pure mappings of the form parameters Twilio posts (names as in Twilio's webhook
reference) to wire-shaped events; ``None`` for a callback that records nothing (a call
still ringing, a message still queued). Ids come from Twilio's: the CallSid or the
MessageSid is the ``external_id``, so a redelivered callback is the same event.

- Calls: ``completed`` is answered (its ``CallDuration``); ``busy``, ``no-answer`` and
  ``failed`` are missed; ``canceled`` (the caller hung up first) is abandoned. A
  voicemail is the ``<Record>`` action request (``voicemail_event``). The customer is
  ``From`` on an inbound call and ``To`` on an outbound one.
- Voicemail: the ``<Record>`` verb's ``action`` request (the call's parameters with
  ``RecordingUrl`` and ``RecordingDuration``) is the call as ``voicemail``. It comes
  while the call is still up, so it is stored before the call's final status callback,
  which then repeats a stored call and is not stored again.
- SMS: an inbound message (``Body``, ``NumMedia``, ``MediaUrl0``...) is ``sms.received``;
  the status callback of one of ours is ``sms.sent`` once it is ``sent`` or
  ``delivered`` (both give the same event: the second is a replay). The conversation
  is the pair of numbers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

__all__ = [
    "TwilioPayloadError",
    "call_event",
    "signature",
    "signature_is_valid",
    "sms_event",
    "voicemail_event",
]

_FINAL_CALL_STATUS = {
    "completed": "answered",
    "busy": "missed",
    "no-answer": "missed",
    "failed": "missed",
    "canceled": "abandoned",
}
_SENT = {"sent", "delivered"}


class TwilioPayloadError(ValueError):
    """A parameter Twilio always sends is missing or malformed."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def signature(auth_token: str, url: str, params: Sequence[tuple[str, str]]) -> str:
    """Twilio's request signature: HMAC-SHA1 with the account's auth token over the full
    URL Twilio requested followed by each POST parameter's name and value, sorted by
    name, base64-encoded."""
    signed = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def signature_is_valid(
    auth_token: str, url: str, params: Sequence[tuple[str, str]], given: str | None
) -> bool:
    if given is None or not given.isascii():  # a signature is base64; compare bytes
        return False
    return hmac.compare_digest(signature(auth_token, url, params).encode(), given.encode())


def call_event(
    params: Mapping[str, str], *, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> dict[str, Any] | None:
    """The ``call.completed`` event of a Voice status callback; None before the call ends."""
    status = _required(params, "CallStatus")
    if status not in _FINAL_CALL_STATUS:
        return None
    sid = _required(params, "CallSid")
    inbound = _required(params, "Direction") == "inbound"
    customer = _required(params, "From" if inbound else "To")
    outcome = _FINAL_CALL_STATUS[status]
    recording = params.get("RecordingUrl") or None
    data: dict[str, Any] = {
        "direction": "inbound" if inbound else "outbound",
        "contact": {"kind": "phone", "value": customer},
        "external_id": sid,
        "status": outcome,
        "duration_s": _seconds(params.get("CallDuration")),
        "attributes": _attributes(params, ("AccountSid", "From", "To", "CallStatus")),
    }
    if recording:
        data["recording_url"] = recording
    return {
        "type": "call.completed",
        "occurred_at": _time(params, now).isoformat(),
        "data": data,
        "metadata": {"connector": "twilio-voice"},
    }


def voicemail_event(
    params: Mapping[str, str], *, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> dict[str, Any] | None:
    """The ``call.completed`` event, status ``voicemail``, of a ``<Record>`` action
    request; None when nothing was recorded (the caller hung up at once)."""
    recording = params.get("RecordingUrl", "").strip()
    sid = _required(params, "CallSid")
    if not recording:
        return None
    inbound = params.get("Direction", "inbound") == "inbound"
    customer = _required(params, "From" if inbound else "To")
    attributes = _attributes(params, ("AccountSid", "From", "To", "RecordingSid"))
    return {
        "type": "call.completed",
        "occurred_at": now().isoformat(),
        "data": {
            "direction": "inbound" if inbound else "outbound",
            "contact": {"kind": "phone", "value": customer},
            "external_id": sid,
            "status": "voicemail",
            "duration_s": _seconds(params.get("RecordingDuration"), "RecordingDuration"),
            "recording_url": recording,
            "attributes": attributes,
        },
        "metadata": {"connector": "twilio-voice"},
    }


def sms_event(
    params: Mapping[str, str], *, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> dict[str, Any] | None:
    """The event of a Messaging webhook: an inbound message, or the status callback of
    one we sent; None for a status that records nothing (queued, failed, ...)."""
    sid = params.get("MessageSid") or params.get("SmsSid")
    if not sid:
        raise TwilioPayloadError("MessageSid", "required")
    ours, theirs = _required(params, "To"), _required(params, "From")
    status = params.get("MessageStatus") or params.get("SmsStatus") or "received"
    if status == "received":
        inbound, customer = True, theirs
    elif status in _SENT:
        inbound, customer, ours = False, ours, theirs  # a status callback: From is ours
    else:
        return None
    data: dict[str, Any] = {
        "contact": {"kind": "phone", "value": customer},
        "external_id": sid,
        "thread_key": f"{customer}|{ours}",
        "attributes": _attributes(params, ("AccountSid", "MessagingServiceSid")),
    }
    if inbound:
        data["text"] = params.get("Body", "")
        data["media_urls"] = [
            params[f"MediaUrl{n}"]
            for n in range(_count(params.get("NumMedia")))
            if params.get(f"MediaUrl{n}")
        ]
    return {
        "type": "sms.received" if inbound else "sms.sent",
        "occurred_at": now().isoformat(),
        "data": data,
        "metadata": {"connector": "twilio-sms"},
    }


def _required(params: Mapping[str, str], name: str) -> str:
    value = params.get(name, "").strip()
    if not value:
        raise TwilioPayloadError(name, "required")
    return value


def _seconds(value: str | None, name: str = "CallDuration") -> int:
    try:
        return max(0, int(value)) if value else 0
    except ValueError:
        raise TwilioPayloadError(name, f"{value!r} is not a number of seconds") from None


def _count(value: str | None) -> int:
    try:
        return min(10, max(0, int(value))) if value else 0  # Twilio sends at most 10
    except ValueError:
        raise TwilioPayloadError("NumMedia", f"{value!r} is not a number") from None


def _time(params: Mapping[str, str], now: Callable[[], datetime]) -> datetime:
    """``Timestamp`` (RFC 2822, sent with status callbacks), else now."""
    try:
        sent = parsedate_to_datetime(params.get("Timestamp", ""))
        return sent.astimezone(UTC) if sent.tzinfo else sent.replace(tzinfo=UTC)
    except (TypeError, ValueError, IndexError, OverflowError):
        return now()


def _attributes(params: Mapping[str, str], names: Sequence[str]) -> dict[str, str]:
    return {name: params[name] for name in names if params.get(name)}
