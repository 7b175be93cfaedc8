"""The demo story and the generator produce valid, realistic, reproducible events."""

from __future__ import annotations

from collections import Counter

import orjson

from interaction_store.demo import generate, story
from interaction_store.events import parse_events


def test_the_story_is_valid_and_covers_every_channel() -> None:
    events = parse_events(story())
    channels = {getattr(e.data, "channel", None) for e in events} - {None}
    assert channels == {"email", "voice", "chat", "sms", "twitter"}
    assert len({e.id for e in events}) == len(events)


def test_the_generator_is_reproducible_and_seeded() -> None:
    assert list(generate(200, seed=7)) == list(generate(200, seed=7))
    assert list(generate(200, seed=7)) != list(generate(200, seed=8))


def test_generated_events_look_like_a_contact_centre() -> None:
    events = list(generate(3000, seed=1, customer_count=300))
    models = (
        parse_events(events[:1000]) + parse_events(events[1000:2000]) + parse_events(events[2000:])
    )
    assert len(models) == 3000
    channels = Counter(m.data.channel for m in models)  # type: ignore[attr-defined]
    assert set(channels) == {"email", "voice", "chat", "sms", "twitter"}
    conversations = Counter(e["data"]["conversation_id"] for e in events)
    assert max(conversations.values()) > 1, "no threads"
    per_customer = Counter(e["data"]["customer_id"] for e in events)
    assert per_customer.most_common(1)[0][1] > 20, "no repeat contacts"
    size = sum(len(orjson.dumps(e)) for e in events) / len(events)
    assert 700 < size < 1400, size


def test_customers_come_first_when_asked() -> None:
    events = list(generate(50, seed=1, customer_count=5, with_customers=True))
    assert [e["type"] for e in events[:5]] == ["customer.registered"] * 5
    assert len(events) == 55
