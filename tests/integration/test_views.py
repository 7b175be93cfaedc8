"""The customers and conversations views: service levels, follow-ups, cases, priority."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from interaction_store import views
from interaction_store.demo import story
from interaction_store.policy import ServiceLevels, priority
from interaction_store.projections import ProjectionRunner, all_projections
from interaction_store.store import Store
from tests.helpers import T0, email, sms

LATER = T0 + timedelta(days=30)


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def interaction(
    event_type: str, minutes: float, conversation: str, *, customer: str = "cu-1", **data: Any
) -> dict[str, Any]:
    channel = {"email": "email", "sms": "sms", "call": "voice", "chat": "chat", "tweet": "twitter"}
    family = event_type.split(".")[0]
    contact = {
        "email": "email:alice@example.com",
        "sms": "phone:+14155550100",
        "call": "phone:+14155550100",
        "chat": "chat:visitor-1",
        "tweet": "twitter:alice",
    }[family]
    direction = "outbound" if event_type.endswith(".sent") else "inbound"
    return {
        "type": event_type,
        "occurred_at": at(minutes),
        "data": {
            "channel": channel[family],
            "direction": direction,
            "contact": contact,
            "customer_id": customer,
            "conversation_id": conversation,
            "external_id": f"{event_type}-{conversation}-{minutes}",
            **data,
        },
    }


def conversation_event(event_type: str, minutes: float, **data: Any) -> dict[str, Any]:
    return {"type": f"conversation.{event_type}", "occurred_at": at(minutes), "data": data}


@pytest.fixture
def runner(store: Store) -> ProjectionRunner:
    return ProjectionRunner(store, all_projections(), batch_size=7)


def summary(store: Store, conversation_id: str, **kwargs: Any) -> views.ConversationSummary:
    with store.pool.connection() as conn:
        found = views.conversation(conn, conversation_id, now=LATER, **kwargs)
    assert found is not None
    return found


def test_an_unanswered_email_breaches_after_four_hours_and_a_reply_ends_the_wait(
    store: Store, runner: ProjectionRunner
) -> None:
    store.append_batch(
        [
            interaction("email.received", 0, "c-1"),
            interaction("email.received", 30, "c-1"),  # still the same wait
            interaction("email.sent", 200, "c-1", agent_id="ag-1"),  # answered in time
            interaction("email.received", 300, "c-1"),
        ]
    )
    runner.catch_up()
    conv = summary(store, "c-1")
    assert conv.status == "open"
    assert conv.channels == ["email"]
    assert conv.interactions == 4
    assert [(w.started_at, w.ended_by) for w in conv.waits] == [
        (T0, "response"),
        (T0 + timedelta(minutes=300), None),
    ]
    assert conv.first_response_due_at == T0 + timedelta(hours=4)
    assert conv.first_response_at == T0 + timedelta(minutes=200)
    assert conv.awaiting_since == T0 + timedelta(minutes=300)
    assert conv.response_due_at == T0 + timedelta(minutes=540)
    assert not conv.waits[0].breached
    assert conv.waits[1].breached
    assert conv.breached

    with store.pool.connection() as conn:
        fresh = views.conversation(conn, "c-1", now=T0 + timedelta(minutes=301))
    assert fresh is not None
    assert not fresh.breached


def test_service_levels_are_per_channel_and_configurable(
    store: Store, runner: ProjectionRunner
) -> None:
    store.append_batch(
        [
            interaction("chat.message", 0, "c-chat", text="hello?"),
            interaction("chat.message", 3, "c-chat", text="hi!", direction="outbound"),
            interaction("sms.received", 0, "c-sms", text="hi"),
            interaction("sms.sent", 10, "c-sms", text="hello"),
            interaction("call.completed", 0, "c-call", status="missed"),
        ]
    )
    runner.catch_up()
    assert summary(store, "c-chat").breached  # 3 min > chat's 2 min
    assert not summary(store, "c-sms").breached  # 10 min < SMS's 15 min
    call = summary(store, "c-call")
    assert call.breached
    assert call.response_due_at == T0
    relaxed = ServiceLevels.parse("chat=5m, voice=1d")
    assert not summary(store, "c-chat", service_levels=relaxed).breached
    assert summary(store, "c-call", service_levels=relaxed).response_due_at == T0 + timedelta(
        days=1
    )
    with pytest.raises(ValueError, match="pager"):
        ServiceLevels.parse("pager=1m")


def test_a_call_while_an_email_waits_is_a_follow_up_of_it_and_both_are_marked(
    store: Store, runner: ProjectionRunner
) -> None:
    store.append_batch(
        [
            interaction("email.received", 0, "c-mail"),
            interaction("sms.received", 10, "c-sms"),  # another channel: a follow-up
            interaction("email.received", 20, "c-other-mail"),  # same channel: not one
            interaction("call.completed", 600, "c-call", status="answered", agent_id="ag-2"),
            interaction("email.sent", 700, "c-mail", agent_id="ag-2"),
            interaction("sms.received", 800, "c-sms"),  # after the answer: not one
        ]
    )
    runner.catch_up()
    mail = summary(store, "c-mail")
    assert [(f.channel, f.conversation_id) for f in mail.follow_ups] == [
        ("sms", "c-sms"),
        ("voice", "c-call"),
    ]
    assert mail.breached  # answered after 700 minutes
    call = summary(store, "c-call")
    # the call followed up every wait open at the time, the SMS's too
    assert [f.waiting_conversation_id for f in call.follows_up] == [
        "c-mail",
        "c-sms",
        "c-other-mail",
    ]
    assert call.waits == []  # an answered call needs no answer


def test_another_customers_inbound_is_no_follow_up(store: Store, runner: ProjectionRunner) -> None:
    store.append_batch(
        [
            interaction("email.received", 0, "c-1", customer="cu-1"),
            interaction("sms.received", 5, "c-2", customer="cu-2"),
        ]
    )
    runner.catch_up()
    assert summary(store, "c-1").follow_ups == []


def test_linked_conversations_form_one_case_answered_anywhere(
    store: Store, runner: ProjectionRunner
) -> None:
    store.append_batch(
        [
            interaction("email.received", 0, "c-mail"),
            interaction("tweet.received", 5, "c-tweet", text="@support hello?"),
            conversation_event(
                "linked", 6, conversation_id="c-tweet", linked_conversation_id="c-mail"
            ),
            interaction("tweet.sent", 30, "c-tweet", text="we are on it"),
        ]
    )
    runner.catch_up()
    mail, tweet = summary(store, "c-mail"), summary(store, "c-tweet")
    assert mail.case == tweet.case == ["c-mail", "c-tweet"]
    assert mail.case_id == "c-mail"
    assert mail.awaiting_since is None
    assert tweet.awaiting_since is None
    assert mail.first_response_at == T0 + timedelta(minutes=30)
    assert not mail.breached


def test_resolve_and_reopen(store: Store, runner: ProjectionRunner) -> None:
    store.append_batch(
        [
            interaction("sms.received", 0, "c-1"),
            conversation_event("resolved", 5, conversation_id="c-1", resolution="duplicate"),
        ]
    )
    runner.catch_up()
    conv = summary(store, "c-1")
    assert (conv.status, conv.awaiting_since, conv.waits[0].ended_by) == (
        "resolved",
        None,
        "resolved",
    )
    store.append_batch([interaction("sms.received", 60, "c-1")])  # the customer writes again
    runner.catch_up()
    conv = summary(store, "c-1")
    assert (conv.status, conv.awaiting_since) == ("open", T0 + timedelta(minutes=60))
    store.append_batch(
        [
            conversation_event("resolved", 70, conversation_id="c-1"),
            conversation_event("reopened", 80, conversation_id="c-1"),
            conversation_event(
                "escalated", 81, conversation_id="c-1", from_channel="sms", to_channel="voice"
            ),
        ]
    )
    runner.catch_up()
    conv = summary(store, "c-1")
    assert (conv.status, conv.channels) == ("open", ["sms", "voice"])


def customer_event(kind: str, customer: str, **data: Any) -> dict[str, Any]:
    return {
        "type": f"customer.{kind}",
        "occurred_at": T0.isoformat(),
        "data": {"customer_id": customer, **data},
    }


def test_the_customer_summary(store: Store, runner: ProjectionRunner) -> None:
    store.append_batch(
        [
            customer_event(
                "registered",
                "cu-1",
                name="Alice",
                tier="business",
                account_value=20_000,
                churn_risk=0.5,
                contacts=["email:alice@example.com"],
            ),
            customer_event("profile_updated", "cu-1", churn_risk=0.9),
            interaction("email.received", 0, "c-1"),
            interaction("email.sent", 10, "c-1", agent_id="ag-a"),
            interaction("call.completed", 20, "c-2", status="answered", agent_id="ag-b"),
            interaction("call.completed", 20, "c-3", status="answered", agent_id="ag-a"),
            interaction("sms.received", 30, "c-4"),
            conversation_event("resolved", 40, conversation_id="c-1"),
        ]
    )
    runner.catch_up()
    with store.pool.connection() as conn:
        found = views.customer(conn, "cu-1", now=LATER)
    assert found.profile is not None
    assert (found.profile.name, found.profile.tier, found.profile.churn_risk) == (
        "Alice",
        "business",
        0.9,
    )
    assert found.priority == priority(20_000, 0.9) == 18_200
    assert [str(i) for i in found.identities] == ["email:alice@example.com"]
    assert [(c.channel, c.interactions, c.inbound, c.outbound) for c in found.channels] == [
        ("sms", 1, 1, 0),
        ("voice", 2, 2, 0),
        ("email", 2, 1, 1),
    ]
    assert found.interactions == 5
    assert found.last_contact_at == T0 + timedelta(minutes=30)
    # two agents share the latest handled moment; ag-a handled Alice twice, ag-b once
    assert found.preferred_agent == "ag-a"
    assert [c.conversation_id for c in found.open_conversations] == ["c-4", "c-2", "c-3"]


def test_priority_follows_value_at_stake_not_channel() -> None:
    assert priority(1_000_000, 0.8) > priority(500, 0.8)
    assert priority(1_000_000, 0.0) > priority(500, 1.0)
    assert priority(None, None) == 0
    assert priority(1000, None) == priority(1000, 0.5)


def test_merged_customers_show_as_one_with_aliases(store: Store, runner: ProjectionRunner) -> None:
    store.append_batch(
        [
            customer_event("registered", "cu-big", name="Big Co", account_value=1e6),
            interaction("sms.received", 0, "c-1", customer="cu-small"),
            customer_event("merged", "cu-big", source_customer_id="cu-small"),
        ]
    )
    runner.catch_up()
    with store.pool.connection() as conn:
        found = views.customer(conn, "cu-small", now=LATER)
        assert views.find_customer(conn, "cu-small") == "cu-big"
        assert views.find_customer(conn, "cu-nobody") is None
    assert (found.customer_id, found.aliases, found.interactions) == ("cu-big", ["cu-small"], 1)
    assert found.profile is not None
    assert found.profile.name == "Big Co"


def test_the_demo_story_reads_right(store: Store, runner: ProjectionRunner) -> None:
    store.append_batch(story())
    runner.catch_up()
    with store.pool.connection() as conn:
        margaret = views.lookup_customer(conn, "email:Margaret.Chen@northwind.example")
        assert margaret == "cu-northwind-mchen"
        items = views.timeline(conn, margaret)
        mail = views.conversation(conn, "cv-northwind-invoice")
        summary_ = views.customer(conn, margaret)
        sam = views.customer(conn, views.lookup_customer(conn, "phone:+1 628 555 0187") or "")
    oldest_first = [(i.type, i.channel) for i in reversed(items)]
    assert oldest_first[:2] == [("email.received", "email"), ("call.completed", "voice")]
    assert mail is not None
    assert [(f.channel, f.type) for f in mail.follow_ups] == [("voice", "call.completed")]
    assert mail.breached
    assert mail.status == "resolved"
    assert mail.first_response_at is not None
    assert mail.first_response_due_at is not None
    assert mail.first_response_at - mail.first_response_due_at > timedelta(days=1)
    assert summary_.priority > sam.priority
    assert summary_.preferred_agent == "ag-olivia"
    assert sam.profile is None
    assert sam.customer_id.startswith("pc-")


def test_sms_and_email_helpers_still_land_on_the_timeline(
    store: Store, runner: ProjectionRunner
) -> None:
    store.append_batch([sms(1), email(2)])
    runner.catch_up()
    with store.pool.connection() as conn:
        row = conn.execute("SELECT count(*), sum(interactions) FROM conversations").fetchone()
    assert row == (2, 2)


def test_a_chat_that_ends_unanswered_waits_no_more(store: Store, runner: ProjectionRunner) -> None:
    store.append_batch(
        [
            interaction("chat.message", 0, "c-chat", text="anyone?"),
            interaction("chat.ended", 10, "c-chat", ended_by="customer"),
        ]
    )
    runner.catch_up()
    chat = summary(store, "c-chat")
    assert chat.awaiting_since is None
    assert chat.waits[0].ended_by == "chat ended"
    assert chat.breached  # ten minutes without an answer, against two
    assert chat.first_response_at is None


def test_the_one_query_context_agrees_with_the_summary(
    store: Store, runner: ProjectionRunner
) -> None:
    store.append_batch(story())
    store.append_batch(
        [
            interaction("email.received", 0, "c-open", customer="cu-northwind-mchen"),
            interaction("sms.received", 5, "c-open-2", customer="cu-northwind-mchen"),
            interaction("sms.sent", 9, "c-open-2", customer="cu-northwind-mchen"),
        ]
    )
    runner.catch_up()
    now = T0 + timedelta(minutes=60)
    with store.pool.connection() as conn:
        for who in ("cu-northwind-mchen", views.lookup_customer(conn, "phone:+16285550187")):
            assert who is not None
            full = views.customer(conn, who, now=now)
            small = views.context(conn, who, now=now)
            assert small is not None
            assert small["priority"] == full.priority
            assert small["preferred_agent"] == full.preferred_agent
            assert small["last_contact"] == full.last_contact_at
            assert [
                (c["conversation_id"], c["breached"], c["awaiting_since"] is not None)
                for c in small["open_conversations"]
            ] == [
                (c.conversation_id, c.breached, c.awaiting_since is not None)
                for c in full.open_conversations
            ]
        assert views.context(conn, "cu-nobody") is None


def test_a_customer_merged_into_one_without_a_profile_reads_alike_everywhere(
    store: Store, runner: ProjectionRunner
) -> None:
    """Profiles and identities stay under the ids merged in: the context picks the profile
    the summary picks, and a target that has rows only through the merge is found."""
    store.append_batch(
        [
            customer_event(
                "registered",
                "cu-small",
                account_value=1e6,
                churn_risk=0.9,
                contacts=["email:small@example.com"],
            ),
            interaction("sms.received", 0, "c-1", customer="cu-small"),
            interaction("email.received", 1, "c-2", customer="cu-big"),
            customer_event("merged", "cu-big", source_customer_id="cu-small"),
            customer_event("registered", "cu-quiet", contacts=["email:quiet@example.com"]),
            customer_event("merged", "cu-empty", source_customer_id="cu-quiet"),
        ]
    )
    runner.catch_up()
    with store.pool.connection() as conn:
        full = views.customer(conn, "cu-big", now=LATER)
        small = views.context(conn, "cu-big", now=LATER)
        assert small is not None
        assert (small["priority"], small["account_value"]) == (full.priority, 1e6)
        assert full.priority > 0
        for name in ("cu-empty", "cu-quiet"):
            assert views.find_customer_read(name).run(conn) == "cu-empty"
            found = views.context(conn, name, now=LATER)
            assert found is not None
            assert found["customer_id"] == "cu-empty"


def test_a_contact_is_unlinked_by_the_customer_it_was_merged_into(
    store: Store, runner: ProjectionRunner
) -> None:
    store.append_batch(
        [
            customer_event("registered", "cu-small", contacts=["email:alice@example.com"]),
            interaction("email.received", 0, "c-1", customer=None),
            customer_event("registered", "cu-big"),
            customer_event("merged", "cu-big", source_customer_id="cu-small"),
        ]
    )
    runner.catch_up()
    with store.pool.connection() as conn:
        assert views.lookup_customer(conn, "email:alice@example.com") == "cu-big"
    unlink = customer_event(
        "identity_unlinked", "cu-big", contact="email:alice@example.com", reason="wrong person"
    )
    store.append_batch([unlink])
    runner.catch_up()
    with store.pool.connection() as conn:
        assert views.lookup_customer(conn, "email:alice@example.com").startswith("pc-")
        assert views.customer(conn, "cu-big", now=LATER).interactions == 0


def test_the_timeline_is_newest_first_by_when_things_happened(
    store: Store, runner: ProjectionRunner
) -> None:
    """A backfill reaches the log after newer interactions: pages still go by occurred_at
    (the log's order breaking ties), and a cursor walks them without a skip or a repeat,
    filters too."""
    batches = [
        [interaction("email.received", 600, "c-1")],
        [interaction("call.completed", 60, "c-2", status="answered")],  # imported late
        [interaction("sms.received", 600, "c-3")],  # the same moment as the email
        [interaction("chat.message", 30, "c-4"), interaction("email.sent", 700, "c-1")],
    ]
    for batch in batches:
        store.append_batch(batch)
    runner.catch_up()
    with store.pool.connection() as conn:
        items = views.timeline(conn, "cu-1")
        expected = [("email.sent", 700), ("sms.received", 600), ("email.received", 600),
                    ("call.completed", 60), ("chat.message", 30)]  # fmt: skip
        assert [(i.type, (i.occurred_at - T0).total_seconds() / 60) for i in items] == expected
        walked, before = [], None
        while page := views.timeline(conn, "cu-1", limit=2, before=before):
            walked += page
            before = page[-1].position
        assert walked == items
        emails = views.timeline(conn, "cu-1", channel="email", limit=1)
        assert [i.type for i in emails] == ["email.sent"]
        older = views.timeline(conn, "cu-1", channel="email", before=emails[0].position)
        assert [i.type for i in older] == ["email.received"]
        assert views.customer(conn, "cu-1", now=LATER).last_contact_at == items[0].occurred_at


def test_what_reaches_the_log_late_takes_its_place_in_time(
    store: Store, runner: ProjectionRunner
) -> None:
    """A mailbox polled late: the email written before the missed call came after it in
    the log, and an agent's reply written before the customer's next message came last.
    Follow-ups go by when things happened, and that reply answers no later message."""
    for batch in (
        [interaction("call.completed", 2, "c-call", status="missed")],
        [interaction("email.received", 0, "c-mail")],  # happened first, arrived second
        [interaction("sms.received", 10, "c-sms")],
        [interaction("sms.sent", 5, "c-sms", agent_id="ag-1")],  # before the SMS it follows
    ):
        store.append_batch(batch)
    runner.catch_up()
    mail, call, text = (summary(store, c) for c in ("c-mail", "c-call", "c-sms"))
    assert [(f.channel, f.conversation_id) for f in mail.follow_ups] == [
        ("voice", "c-call"),
        ("sms", "c-sms"),
    ]
    assert [f.waiting_conversation_id for f in mail.follows_up] == []  # nothing came before
    assert [f.waiting_conversation_id for f in call.follows_up] == ["c-mail"]
    assert text.awaiting_since == T0 + timedelta(minutes=10)  # still waiting: unanswered
    assert [(w.ended_by, w.breached) for w in text.waits] == [(None, True)]
