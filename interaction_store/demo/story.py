"""The demo story: why one cross-channel record matters, told in events.

- Margaret Chen runs logistics at Northwind, a $1.2M account at high risk of churn. She
  emails about a wrong invoice, hears nothing for two days, then calls: the agent who
  answers can see the email.
- Sam Patel, unknown to us, calls about an advert: a $500 prospect, and a new contact.
- @jdoe_tweets complains publicly about an outage; we reply.
- Priya Nair reschedules a delivery by SMS.
- A web visitor who turns out to be Margaret's colleague resets a password over chat.

Every id and time is fixed, so loading the story twice adds nothing the second time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid5

from interaction_store.events import EVENT_NAMESPACE

__all__ = ["story"]

DAY0 = datetime(2026, 11, 16, 9, 0, tzinfo=UTC)


def _at(days: float, hours: float = 0, minutes: float = 0) -> str:
    return (DAY0 + timedelta(days=days, hours=hours, minutes=minutes)).isoformat()


def _event(key: str, event_type: str, when: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(uuid5(EVENT_NAMESPACE, f"demo:{key}")),
        "type": event_type,
        "occurred_at": when,
        "data": data,
        "metadata": {"connector": "demo"},
    }


def story() -> list[dict[str, Any]]:
    """The story's events in the wire shape, oldest first."""
    margaret = {"kind": "email", "value": "margaret.chen@northwind.example"}
    margaret_phone = {"kind": "phone", "value": "+1 415 555 0142"}
    return [
        _event(
            "margaret-registered",
            "customer.registered",
            _at(-90),
            {
                "customer_id": "cu-northwind-mchen",
                "name": "Margaret Chen",
                "tier": "enterprise",
                "account_value": 1_200_000,
                "churn_risk": 0.72,
                "contacts": [margaret, margaret_phone],
            },
        ),
        _event(
            "margaret-email",
            "email.received",
            _at(0, 0, 12),
            {
                "contact": margaret,
                "customer_id": "cu-northwind-mchen",
                "conversation_id": "cv-northwind-invoice",
                "thread_key": "<inv-7731@northwind.example>",
                "external_id": "<inv-7731@northwind.example>",
                "subject": "Invoice INV-7731 bills 40 pallets, we shipped 28",
                "body": (
                    "Hello,\n\nOur November invoice INV-7731 charges for 40 pallets of cold-chain "
                    "storage, but our manifest shows 28. This is the second month in a row. Please "
                    "correct it before our finance run on Friday; I have attached the manifest.\n\n"
                    "Margaret Chen\nHead of Logistics, Northwind"
                ),
                "to": ["billing@support.example"],
                "attachments": [
                    {"name": "manifest-nov.pdf", "content_type": "application/pdf", "size": 48213}
                ],
            },
        ),
        _event(
            "margaret-call",
            "call.completed",
            _at(2, 1, 5),
            {
                "contact": margaret_phone,
                "customer_id": "cu-northwind-mchen",
                "conversation_id": "cv-northwind-invoice",
                "direction": "inbound",
                "external_id": "CA5f1e0b6e4c2a4d0f9b1c7d3e2a8f6b10",
                "agent_id": "ag-olivia",
                "status": "answered",
                "duration_s": 412,
                "recording_url": "https://recordings.support.example/CA5f1e0b6e4c2a4d0f9b1c7d3e2a8f6b10.wav",
                "transcript": (
                    "Customer: I emailed on Monday about invoice 7731 and nobody answered. "
                    "Agent: I can see your email and the manifest, I'm sorry you waited. I've "
                    "credited the 12 pallets and I'll send the corrected invoice today."
                ),
            },
        ),
        _event(
            "margaret-reply",
            "email.sent",
            _at(2, 1, 30),
            {
                "contact": margaret,
                "customer_id": "cu-northwind-mchen",
                "conversation_id": "cv-northwind-invoice",
                "thread_key": "<inv-7731@northwind.example>",
                "external_id": "<re-inv-7731@support.example>",
                "agent_id": "ag-olivia",
                "subject": "Re: Invoice INV-7731 bills 40 pallets, we shipped 28",
                "body": "Hi Margaret, as promised on the phone: the corrected invoice INV-7731-R is attached.",
                "to": ["margaret.chen@northwind.example"],
                "attachments": [
                    {"name": "INV-7731-R.pdf", "content_type": "application/pdf", "size": 31877}
                ],
            },
        ),
        _event(
            "margaret-resolved",
            "conversation.resolved",
            _at(2, 1, 31),
            {
                "conversation_id": "cv-northwind-invoice",
                "agent_id": "ag-olivia",
                "resolution": "credited 12 pallets, corrected invoice sent",
            },
        ),
        _event(
            "sam-call",
            "call.completed",
            _at(1, 6),
            {
                "contact": {"kind": "phone", "value": "+1 628 555 0187"},
                "conversation_id": "cv-sam-advert",
                "direction": "inbound",
                "external_id": "CA0b9d8c7e6f5a4b3c2d1e0f9a8b7c6d5e",
                "agent_id": "ag-marcus",
                "status": "answered",
                "duration_s": 185,
                "transcript": "Caller saw the 'first month free' advert on the bus and asked how to sign up.",
            },
        ),
        _event(
            "jdoe-tweet",
            "tweet.received",
            _at(1, 3, 40),
            {
                "contact": {"kind": "twitter", "value": "@jdoe_tweets"},
                "conversation_id": "cv-tw-1859912345678901234",
                "external_id": "1859912345678901234",
                "handle": "jdoe_tweets",
                "kind": "mention",
                "text": "@ExampleSupport your tracking site has been down all morning. Again. #fail",
            },
        ),
        _event(
            "jdoe-reply",
            "tweet.sent",
            _at(1, 4, 5),
            {
                "contact": {"kind": "twitter", "value": "@jdoe_tweets"},
                "conversation_id": "cv-tw-1859912345678901234",
                "external_id": "1859912399887766554",
                "agent_id": "ag-lena",
                "kind": "reply",
                "text": "@jdoe_tweets Sorry about that. Tracking is back since 11:50; DM us your order number and we'll check it.",
            },
        ),
        _event(
            "priya-sms-1",
            "sms.received",
            _at(3, 7),
            {
                "contact": {"kind": "phone", "value": "+44 7700 900123"},
                "conversation_id": "cv-sms-priya",
                "external_id": "SM1f2e3d4c5b6a79881726354433221100",
                "text": "Hi, can my delivery tomorrow move to Thursday afternoon? Order 55120",
            },
        ),
        _event(
            "priya-sms-2",
            "sms.sent",
            _at(3, 7, 9),
            {
                "contact": {"kind": "phone", "value": "+44 7700 900123"},
                "conversation_id": "cv-sms-priya",
                "external_id": "SM99887766554433221100ffeeddccbbaa",
                "agent_id": "ag-marcus",
                "text": "Done: order 55120 now arrives Thursday 13:00-17:00. Reply STOP to opt out.",
            },
        ),
        _event(
            "priya-sms-3",
            "sms.received",
            _at(3, 7, 12),
            {
                "contact": {"kind": "phone", "value": "+44 7700 900123"},
                "conversation_id": "cv-sms-priya",
                "external_id": "SM00112233445566778899aabbccddeeff",
                "text": "Perfect, thank you!",
            },
        ),
        _event(
            "chat-1",
            "chat.message",
            _at(4, 2),
            {
                "contact": {"kind": "chat", "value": "visitor-8842"},
                "conversation_id": "cv-chat-8842",
                "direction": "inbound",
                "external_id": "chat-8842-1",
                "text": "Hi, I'm locked out of the Northwind portal after too many password attempts.",
            },
        ),
        _event(
            "chat-2",
            "chat.message",
            _at(4, 2, 1),
            {
                "contact": {"kind": "chat", "value": "visitor-8842"},
                "conversation_id": "cv-chat-8842",
                "direction": "outbound",
                "external_id": "chat-8842-2",
                "agent_id": "ag-lena",
                "text": "I've unlocked the account and sent a reset link to your work email.",
            },
        ),
        _event(
            "chat-end",
            "chat.ended",
            _at(4, 2, 4),
            {
                "contact": {"kind": "chat", "value": "visitor-8842"},
                "conversation_id": "cv-chat-8842",
                "external_id": "chat-8842-end",
                "ended_by": "customer",
            },
        ),
    ]
