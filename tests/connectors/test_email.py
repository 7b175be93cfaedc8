"""The email connector's mapping, field by field, on messages written the way mail
clients and servers write them (RFC 5322 headers, MIME parts, RFC 2047 encoded words)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from interaction_store.connectors.email import (
    MAX_BODY_CHARS,
    EmailSource,
    MalformedEmail,
    email_event,
    html_to_text,
)
from interaction_store.events import parse_events, stream_for, with_conversation

SOURCE = EmailSource("support", ["help@acme.example"])
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def clock() -> datetime:
    return NOW


def message(*headers: str, body: str = "Hello", charset: str = "utf-8") -> bytes:
    head = "\r\n".join(headers)
    return (
        f"{head}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset={charset}\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n"
    ).encode(charset)


def test_a_customer_mail_is_received_from_its_sender_with_headers_decoded() -> None:
    raw = message(
        "From: =?utf-8?q?Margaret_Ch=C3=A9n?= <Margaret.Chen@Northwind.example>",
        "To: Acme Help <help@acme.example>",
        "Cc: ops@northwind.example",
        "Subject: =?iso-8859-1?q?Facture_impay=E9e?= and more",
        "Date: Mon, 30 Nov 2026 09:15:00 +0100",
        "Message-ID: <m1@mail.northwind.example>",
        body="Bonjour, la facture n'est pas réglée.",
        charset="iso-8859-1",
    )
    event = email_event(raw, SOURCE, now=clock)
    assert event["type"] == "email.received"
    assert event["occurred_at"] == "2026-11-30T08:15:00+00:00"
    data = event["data"]
    assert data["contact"] == {"kind": "email", "value": "margaret.chen@northwind.example"}
    assert data["subject"] == "Facture impayée and more"
    assert data["body"] == "Bonjour, la facture n'est pas réglée."
    assert data["to"] == ["help@acme.example"]
    assert data["cc"] == ["ops@northwind.example"]
    assert data["external_id"] == "support:<m1@mail.northwind.example>"
    assert data["thread_key"] == "<m1@mail.northwind.example>"
    assert data["attachments"] == []
    [model] = parse_events([event])  # what the connector makes, the catalogue takes
    assert model.type == "email.received"


def test_a_mail_from_a_support_address_is_sent_to_its_first_customer_recipient() -> None:
    raw = message(
        "From: Acme Help <HELP@acme.example>",
        "To: help@acme.example, Sam <sam@example.com>",
        "Subject: Re: your order",
        "Date: Mon, 30 Nov 2026 10:00:00 +0000",
        "Message-ID: <r1@acme.example>",
        "In-Reply-To: <q1@example.com>",
        "References: <q1@example.com>",
    )
    event = email_event(raw, SOURCE, now=clock)
    assert event["type"] == "email.sent"
    assert event["data"]["contact"]["value"] == "sam@example.com"
    assert event["data"]["thread_key"] == "<q1@example.com>"


def test_a_reply_that_arrives_before_its_parent_joins_the_parents_conversation() -> None:
    parent = message(
        "From: sam@example.com", "To: help@acme.example", "Message-ID: <root@example.com>"
    )
    reply = message(
        "From: help@acme.example",
        "To: sam@example.com",
        "Message-ID: <second@acme.example>",
        "In-Reply-To: <root@example.com>",
    )
    again = message(
        "From: sam@example.com",
        "To: help@acme.example",
        "Message-ID: <third@example.com>",
        "In-Reply-To: <second@acme.example>",
        "References: <root@example.com> <second@acme.example>",
    )
    streams = []
    for raw in (again, reply, parent):  # the order mail can arrive in
        [model] = parse_events([email_event(raw, SOURCE, now=clock)])
        streams.append(stream_for(with_conversation(model)))
    assert len(set(streams)) == 1


def test_a_forwarded_mail_without_references_starts_a_thread_of_its_own() -> None:
    first = message("From: sam@example.com", "To: help@acme.example", "Message-ID: <a@x.example>")
    forwarded = message(
        "From: sam@example.com",
        "To: help@acme.example",
        "Subject: Fwd: my order",
        "Message-ID: <b@x.example>",
        body="---------- Forwarded message ---------\nFrom: shop@example.org",
    )
    keys = {email_event(raw, SOURCE, now=clock)["data"]["thread_key"] for raw in (first, forwarded)}
    assert keys == {"<a@x.example>", "<b@x.example>"}


def test_html_only_mail_is_stripped_to_its_text() -> None:
    raw = (
        b"From: sam@example.com\r\nTo: help@acme.example\r\nMessage-ID: <h@x.example>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><head><style>p {color: red}</style></head><body><p>Where is&nbsp;my "
        b"<b>order</b>?</p><script>alert(1)</script><div>Sam &amp; co</div></body></html>"
    )
    body = email_event(raw, SOURCE, now=clock)["data"]["body"]
    assert body == "Where is my order?\nSam & co"
    assert html_to_text("<p>a</p><p>b</p>") == "a\nb"


@pytest.mark.parametrize(
    ("odd", "text"),
    [("<![ endif ]>", ""), ("<![foo]>", ""), ("arr<![0]>", "arr\n"), ("<![ ", "")],
)
def test_html_that_the_parser_refuses_is_stripped_all_the_same(odd: str, text: str) -> None:
    """html.parser raises on some "<![" sections (a mail client's conditional comments):
    the body is still the text, never an error that loses the mail."""
    markup = (
        "<html><head><style>p {color: red}</style></head><body><p>Where is&nbsp;my "
        f"<b>order</b>?</p>{odd}<script>alert(1)</script><div>Sam &amp; co</div></body></html>"
    )
    raw = (
        b"From: sam@example.com\r\nTo: help@acme.example\r\nMessage-ID: <h@x.example>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + markup.encode()
    )
    body = email_event(raw, SOURCE, now=clock)["data"]["body"]
    assert body == f"Where is my order?\n{text}Sam & co"


def test_a_nul_decoded_from_a_subject_or_a_filename_is_dropped() -> None:
    raw = (
        b"From: a@example.com\r\nTo: help@acme.example\r\nMessage-ID: <x@y>\r\n"
        b"Subject: =?utf-8?q?Invoice=00 2?=\r\n"
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain"
        b"\r\n\r\nhi\r\n--b\r\nContent-Type: application/pdf\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''a%00b.pdf\r\n\r\nxx\r\n--b--\r\n"
    )
    data = email_event(raw, SOURCE, now=clock)["data"]
    assert data["subject"] == "Invoice 2"
    assert [a["name"] for a in data["attachments"]] == ["ab.pdf"]


def test_attachments_are_listed_by_name_type_and_size_only() -> None:
    raw = (
        b"From: sam@example.com\r\nTo: help@acme.example\r\nMessage-ID: <att@x.example>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XYZ\r\n\r\n"
        b"--XYZ\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the photo.\r\n"
        b"--XYZ\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="=?utf-8?q?d=C3=A9g=C3=A2t.png?="\r\n\r\n'
        b"iVBORw0KGgoAAAANSUhEUg==\r\n--XYZ--\r\n"
    )
    data = email_event(raw, SOURCE, now=clock)["data"]
    assert data["body"] == "See the photo."
    assert data["attachments"] == [{"name": "dégât.png", "content_type": "image/png", "size": 16}]
    assert "iVBOR" not in str(data)


def test_a_mail_without_message_id_gets_one_from_its_digest() -> None:
    raw = message("From: sam@example.com", "To: help@acme.example", "Subject: no id")
    first = email_event(raw, SOURCE, now=clock)["data"]["external_id"]
    assert first.startswith("support:<sha256-")
    assert email_event(raw, SOURCE, now=clock)["data"]["external_id"] == first
    other = message("From: sam@example.com", "To: help@acme.example", "Subject: no id either")
    assert email_event(other, SOURCE, now=clock)["data"]["external_id"] != first


def test_eight_bit_headers_are_read_as_utf8_or_latin1() -> None:
    raw = (
        "From: Renée <renee@example.com>\r\nTo: help@acme.example\r\n"
        "Subject: Facture impayée\r\nMessage-ID: <8bit@x.example>\r\n\r\nmerci\r\n"
    ).encode()
    event = email_event(raw, SOURCE, now=clock)
    assert event["data"]["subject"] == "Facture impayée"
    latin = raw.replace("impayée".encode(), "impayée".encode("latin-1"))
    assert email_event(latin, SOURCE, now=clock)["data"]["subject"] == "Facture impayée"
    orjson.dumps(event)  # nothing unencodable is left
    parse_events([event])


def test_without_a_date_the_newest_received_stamp_is_the_time() -> None:
    raw = (
        b"Received: from relay.example.com by mx.acme.example; Mon, 30 Nov 2026 09:00:02 +0000\r\n"
        b"Received: from laptop by relay.example.com; Mon, 30 Nov 2026 08:59:59 +0000\r\n"
        b"From: sam@example.com\r\nMessage-ID: <nodate@x.example>\r\n\r\nhi\r\n"
    )
    assert email_event(raw, SOURCE, now=clock)["occurred_at"] == "2026-11-30T09:00:02+00:00"


def test_a_forwarded_message_is_one_attachment_not_the_body() -> None:
    inner = b"From: shop@example.org\r\nSubject: receipt\r\n\r\nthe inner text\r\n"
    raw = (
        b"From: sam@example.com\r\nMessage-ID: <fwd@x.example>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=F\r\n\r\n"
        b"--F\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>see below</p>\r\n"
        b"--F\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"\r\n--F--\r\n"
    )
    data = email_event(raw, SOURCE, now=clock)["data"]
    assert data["body"] == "see below"
    [attachment] = data["attachments"]
    assert attachment["content_type"] == "message/rfc822"
    assert attachment["size"] > 0


@pytest.mark.parametrize("charset", ["idna", "rot13", "x-unknown"])
def test_a_charset_that_is_no_text_encoding_is_read_as_utf8(charset: str) -> None:
    raw = message("From: sam@example.com", "Message-ID: <cs@x.example>", body="plain")
    raw = raw.replace(b"charset=utf-8", f"charset={charset}".encode())
    assert email_event(raw, SOURCE, now=clock)["data"]["body"] == "plain"


def test_missing_optional_headers_fall_back_to_the_clock_and_empty_text() -> None:
    raw = b"From: sam@example.com\r\n\r\n"
    event = email_event(raw, SOURCE, now=clock)
    assert event["occurred_at"] == NOW.isoformat()
    assert event["data"]["subject"] == ""
    assert event["data"]["to"] == []
    parse_events([event])


def test_a_huge_body_is_cut() -> None:
    raw = message("From: sam@example.com", "Message-ID: <big@x.example>", body="é" * 300_000)
    assert len(email_event(raw, SOURCE, now=clock)["data"]["body"]) == MAX_BODY_CHARS


@pytest.mark.parametrize(
    "raw",
    [
        b"To: help@acme.example\r\nSubject: who sent this?\r\n\r\nbody",
        b"not a mail at all",
        b"From: help@acme.example\r\nTo: help@acme.example\r\n\r\nto ourselves",
    ],
    ids=["no-sender", "not-a-mail", "no-customer"],
)
def test_a_mail_that_cannot_be_attributed_is_refused(raw: bytes) -> None:
    with pytest.raises(MalformedEmail):
        email_event(raw, SOURCE, now=clock)


def test_broken_encodings_are_read_as_well_as_they_can_be() -> None:
    raw = (
        b"From: sam@example.com\r\nTo: help@acme.example\r\nMessage-ID: <enc@x.example>\r\n"
        b"Subject: =?x-no-such-charset?q?caf=E9?=\r\nDate: Mon, 30 Nov 2026 09:00:00 -0000\r\n"
        b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\ncaf\xc3\xa9 \xff\r\n"
    )
    event = email_event(raw, SOURCE, now=clock)
    assert event["data"]["subject"] == "=?x-no-such-charset?q?caf=E9?="  # kept as it came
    assert event["data"]["body"] == "café \ufffd"
    assert event["occurred_at"] == "2026-11-30T09:00:00+00:00"  # -0000: a UTC time
    parse_events([event])


def test_a_mail_with_a_plain_and_an_html_part_keeps_the_plain_one() -> None:
    raw = (
        b"From: sam@example.com\r\nMessage-ID: <alt@x.example>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/alternative; boundary=B\r\n\r\n"
        b"--B\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>the <i>html</i></p>\r\n"
        b"--B\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nthe text\r\n--B--\r\n"
    )
    data = email_event(raw, SOURCE, now=clock)["data"]
    assert data["body"] == "the text"
    assert data["attachments"] == []
