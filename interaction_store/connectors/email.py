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

import contextlib
import hashlib
import html
import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from html.parser import HTMLParser
from typing import Any

__all__ = ["EmailSource", "MalformedEmail", "email_event", "html_to_text", "thread_root"]

#: Longest body kept; the rest of a huge mail stays in the mailbox it came from.
MAX_BODY_CHARS = 200_000

_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_CHARSET = re.compile(r"""charset\s*=\s*"?([A-Za-z0-9_.:+-]+)""", re.IGNORECASE)


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
    headers = _Headers(message)
    sender = next(iter(headers.addresses("from")), None)
    if sender is None:
        raise MalformedEmail("the message has no From address")
    to, cc = headers.addresses("to"), headers.addresses("cc")
    outbound = source.ours(sender)
    if outbound:
        customer = next((a for a in [*to, *cc] if not source.ours(a)), None)
        if customer is None:
            raise MalformedEmail("a message from a support address to no customer")
    else:
        customer = sender
    message_id = headers.message_id() or _digest_id(raw)
    body, attachments = _content(message)
    data: dict[str, Any] = {
        "contact": {"kind": "email", "value": customer},
        "external_id": f"{source.mailbox}:{message_id}",
        "thread_key": headers.thread_root() or message_id,
        "subject": headers.text("subject")[:998],
        "body": body,
        "to": to,
        "cc": cc,
        "attachments": attachments,
        "attributes": {"message_id": message_id, "mailbox": source.mailbox, "from": sender},
    }
    return {
        "type": "email.sent" if outbound else "email.received",
        "occurred_at": (headers.date() or now()).astimezone(UTC).isoformat(),
        "data": data,
        "metadata": {"connector": "email"},
    }


def thread_root(message: EmailMessage) -> str | None:
    """The Message-ID the thread started with: the first of ``References``, else
    ``In-Reply-To``; None for a message that starts a thread."""
    return _Headers(message).thread_root()


class _Headers:
    """A message's headers, each read once from its raw value.

    The modern policy parses a header again on every access, and a message is asked for
    the same few many times; the stdlib's plain parsers are enough for addresses, dates
    and ids, and encoded words are decoded where text is shown (the subject).
    """

    def __init__(self, message: EmailMessage) -> None:
        self._raw: dict[str, list[str]] = {}
        for name, value in message.raw_items():
            self._raw.setdefault(name.lower(), []).append(_eight_bit(str(value)))

    def _first(self, name: str) -> str:
        values = self._raw.get(name)
        return values[0].strip() if values else ""

    def text(self, name: str) -> str:
        value = self._first(name)
        # A broken encoded word stays as it came.
        with contextlib.suppress(ValueError, LookupError, UnicodeError):
            value = str(make_header(decode_header(value)))
        return " ".join(value.replace("\x00", "").split())  # PostgreSQL cannot store a NUL

    def addresses(self, name: str) -> list[str]:
        found = getaddresses(self._raw.get(name, []))
        return [addr.lower() for _, addr in found if "@" in addr and " " not in addr]

    def message_id(self) -> str | None:
        found: list[str] = _MESSAGE_ID.findall(self._first("message-id"))
        return found[0] if found else None

    def thread_root(self) -> str | None:
        for name in ("references", "in-reply-to"):
            found: list[str] = _MESSAGE_ID.findall(self._first(name))
            if found:
                return found[0]
        return None

    def date(self) -> datetime | None:
        """When it was sent: ``Date``, else the newest ``Received`` stamp (a relay's), so
        that the same message read twice has the same time."""
        received = (value.rpartition(";")[2] for value in self._raw.get("received", []))
        for text in (self._first("date"), *received):
            try:
                sent = parsedate_to_datetime(text.strip())
                if sent.tzinfo is None:  # "-0000": the time is in UTC, the zone unknown
                    sent = sent.replace(tzinfo=UTC)
                return sent.astimezone(UTC)
            except (TypeError, ValueError, IndexError, OverflowError):
                continue
        return None


def _eight_bit(value: str) -> str:
    """A header value as text: raw 8-bit bytes (UTF-8 in headers, RFC 6532, or a legacy
    charset) come from the parser as surrogate escapes; decode them as UTF-8, else
    Latin-1, so that nothing unencodable reaches the event."""
    if value.isascii() or not any("\udc80" <= c <= "\udcff" for c in value):
        return value
    raw = value.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def html_to_text(markup: str) -> str:
    """The readable text of an HTML body: no tags, scripts or styles; entities decoded;
    block elements on lines of their own."""
    parser = _TextOfHtml()
    try:
        parser.feed(markup)
        parser.close()
        text = "".join(parser.parts)
    except AssertionError:  # html.parser gives up on a "<![" it does not know
        text = _stripped(markup)
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


