"""The projection runner and the timeline projection, against real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from interaction_store.asof import as_of
from interaction_store.projections import ProjectionRunner, TimelineProjection, all_projections
from interaction_store.projections.timeline import provisional_customer_id
from interaction_store.store import RecordedEvent, Store
from interaction_store.views import conversations, customer, lookup_customer, timeline
from tests.helpers import T0, email, sms


def customer_event(kind: str, customer: str, n: int = 0, **data: Any) -> dict[str, Any]:
    return {
        "type": f"customer.{kind}",
        "occurred_at": T0.isoformat(),
        "data": {"customer_id": customer, **data},
        "id": f"00000000-0000-4000-8000-{n:012d}",
    }


def snapshot(store: Store) -> list[tuple[Any, ...]]:
    with store.pool.connection() as conn:
        return conn.execute(
            "SELECT position, owner_id, customer_id FROM timeline ORDER BY position"
        ).fetchall()


def read_views(store: Store, customers: list[str]) -> list[Any]:
    """What agents read: each customer's summary and every conversation, as of T0 + 1 day."""
    now = T0 + timedelta(days=1)
    with store.pool.connection() as conn:
        ids = [r[0] for r in conn.execute("SELECT conversation_id FROM conversations ORDER BY 1")]
        return [customer(conn, c, now=now) for c in customers] + conversations(conn, ids, now=now)


@pytest.fixture
def runner(store: Store) -> ProjectionRunner:
    return ProjectionRunner(store, [TimelineProjection()], batch_size=50)


def test_one_customer_across_channels_newest_first(store: Store, runner: ProjectionRunner) -> None:
    store.append_batch(
        [
            customer_event(
                "registered",
                "cu-1",
                1,
                contacts=[
                    {"kind": "email", "value": "alice@example.com"},
                    {"kind": "phone", "value": "+14155550100"},
                ],
            ),
            email(1, conversation_id="c-email"),
            sms(600, conversation_id="c-sms", text="<b>Hello</b>   there &amp; again"),
        ]
    )
    assert runner.catch_up() == 3
    with store.pool.connection() as conn:
        assert lookup_customer(conn, "phone:(415) 555-0100") == "cu-1"
        items = timeline(conn, "cu-1")
        assert [(i.channel, i.conversation_id) for i in items] == [
            ("sms", "c-sms"),
            ("email", "c-email"),
        ]
        assert items[0].snippet == "Hello there & again"
        assert items[1].subject == "Order 1"
        page = timeline(conn, "cu-1", limit=1)
        assert timeline(conn, "cu-1", before=page[0].position) == items[1:]
        assert timeline(conn, "cu-1", channel="email") == items[1:]


def test_linking_a_contact_moves_its_whole_past(store: Store, runner: ProjectionRunner) -> None:
    store.append_batch([sms(i, conversation_id="c-1") for i in range(3)])
    runner.catch_up()
    with store.pool.connection() as conn:
        token = store.sealer.keyring(conn).token("phone:+14155550100").hex()
        provisional = provisional_customer_id("phone", token)
        assert lookup_customer(conn, "phone:+14155550100") == provisional
        assert len(timeline(conn, provisional)) == 3

    store.append_batch(
        [
            customer_event(
                "identity_linked", "cu-9", 1, contact={"kind": "phone", "value": "+14155550100"}
            )
        ]
    )
    runner.catch_up()
    with store.pool.connection() as conn:
        assert len(timeline(conn, "cu-9")) == 3
        assert timeline(conn, provisional) == []

    store.append_batch(
        [
            customer_event(
                "identity_unlinked", "cu-9", 2, contact={"kind": "phone", "value": "+14155550100"}
            )
        ]
    )
    runner.catch_up()
    with store.pool.connection() as conn:
        assert len(timeline(conn, provisional)) == 3


def test_merge_then_unmerge_is_as_if_never_merged(store: Store) -> None:
    runner = ProjectionRunner(store, all_projections(), batch_size=50)
    store.append_batch(
        [
            sms(1, conversation_id="c-a", customer_id="cu-a"),
            email(2, conversation_id="c-b", customer_id="cu-b"),  # a follow-up once merged
            email(3, conversation_id="c-e"),
        ]
    )
    runner.catch_up()
    never_merged = snapshot(store)
    never_merged_views = read_views(store, ["cu-a", "cu-b"])

    merged = customer_event("merged", "cu-b", 1, source_customer_id="cu-a")
    store.append_batch([merged])
    runner.catch_up()
    with store.pool.connection() as conn:
        assert len(timeline(conn, "cu-b")) == 2
        assert len(timeline(conn, "cu-a")) == 2  # the old id is an alias
        merged_b = customer(conn, "cu-b")
        follow_ups = conversations(conn, ["c-a"])[0].follow_ups
    assert merged_b.aliases == ["cu-a"]
    assert [f.conversation_id for f in follow_ups] == ["c-b"]
    store.append_batch([customer_event("unmerged", "cu-b", 2, source_customer_id="cu-a")])
    runner.catch_up()
    assert snapshot(store) == never_merged
    assert read_views(store, ["cu-a", "cu-b"]) == never_merged_views


