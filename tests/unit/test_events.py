"""The event catalogue: validation, normalisation, derived ids and streams, upcasting."""

from __future__ import annotations

import re
from typing import Any, Literal
from uuid import UUID, uuid5

import pytest

from interaction_store.events import (
    CATALOGUE,
    EVENT_NAMESPACE,
    CallCompleted,
    EmailReceived,
    EventBase,
    SmsReceivedData,
    parse_events,
    stream_for,
    upcast,
    with_conversation,
)
from interaction_store.exceptions import EventValidationError
from interaction_store.identity import normalise_contact
from tests.helpers import T0, email, sms

DESIGN_CATALOGUE = {
    "email.received", "email.sent", "call.completed", "chat.message", "chat.ended",
    "sms.received", "sms.sent", "tweet.received", "tweet.sent", "callback.requested",
    "customer.registered", "customer.profile_updated", "customer.identity_linked",
    "customer.identity_unlinked", "customer.merged", "customer.unmerged", "customer.erased",
    "conversation.linked", "conversation.escalated", "conversation.resolved",
    "conversation.reopened",
}  # fmt: skip


def test_the_catalogue_has_every_type_of_the_design() -> None:
    assert set(CATALOGUE) == DESIGN_CATALOGUE


@pytest.mark.parametrize(
    ("kind", "raw", "normal"),
    [
        ("email", "  Alice.Smith@Example.COM ", "alice.smith@example.com"),
        ("phone", "+44 20 7946 0958", "+442079460958"),
        ("phone", "(415) 555-0100", "+14155550100"),
        ("phone", "+1-415-555-0100", "+14155550100"),
        ("twitter", "@JDoe_Tweets", "jdoe_tweets"),
        ("twitter", "1859912345678901234", "1859912345678901234"),
        ("chat", " visitor-8842 ", "visitor-8842"),
    ],
)
def test_contacts_are_normalised(kind: str, raw: str, normal: str) -> None:
    assert normalise_contact(kind, raw) == normal


def test_phone_numbers_without_country_code_use_the_configured_region() -> None:
    assert normalise_contact("phone", "020 7946 0958", phone_region="GB") == "+442079460958"
    [event] = parse_events([sms(phone="020 7946 0958")], phone_region="GB")
    assert isinstance(event.data, SmsReceivedData)
    assert event.data.contact.value == "+442079460958"


@pytest.mark.parametrize(
    ("kind", "raw"),
    [("email", "not-an-email"), ("email", "a@b"), ("phone", "call me"), ("phone", "+1 23"),
     ("twitter", "@has space"), ("chat", "two words"), ("fax", "123")],
)  # fmt: skip
def test_unparseable_contacts_are_refused(kind: str, raw: str) -> None:
    reason = re.escape(repr(raw)) if kind != "fax" else "unknown contact kind"
    with pytest.raises(ValueError, match=reason):
        normalise_contact(kind, raw)


def test_contact_string_form_is_accepted() -> None:
    [event] = parse_events([email(1, contact="email:Bob@Example.com")])
    assert str(event.data.contact) == "email:bob@example.com"  # type: ignore[attr-defined]


def test_channel_and_direction_follow_from_the_type() -> None:
    [event] = parse_events([email(1)])
    assert isinstance(event, EmailReceived)
    assert (event.data.channel, event.data.direction) == ("email", "inbound")
    bad = email(1, direction="outbound")
    with pytest.raises(EventValidationError) as invalid:
        parse_events([bad])
    assert invalid.value.errors[0].field == "data.direction"


def test_interaction_ids_are_derived_from_the_natural_key() -> None:
    first, again = parse_events([email(1), email(1)])
    assert first.id == again.id == uuid5(EVENT_NAMESPACE, "email.received:<m1@mail.example.com>")
    [other] = parse_events([email(2)])
    assert other.id != first.id


def test_a_given_id_is_kept() -> None:
    given = "0b0d2f58-0c0e-4b7a-9a55-8d2f5d4c8e11"
    [event] = parse_events([{**email(1), "id": given}])
    assert event.id == UUID(given)