_HIDDEN_ELEMENT = re.compile(r"<(script|style|head|title)\b.*?</\1\s*>", re.I | re.S)
_TAG = re.compile(r"<(/?)([a-zA-Z0-9]*)[^>]*>")


def _stripped(markup: str) -> str:
    """``html_to_text``'s text of markup html.parser refuses: tags dropped, with scripts
    and styles, block elements on lines of their own, entities decoded."""

    def tag(match: re.Match[str]) -> str:
        return "\n" if match[2].lower() in _TextOfHtml._BLOCKS else ""

    return html.unescape(_TAG.sub(tag, _HIDDEN_ELEMENT.sub("", markup)))


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


def _digest_id(raw: bytes) -> str:
    return f"<sha256-{hashlib.sha256(raw).hexdigest()}@digest.invalid>"


def _content(message: EmailMessage) -> tuple[str, list[dict[str, Any]]]:
    """The body as text, and the attachments by name, type and size, in one walk.

    The body is the first ``text/plain`` part that is not an attachment, else the first
    ``text/html`` one stripped to text (what ``get_body`` picks, without parsing each
    part's headers again at every step).
    """
    plain: MIMEPart | None = None
    markup: MIMEPart | None = None
    attachments = []
    for part, content_type, attached in _leaves(message):
        if not attached and content_type == "text/plain" and plain is None:
            plain = part
        elif not attached and content_type == "text/html" and markup is None:
            markup = part
        elif attached or not content_type.startswith("text/"):
            payload = part.get_payload(decode=True)
            try:
                filename = part.get_filename()
            except (LookupError, UnicodeError, ValueError):  # a filename in a bad charset
                filename = None
            attachments.append(
                {
                    "name": ((filename or "").replace("\x00", "") or "unnamed")[:998],
                    "content_type": content_type[:255],
                    "size": len(payload) if isinstance(payload, bytes) else _size_of(part),
                }
            )
    if plain is not None:
        body = _text_of(plain).strip()
    elif markup is not None:
        body = html_to_text(_text_of(markup))
    else:
        body = ""
    return body[:MAX_BODY_CHARS], attachments


def _leaves(part: MIMEPart) -> Iterator[tuple[MIMEPart, str, bool]]:
    """The parts that hold content, with their type and whether each is an attachment. A
    forwarded message (``message/rfc822``) is one attachment, not more parts of this one."""
    content_type, attached = _kind_of(part)
    if content_type.startswith("multipart/") and part.is_multipart():
        for sub in part.iter_parts():
            yield from _leaves(sub)
    elif content_type.startswith("message/"):
        yield part, content_type, True
    else:
        yield part, content_type, attached


def _size_of(part: MIMEPart) -> int:
    """The size of a part with no payload of its own to decode (a forwarded message)."""
    try:
        return len(part.as_bytes())  # with the part's own headers: near enough
    except (LookupError, UnicodeError, ValueError):
        return 0


def _kind_of(part: MIMEPart) -> tuple[str, bool]:
    """A part's content type (lower case; text/plain by default) and whether it is an
    attachment, read from the raw headers."""
    content_type, disposition = "text/plain", ""
    for name, value in part.raw_items():
        lowered = name.lower()
        if lowered == "content-type":
            content_type = str(value).split(";", 1)[0].strip().lower() or "text/plain"
        elif lowered == "content-disposition":
            disposition = str(value).split(";", 1)[0].strip().lower()
    return content_type, disposition == "attachment"


def _text_of(part: MIMEPart) -> str:
    """A text part's content, decoded with its charset (unknown or lying charsets are
    decoded as UTF-8, with replacement characters where it fails)."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    content_type = next((str(v) for n, v in part.raw_items() if n.lower() == "content-type"), "")
    charset = _CHARSET.search(content_type)
    name = charset.group(1) if charset else "utf-8"
    try:
        text = payload.decode(name, "replace")
    except (LookupError, UnicodeError):  # unknown, or not a text codec (idna, say)
        text = payload.decode("utf-8", "replace")
    return text.replace("\x00", "")  # PostgreSQL cannot store a NUL
