"""A seeded generator of realistic synthetic interactions for tests, benchmarks and demos.

``generate(count, seed=...)`` yields ``count`` interaction events in the wire shape: five
channels, threaded conversations (email reply chains, chat sessions, SMS exchanges), and
customers who come back on other channels. The same seed always gives the same events,
ids included. Events average about 1 KB of JSON.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

__all__ = ["Customer", "customers", "generate"]

START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)

_FIRST = [
    "Ada",
    "Ben",
    "Chloe",
    "Dev",
    "Elena",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jamal",
    "Kofi",
    "Lena",
    "Mateo",
    "Nadia",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tariq",
    "Uma",
    "Viktor",
    "Wen",
    "Xavier",
    "Yara",
    "Zoe",
]
_LAST = [
    "Adams",
    "Baker",
    "Chen",
    "Diallo",
    "Evans",
    "Fischer",
    "Garcia",
    "Hughes",
    "Ito",
    "Jensen",
    "Kowalski",
    "Lopez",
    "Moreau",
    "Nguyen",
    "Okafor",
    "Patel",
    "Quist",
    "Rossi",
    "Silva",
    "Tanaka",
    "Ueda",
    "Varga",
    "Weber",
    "Young",
    "Zhang",
]
_AREAS = ["212", "305", "312", "415", "503", "617", "628", "702", "718", "805", "917"]
_TIERS = (("enterprise", 0.05), ("business", 0.25), ("consumer", 0.70))
_BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 Version/18.1 Safari/605.1.15",
)
_AGENTS = [f"ag-{i:02d}" for i in range(1, 41)]

_TOPICS = {
    "billing": (
        "my invoice {ref} charges for {n} items but we only received {m}",
        "I was billed twice this month for order {ref}",
        "the discount promised on the phone is missing from invoice {ref}",
    ),
    "delivery": (
        "order {ref} was due on Tuesday and still has not arrived",
        "the courier left parcel {ref} with a neighbour I do not know",
        "can I move the delivery of order {ref} to the afternoon",
    ),
    "outage": (
        "the tracking page has been down since this morning",
        "I cannot log in to the portal, it says error {n}",
        "the mobile app crashes when I open order {ref}",
    ),
    "cancellation": (
        "I would like to cancel my subscription at the end of the month",
        "your competitor offered us {n} percent less, convince me to stay",
        "please close account {ref}, we are moving to another provider",
    ),
    "advert": (
        "I saw your advert about the first month free, how do I sign up",
        "does the offer in your advert apply to business accounts",
    ),
}
_FILLER = [
    "This is not the first time this has happened and I would appreciate a quick answer",
    "I have tried the help centre and the automated assistant without success",
    "Please call me back or reply to this message with a reference I can quote",
    "We have been customers for several years and value the service, but this needs fixing",
    "Our finance team needs the corrected figures before the end of the week",
    "Thank you in advance for looking into it.",
]
_AGENT_LINES = (
    "Thank you for getting in touch, I have looked into {ref} and corrected it.",
    "I am sorry for the trouble. I have escalated {ref} to our logistics team.",
    "I have applied a credit to your account and you will see it on the next invoice.",
    "Your request is done. Is there anything else I can help you with today?",
)

_CLOSINGS = (
    "You will receive a confirmation by email within the hour with the details of the change.",
    "If anything else comes up, reply here and the same team will pick it up straight away.",
    "I have added a note to your account so that whoever you speak to next knows the story.",
)

# channel: (weight, messages per conversation)
_CHANNELS = {
    "email": (0.30, (1, 4)),
    "voice": (0.25, (1, 2)),
    "chat": (0.20, (3, 8)),
    "sms": (0.15, (2, 6)),
    "twitter": (0.10, (1, 3)),
}


@dataclass(frozen=True, slots=True)
class Customer:
    customer_id: str
    name: str
    email: str
    phone: str
    handle: str
    tier: str
    account_value: float
    churn_risk: float


def customers(count: int, *, seed: int = 0) -> list[Customer]:
    """``count`` synthetic customers with an email, a phone number and an X handle each."""
    rng = random.Random(f"customers:{seed}")
    people = []
    for i in range(count):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        tier = rng.choices([t for t, _ in _TIERS], [w for _, w in _TIERS])[0]
        scale = {"enterprise": 250_000.0, "business": 20_000.0, "consumer": 600.0}[tier]
        people.append(
            Customer(
                customer_id=f"cu-{i:06d}",
                name=f"{first} {last}",
                email=f"{first}.{last}.{i}@example.com".lower(),
                phone=f"+1{rng.choice(_AREAS)}{rng.randint(200, 999)}{i % 10_000:04d}",
                handle=f"{first}_{last}{i}".lower()[:15],
                tier=tier,
                account_value=round(rng.lognormvariate(0, 0.8) * scale, 2),
                churn_risk=round(rng.betavariate(2, 5), 3),
            )
        )
    return people


def generate(
    count: int,
    *,
    seed: int = 0,
    customer_count: int | None = None,
    start: datetime = START,
    with_customers: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yield ``count`` interaction events (plus ``customer.registered`` events first when
    ``with_customers``), conversation by conversation, in the wire shape."""
    rng = random.Random(seed)
    people = customers(customer_count or max(1, count // 10), seed=seed)
    if with_customers:
        for person in people:
            yield _registered(person, start - timedelta(days=30), rng)
    # A few customers write most of the time: repeat contacts across channels.
    weights = [1.0 / (rank + 1) ** 0.6 for rank in range(len(people))]
    cumulative = list(itertools.accumulate(weights))  # choices() would redo this per call
    clock = start
    produced = 0
    while produced < count:
        person = rng.choices(people, cum_weights=cumulative)[0]
        channel = rng.choices(list(_CHANNELS), [w for w, _ in _CHANNELS.values()])[0]
        low, high = _CHANNELS[channel][1]
        length = min(rng.randint(low, high), count - produced)
        clock += timedelta(seconds=rng.expovariate(1 / 90))
        yield from _conversation(rng, person, channel, length, clock)
        produced += length


def _uuid(rng: random.Random) -> str:
    return str(UUID(int=rng.getrandbits(128), version=4))


def _registered(person: Customer, when: datetime, rng: random.Random) -> dict[str, Any]:
    return {
        "id": _uuid(rng),
        "type": "customer.registered",
        "occurred_at": when.isoformat(),
        "data": {
            "customer_id": person.customer_id,
            "name": person.name,
            "tier": person.tier,
            "account_value": person.account_value,
            "churn_risk": person.churn_risk,
            "contacts": [
                {"kind": "email", "value": person.email},
                {"kind": "phone", "value": person.phone},
                {"kind": "twitter", "value": person.handle},
            ],
        },
        "metadata": {"connector": "generator"},
    }


def _text(rng: random.Random, topic: str, sentences: int) -> str:
    ref = f"{rng.choice('ABCDEFGH')}{rng.randint(10000, 99999)}"
    opening = rng.choice(_TOPICS[topic]).format(ref=ref, n=rng.randint(2, 60), m=rng.randint(1, 20))
    body = [opening[0].upper() + opening[1:], *rng.sample(_FILLER, k=min(sentences, len(_FILLER)))]
    return ". ".join(s.rstrip(".") for s in body) + "."


def _conversation(
    rng: random.Random, person: Customer, channel: str, length: int, start: datetime
) -> Iterator[dict[str, Any]]:
    topic = rng.choice(list(_TOPICS))
    conversation_id = f"cv-{rng.getrandbits(64):016x}"
    agent = rng.choice(_AGENTS)
    subject = _text(rng, topic, 0)[:80]
    when = start
    for turn in range(length):
        inbound = turn % 2 == 0
        when += timedelta(
            seconds=rng.expovariate(1 / {"email": 7200, "voice": 86400}.get(channel, 60))
        )
        external_id = f"{channel}-{rng.getrandbits(80):020x}"
        data: dict[str, Any] = {
            "direction": "inbound" if inbound else "outbound",
            "customer_id": person.customer_id,
            "conversation_id": conversation_id,
            "external_id": external_id,
        }
        if not inbound:
            data["agent_id"] = agent
        if inbound:
            line = _text(rng, topic, rng.randint(2, 5))
        else:
            reply = rng.choice(_AGENT_LINES).format(ref=conversation_id[-6:])
            line = f"{reply} {rng.choice(_CLOSINGS)}"
        if channel == "email":
            event_type = "email.received" if inbound else "email.sent"
            data |= {
                "contact": {"kind": "email", "value": person.email},
                "thread_key": f"<{conversation_id}@mail.example.com>",
                "subject": subject if turn == 0 else f"Re: {subject}",
                "body": f"Hello,\n\n{_text(rng, topic, 5) if inbound else line}\n\n"
                + (person.name if inbound else "Customer Care")
                + ("\n\n> " + _text(rng, topic, 4) if turn else ""),
                "to": ["support@support.example"] if inbound else [person.email],
            }
            if inbound and rng.random() < 0.2:
                data["attachments"] = [
                    {
                        "name": "screenshot.png",
                        "content_type": "image/png",
                        "size": rng.randint(20_000, 900_000),
                    }
                ]
        elif channel == "voice":
            event_type = "call.completed"
            status = rng.choices(
                ["answered", "missed", "voicemail", "abandoned"], [0.7, 0.1, 0.1, 0.1]
            )[0]
            data |= {
                "contact": {"kind": "phone", "value": person.phone},
                "status": status,
                "duration_s": rng.randint(30, 1500) if status == "answered" else rng.randint(0, 60),
            }
            if status == "answered":
                data["agent_id"] = agent
                data["transcript"] = (
                    f"Customer: {_text(rng, topic, 4)} Agent: {rng.choice(_AGENT_LINES)}".format(
                        ref=conversation_id[-6:]
                    )
                )
                data["recording_url"] = f"https://recordings.support.example/{external_id}.wav"
        elif channel == "chat":
            event_type = "chat.message"
            data |= {
                "contact": {"kind": "chat", "value": f"visitor-{person.customer_id}"},
                "text": line,
                "attributes": {
                    "inbox": "website",
                    "page_url": f"https://www.example.com/help/{topic}?ref={conversation_id[-8:]}",
                    "browser": rng.choice(_BROWSERS),
                    "locale": rng.choice(("en-US", "en-GB", "fr-FR", "de-DE", "es-ES")),
                    "message_id": rng.randint(10**8, 10**9),
                },
            }
        elif channel == "sms":
            event_type = "sms.received" if inbound else "sms.sent"
            data |= {
                "contact": {"kind": "phone", "value": person.phone},
                "text": line[:320],
                "attributes": {
                    "account_sid": f"AC{rng.getrandbits(128):032x}",
                    "messaging_service_sid": f"MG{rng.getrandbits(128):032x}",
                    "num_segments": 1 + len(line[:320]) // 160,
                    "from_city": rng.choice(("SAN FRANCISCO", "NEW YORK", "CHICAGO", "BOSTON")),
                    "from_state": rng.choice(("CA", "NY", "IL", "MA")),
                    "from_country": "US",
                },
            }
        else:
            event_type = "tweet.received" if inbound else "tweet.sent"
            data |= {
                "contact": {"kind": "twitter", "value": person.handle},
                "handle": person.handle,
                "kind": "mention" if turn == 0 else ("reply" if not inbound else "direct_message"),
                "text": line[:280],
                "attributes": {
                    "lang": "en",
                    "source": rng.choice(
                        ("Twitter for iPhone", "Twitter for Android", "Twitter Web App")
                    ),
                    "author_id": str(rng.getrandbits(60)),
                    "followers_count": int(rng.paretovariate(1.2) * 50),
                },
            }
        yield {
            "id": _uuid(rng),
            "type": event_type,
            "occurred_at": when.isoformat(),
            "data": data,
            "metadata": {"connector": "generator", "correlation_id": conversation_id},
        }