def test_two_runners_on_one_projection_apply_every_event_once(store: Store) -> None:
    store.append_batch([sms(i, conversation_id=f"c-{i % 5}") for i in range(400)])
    runners = [ProjectionRunner(store, all_projections(), batch_size=20) for _ in range(2)]
    threads = [threading.Thread(target=r.catch_up) for r in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    with store.pool.connection() as conn:
        applied = conn.execute(
            "SELECT projection, applied FROM projection_checkpoints ORDER BY 1"
        ).fetchall()
        rows = conn.execute("SELECT count(*), count(DISTINCT position) FROM timeline").fetchone()
        tallied = conn.execute("SELECT sum(interactions) FROM conversations").fetchone()
    assert applied == [("conversations", 400), ("customers", 400), ("timeline", 400)]
    assert rows == (400, 400)
    assert tallied == (400,)  # an event applied twice would be counted twice
    assert all(lag.events == 0 for lag in runners[0].lag())


class Fussy:
    """A projection that cannot apply one event type; it writes what it applied."""

    name = "fussy"
    tables = ("fussy_seen",)

    def apply(self, conn: psycopg.Connection[Any], events: Sequence[RecordedEvent]) -> None:
        for event in events:
            if event.type == "email.received":
                raise ValueError("cannot handle email")
            conn.execute("INSERT INTO fussy_seen VALUES (%s)", (event.position,))


def test_a_poison_event_is_parked_and_the_projection_goes_on(store: Store) -> None:
    with store.pool.connection() as conn:
        conn.execute("CREATE TABLE fussy_seen (position bigint PRIMARY KEY)")
    result = store.append_batch([sms(1), email(2), sms(3)])
    runner = ProjectionRunner(store, [Fussy()], max_attempts=2)
    runner.catch_up()
    positions = [e.position for e in result.events]
    with store.pool.connection() as conn:
        seen = conn.execute("SELECT position FROM fussy_seen ORDER BY position").fetchall()
        parked = conn.execute(
            "SELECT projection, position, type, attempts, error FROM dead_letters"
        ).fetchall()
    assert seen == [(positions[0],), (positions[2],)]
    assert parked == [
        ("fussy", positions[1], "email.received", 2, "ValueError: cannot handle email")
    ]


def test_merges_may_be_repeated_and_retargeted_but_never_cycle(
    store: Store, runner: ProjectionRunner
) -> None:
    store.append_batch(
        [
            sms(1, conversation_id="c-s", customer_id="cu-s"),
            sms(2, conversation_id="c-t", customer_id="cu-t"),
            customer_event("merged", "cu-r", 1, source_customer_id="cu-s"),
            customer_event("merged", "cu-r", 2, source_customer_id="cu-t"),
            customer_event("merged", "cu-r", 3, source_customer_id="cu-s"),  # again: no-op
            customer_event("merged", "cu-t", 4, source_customer_id="cu-s"),  # s -> t -> r
            customer_event("merged", "cu-s", 5, source_customer_id="cu-r"),  # r -> s: a cycle
        ]
    )
    runner.catch_up()
    with store.pool.connection() as conn:
        merges = conn.execute(
            "SELECT source_customer_id, target_customer_id FROM customer_merges ORDER BY 1"
        ).fetchall()
        parked = conn.execute("SELECT error FROM dead_letters").fetchall()
        assert len(timeline(conn, "cu-r")) == 2
    assert merges == [("cu-s", "cu-t"), ("cu-t", "cu-r")]
    assert parked == [("ValueError: cu-s is merged into cu-r: merging would make a cycle",)]
    # Looking back passes over the parked merge as the views did, and agrees with them.
    with store.pool.connection() as conn, as_of(conn, store.head(), sealer=store.sealer):
        assert (
            conn.execute(
                "SELECT source_customer_id, target_customer_id FROM customer_merges ORDER BY 1"
            ).fetchall()
            == merges
        )
        assert len(timeline(conn, "cu-r")) == 2