def test_errors_name_every_invalid_event_by_index() -> None:
    with pytest.raises(EventValidationError) as invalid:
        parse_events([sms(0), {"type": "sms.received"}, sms(2), {"type": 7}])
    indexes = {e.index for e in invalid.value.errors}
    assert indexes == {1, 3}
    fields = {(e.index, e.field) for e in invalid.value.errors}
    assert (1, "occurred_at") in fields
    assert (1, "data") in fields


def test_streams_follow_from_the_data() -> None:
    call, registered = parse_events(
        [
            {
                "type": "call.completed",
                "occurred_at": T0.isoformat(),
                "data": {
                    "contact": "phone:+14155550100",
                    "direction": "inbound",
                    "status": "missed",
                    "external_id": "CA1",
                    "conversation_id": "cv-9",
                },
            },
            {"type": "customer.merged", "occurred_at": T0.isoformat(),
             "data": {"customer_id": "cu-1", "source_customer_id": "cu-2"}},
        ]
    )  # fmt: skip
    assert isinstance(call, CallCompleted)
    assert stream_for(call) == "conversation-cv-9"
    assert stream_for(registered) == "customer-cu-1"


def test_threads_without_a_conversation_get_a_stable_one() -> None:
    a, b = parse_events([email(1, thread_key="<root@x>"), email(2, thread_key="<root@x>")])
    a, b = with_conversation(a), with_conversation(b)
    assert a.data.conversation_id == b.data.conversation_id  # type: ignore[attr-defined]
    assert stream_for(a) == f"conversation-{a.data.conversation_id}"  # type: ignore[attr-defined]


class SmsReceivedV2(EventBase):
    """A later shape of sms.received, for the upcasting hook: ``text`` became ``body``."""

    type: Literal["sms.received"] = "sms.received"
    schema_version: Literal[2] = 2
    data: Any

    @staticmethod
    def upcast_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
        data = dict(data)
        data["body"] = data.pop("text")
        return data


def test_upcasting_applies_each_step_to_old_data() -> None:
    catalogue = {**CATALOGUE, "sms.received": SmsReceivedV2}
    version, data = upcast("sms.received", 1, {"text": "hi"}, catalogue)
    assert (version, data) == (2, {"body": "hi"})
    assert upcast("sms.received", 2, {"body": "hi"}, catalogue) == (2, {"body": "hi"})
    assert upcast("sms.received", 1, {"text": "hi"}) == (1, {"text": "hi"})  # v1 is current
    assert upcast("unknown.type", 1, {"x": 1}) == (1, {"x": 1})


PROFILE = {"type": "customer.profile_updated", "occurred_at": T0.isoformat()}


@pytest.mark.parametrize(
    ("event", "field", "reason"),
    [
        ({**sms(0), "occurred_at": 1767225600}, "occurred_at", "not a number"),
        ({**sms(0), "occurred_at": "0001-01-01T00:00:00+01:00"}, "occurred_at", "out of range"),
        ({**PROFILE, "data": {"customer_id": "cu-1", "churn_risk": True}}, "data.churn_risk", ""),
        (
            {**PROFILE, "data": {"customer_id": "cu-1", "account_value": "10"}},
            "data.account_value",
            "",
        ),
        ({**sms(0), "data": {**sms(0)["data"], "text": 42}}, "data.text", ""),
    ],
)
def test_values_are_taken_as_the_schema_says_not_coerced(
    event: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(EventValidationError) as invalid:
        parse_events([event])
    [error] = invalid.value.errors
    assert (error.index, error.field) == (0, field)
    assert reason in error.reason


def test_times_are_kept_in_utc_whatever_offset_they_came_with() -> None:
    [event] = parse_events([{**sms(0), "occurred_at": "2026-11-02T09:00:00-19:30"}])
    assert event.occurred_at.isoformat() == "2026-11-03T04:30:00+00:00"
