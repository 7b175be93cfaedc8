"""Email: RFC 5322 / MIME messages to ``email.received`` and ``email.sent`` events.

A pure mapping, with no I/O: the bytes of a message, the mailbox they came from and the
support addresses go in, one wire-shaped event comes out (``POST /v1/events`` takes it
as it is). The parts:

- Direction: a message from one of our support addresses is ``email.sent`` (the contact
  is its first recipient that is not ours); any other is ``email.received`` from its
  sender.
- Thread: the root of ``References`` (else ``In-Reply-To``, else the message itself) is
  the thread key, so a reply lands in its thread even when it arrives before its parent.
- Idempotency: ``external_id`` is the mailbox and the Message-ID, so the same message
  fetched twice is one event, and a different message that reuses a Message-ID is a
  conflict the store reports (same id, other content) instead of a silent drop. A
  message without a Message-ID gets one made from the digest of its bytes.
- Content: headers decoded (RFC 2047, any charset); the text part, or the HTML part
  stripped to text; attachments listed by name, type and size only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from email.utils import getaddresses
from html.parser import HTMLParser
from typing import Any

__all__ = ["EmailSource", "MalformedEmail", "email_event", "html_to_text", "thread_root"]

#: Longest body kept; the rest of a huge mail stays in the mailbox it came from.
MAX_BODY_CHARS = 200_000

_MESSAGE_ID = re.compile(r"<[^<>\s]+>")


class MalformedEmail(ValueError):
    """The bytes are not a message that can be attributed (no usable sender, say)."""


@dataclass(frozen=True)
class EmailSource:
    """Where messages come from: the mailbox's name (part of each message's identity)
    and the addresses that are ours, in any case."""

    mailbox: str
    support_addresses: Collection[str]

    def ours(self, address: str) -> bool:
        return address.lower() in {a.lower() for a in self.support_addresses}


def email_event(
    raw: bytes, source: EmailSource, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> dict[str, Any]:
    """The event for one message (``raw``: its bytes as stored or received)."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    sender = _first_address(message, "from")
    if sender is None:
        raise MalformedEmail("the message has no From address")
    to = _addresses(message, "to")
    cc = _addresses(message, "cc")
    outbound = source.ours(sender)
    if outbound:
        customer = next((a for a in [*to, *cc] if not source.ours(a)), None)
        if customer is None:
            raise MalformedEmail("a message from a support address to no customer")
    else:
        customer = sender
    message_id = _message_id(message) or _digest_id(raw)
    body, attachments = _content(message)
    data: dict[str, Any] = {
        "contact": {"kind": "email", "value": customer},
        "external_id": f"{source.mailbox}:{message_id}",
        "thread_key": thread_root(message) or message_id,
        "subject": _header(message, "subject")[:998],
        "body": body,
        "to": to,
        "cc": cc,
        "attachments": attachments,
        "attributes": {"message_id": message_id, "mailbox": source.mailbox, "from": sender},
    }
    return {
        "type": "email.sent" if outbound else "email.received",
        "occurred_at": _sent_at(message, now).isoformat(),
        "data": data,
        "metadata": {"connector": "email"},
    }


def thread_root(message: EmailMessage) -> str | None:
    """The Message-ID the thread started with: the first of ``References``, else
    ``In-Reply-To``; None for a message that starts a thread."""
    for name in ("references", "in-reply-to"):
        found: list[str] = _MESSAGE_ID.findall(_header(message, name))
        if found:
            return found[0]
    return None


def html_to_text(markup: str) -> str:
    """The readable text of an HTML body: no tags, scripts or styles; entities decoded;
    block elements on lines of their own."""
    parser = _TextOfHtml()
    parser.feed(markup)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


class _TextOfHtml(HTMLParser):
    _BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "blockquote"})
    _HIDDEN = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def _header(message: EmailMessage, name: str) -> str:
    try:
        value = message.get(name)
    except (ValueError, IndexError, TypeError):  # a header the policy cannot parse
        value = message.get_all(name, [""])[0] if name in message else None
    return str(value).strip() if value is not None else ""


def _addresses(message: EmailMessage, name: str) -> list[str]:
    try:
        header = message.get(name)
        groups = getattr(header, "addresses", None)
    except (ValueError, IndexError, TypeError):
        groups = None
    if groups is not None:
        found = [a.addr_spec for a in groups if isinstance(a, Address) and "@" in a.addr_spec]
    else:  # fall back on the lenient parser for headers the policy refused
        found = [addr for _, addr in getaddresses(message.get_all(name, [])) if "@" in addr]
    return [a.lower() for a in found]


def _first_address(message: EmailMessage, name: str) -> str | None:
    found = _addresses(message, name)
    return found[0] if found else None


def _message_id(message: EmailMessage) -> str | None:
    found: list[str] = _MESSAGE_ID.findall(_header(message, "message-id"))
    return found[0] if found else None


def _digest_id(raw: bytes) -> str:
    return f"<sha256-{hashlib.sha256(raw).hexdigest()}@digest.invalid>"


def _sent_at(message: EmailMessage, now: Callable[[], datetime]) -> datetime:
    try:
        header = message.get("date")
        sent = getattr(header, "datetime", None)
    except (ValueError, IndexError, TypeError):
        sent = None
    if not isinstance(sent, datetime) or sent.tzinfo is None:
        return now()
    return sent.astimezone(UTC)


def _content(message: EmailMessage) -> tuple[str, list[dict[str, Any]]]:
    """The body as text, and the attachments by name, type and size."""
    body = ""
    part = message.get_body(preferencelist=("plain", "html"))
    if part is not None:
        text = _text_of(part)
        body = html_to_text(text) if part.get_content_subtype() == "html" else text.strip()
    attachments = []
    for attachment in message.iter_attachments():
        assert isinstance(attachment, EmailMessage)
        payload = attachment.get_payload(decode=True)
        attachments.append(
            {
                "name": (attachment.get_filename() or "unnamed")[:998],
                "content_type": attachment.get_content_type()[:255],
                "size": len(payload) if isinstance(payload, bytes) else 0,
            }
        )
    return body[:MAX_BODY_CHARS], attachments


def _text_of(part: MIMEPart) -> str:
    try:
        content = part.get_content()
    except (LookupError, ValueError):  # an unknown or lying charset: decode what is there
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    text = content if isinstance(content, str) else ""
    return text.replace("\x00", "")  # PostgreSQL cannot store a NUL
