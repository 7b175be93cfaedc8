"""Twilio's webhooks, mapped field by field, with payloads written from the parameter
lists of Twilio's Voice status callback and Messaging webhook references."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

import pytest

from interaction_store.connectors.twilio import (
    TwilioPayloadError,
    call_event,
    signature,
    signature_is_valid,
    sms_event,
    voicemail_event,
)
from interaction_store.events import parse_events

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def clock() -> datetime:
    return NOW


CALL = {
    "AccountSid": "AC0123456789abcdef0123456789abcdef",
    "ApiVersion": "2010-04-01",
    "CallSid": "CA5f3e8a1f0b6a4c1d9e2b7a6c5d4e3f21",
    "CallStatus": "completed",
    "CallDuration": "184",
    "Direction": "inbound",
    "From": "+16285550187",
    "To": "+14155550100",
    "Timestamp": "Mon, 30 Nov 2026 10:02:11 +0000",
    "CallbackSource": "call-progress-events",
    "SequenceNumber": "3",
}


def test_the_documented_signature_algorithm() -> None:
    url = "https://store.example.com/v1/connectors/twilio/sms?tenant=acme"
    params = [("To", "+14155550100"), ("Body", "hi é"), ("From", "+16285550187")]
    # Written out from Twilio's description: URL, then each name+value sorted by name.
    signed = url + "Bodyhi é" + "From+16285550187" + "To+14155550100"
    expected = base64.b64encode(
        hmac.new(b"secret-token", signed.encode(), hashlib.sha1).digest()
    ).decode()
    assert signature("secret-token", url, params) == expected
    assert signature_is_valid("secret-token", url, params, expected)
    assert not signature_is_valid("other-token", url, params, expected)
    assert not signature_is_valid("secret-token", url + "&x=1", params, expected)
    assert not signature_is_valid("secret-token", url, params, None)
    assert not signature_is_valid("secret-token", url, params, "\xe9")  # not base64: no 500


@pytest.mark.parametrize(
    ("status", "extra", "outcome"),
    [
        ("completed", {}, "answered"),
        ("no-answer", {"CallDuration": "0"}, "missed"),
        ("busy", {}, "missed"),
        ("failed", {}, "missed"),
        ("canceled", {}, "abandoned"),
        ("completed", {"RecordingUrl": "https://api.twilio.com/rec/RE1"}, "answered"),
    ],
)
def test_a_finished_call_is_one_call_completed(
    status: str, extra: dict[str, str], outcome: str
) -> None:
    event = call_event({**CALL, "CallStatus": status, **extra}, now=clock)
    assert event is not None
    assert event["type"] == "call.completed"
    data = event["data"]
    assert data["status"] == outcome
    assert data["direction"] == "inbound"
    assert data["contact"] == {"kind": "phone", "value": "+16285550187"}
    assert data["external_id"] == CALL["CallSid"]
    assert event["occurred_at"] == "2026-11-30T10:02:11+00:00"
    [model] = parse_events([event])
    assert model.data.status == outcome  # type: ignore[attr-defined]


def test_an_outbound_call_is_to_the_customer_and_keeps_its_duration() -> None:
    event = call_event(
        {**CALL, "Direction": "outbound-api", "From": "+14155550100", "To": "+442079460958"},
        now=clock,
    )
    assert event is not None
    assert event["data"]["direction"] == "outbound"
    assert event["data"]["contact"]["value"] == "+442079460958"
    assert event["data"]["duration_s"] == 184


@pytest.mark.parametrize("status", ["queued", "ringing", "in-progress", "initiated"])
def test_a_call_still_going_records_nothing(status: str) -> None:
    assert call_event({**CALL, "CallStatus": status}, now=clock) is None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({k: v for k, v in CALL.items() if k != "CallSid"}, "CallSid"),
        ({**CALL, "From": ""}, "From"),
        ({**CALL, "CallDuration": "three minutes"}, "CallDuration"),
    ],
)
def test_a_malformed_call_callback_names_the_field(params: dict[str, str], field: str) -> None:
    with pytest.raises(TwilioPayloadError) as error:
        call_event(params, now=clock)
    assert error.value.field == field


#: The request of a <Record> verb's action URL: the call's parameters and the recording's.
RECORDED = {
    **{k: v for k, v in CALL.items() if k not in ("CallDuration", "Timestamp", "SequenceNumber")},
    "CallStatus": "in-progress",
    "RecordingUrl": "https://api.twilio.com/2010-04-01/Accounts/AC01/Recordings/RE5d1e",
    "RecordingSid": "RE5d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a",
    "RecordingDuration": "42",
    "Digits": "hangup",
}


def test_a_recorded_message_is_the_call_as_a_voicemail() -> None:
    event = voicemail_event(RECORDED, now=clock)
    assert event is not None
    assert event["type"] == "call.completed"
    assert event["occurred_at"] == NOW.isoformat()
    data = event["data"]
    assert data["status"] == "voicemail"
    assert data["duration_s"] == 42
    assert data["recording_url"] == RECORDED["RecordingUrl"]
    assert data["contact"] == {"kind": "phone", "value": "+16285550187"}
    assert data["external_id"] == CALL["CallSid"]  # the call itself: stored once
    assert data["attributes"]["RecordingSid"] == RECORDED["RecordingSid"]
    [model] = parse_events([event])
    assert model.data.status == "voicemail"  # type: ignore[attr-defined]


def test_a_caller_who_hangs_up_before_the_tone_leaves_no_voicemail() -> None:
    assert voicemail_event({**RECORDED, "RecordingUrl": ""}, now=clock) is None


def test_a_malformed_recording_names_the_field() -> None:
    with pytest.raises(TwilioPayloadError) as error:
        voicemail_event({**RECORDED, "RecordingDuration": "long"}, now=clock)
    assert error.value.field == "RecordingDuration"


INBOUND_SMS = {
    "AccountSid": "AC0123456789abcdef0123456789abcdef",
    "MessageSid": "SM9f8e7d6c5b4a39281706f5e4d3c2b1a0",
    "SmsSid": "SM9f8e7d6c5b4a39281706f5e4d3c2b1a0",
    "SmsStatus": "received",
    "From": "+16285550187",
    "To": "+14155550100",
    "Body": "Is my order on its way? 📦",
    "NumMedia": "2",
    "MediaUrl0": "https://api.twilio.com/media/ME1",
    "MediaContentType0": "image/jpeg",
    "MediaUrl1": "https://api.twilio.com/media/ME2",
    "MediaContentType1": "image/png",
    "NumSegments": "1",
    "FromCountry": "US",
    "ApiVersion": "2010-04-01",
}


def test_an_incoming_message_is_received_from_its_sender() -> None:
    event = sms_event(INBOUND_SMS, now=clock)
    assert event is not None
    assert event["type"] == "sms.received"
    data = event["data"]
    assert data["text"] == "Is my order on its way? 📦"
    assert data["media_urls"] == [
        "https://api.twilio.com/media/ME1",
        "https://api.twilio.com/media/ME2",
    ]
    assert data["contact"]["value"] == "+16285550187"
    assert data["thread_key"] == "+16285550187|+14155550100"
    parse_events([event])


def test_our_message_is_sent_once_it_is_sent_or_delivered() -> None:
    callback = {
        "AccountSid": INBOUND_SMS["AccountSid"],
        "MessageSid": "SM00000000000000000000000000000001",
        "MessageStatus": "sent",
        "From": "+14155550100",
        "To": "+16285550187",
    }
    sent = sms_event(callback, now=clock)
    delivered = sms_event({**callback, "MessageStatus": "delivered"}, now=clock)
    assert sent is not None
    assert sent == delivered  # the same event: the second callback is a replay
    assert sent["type"] == "sms.sent"
    assert sent["data"]["contact"]["value"] == "+16285550187"
    assert sent["data"]["thread_key"] == "+16285550187|+14155550100"  # the inbound's thread
    assert sms_event({**callback, "MessageStatus": "queued"}, now=clock) is None
    parse_events([sent])


def test_an_sms_without_its_sid_is_refused() -> None:
    with pytest.raises(TwilioPayloadError):
        sms_event({k: v for k, v in INBOUND_SMS.items() if not k.endswith("Sid")}, now=clock)
