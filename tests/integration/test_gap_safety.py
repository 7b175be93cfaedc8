"""A reader following the log never skips an event that commits late, and never sees one twice."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import pytest

from interaction_store import Checkpoint
from interaction_store.store import RecordedEvent, Store
from interaction_store.testing import TestDatabases
from tests.helpers import sms


@contextmanager
def held_append(store: Store, stream_id: str, *, commit: bool) -> Iterator[Callable[[], None]]:
    """Append in a transaction that stays open until the caller releases it."""
    appended = threading.Event()
    release = threading.Event()
    failure: list[BaseException] = []

    def hold() -> None:
        try:
            with store.transaction() as tx:
                tx.append(stream_id, [sms(999, text="held")])
                appended.set()
                release.wait(30)
                if not commit:
                    raise _Rollback
        except _Rollback:
            pass
        except BaseException as exc:  # surfaced to the test below
            failure.append(exc)
            appended.set()

    thread = threading.Thread(target=hold)
    thread.start()
    assert appended.wait(10)
    try:
        yield release.set
    finally:
        release.set()
        thread.join(10)
    assert not failure, failure


class _Rollback(Exception):
    pass


def drain(store: Store, after: Checkpoint) -> tuple[list[RecordedEvent], Checkpoint]:
    events = store.read_all(after, limit=10_000)
    return events, (events[-1].checkpoint if events else after)


@pytest.mark.parametrize("commit", [True, False], ids=["commits-late", "rolls-back"])
def test_reader_waits_at_a_held_transaction(store: Store, commit: bool) -> None:
    early = store.append("s-early", [sms(1)])
    with held_append(store, "s-held", commit=commit) as release:
        later = store.append("s-later", [sms(2), sms(3)])
        held_position = later.events[0].position - 1  # the held event took its position first

        seen, checkpoint = drain(store, Checkpoint.START)
        # The later events are committed, yet the reader must stop before them.
        assert [e.position for e in seen] == [early.position]
        assert not store.wait_for(later.position, timeout=0.2)
        release()

    assert store.wait_for(later.position, timeout=5)
    rest, _ = drain(store, checkpoint)
    expected = ([held_position] if commit else []) + [e.position for e in later.events]
    assert [e.position for e in rest] == expected
    if commit:
        assert rest[0].data["text"] == "held"


def test_many_readers_interleaved_with_a_held_transaction_see_each_event_once(store: Store) -> None:
    with held_append(store, "s-held", commit=True) as release:
        for i in range(20):
            store.append(f"s-{i}", [sms(i)])
        seen, checkpoint = drain(store, Checkpoint.START)
        assert seen == []
        release()
    store.append("s-after", [sms(100)])
    rest, _ = drain(store, checkpoint)
    assert len(rest) == 22
    assert len({e.event_id for e in rest}) == 22


def test_a_foreign_idle_writing_transaction_holds_readers_back(
    store: Store, database_url: str
) -> None:
    """The watermark waits for any writing transaction in the database (see DESIGN.md)."""
    with psycopg.connect(database_url) as foreign:
        foreign.execute("CREATE TEMP TABLE scratch (x int)")
        foreign.execute("INSERT INTO scratch VALUES (1)")  # now holds a transaction id, idle
        appended = store.append("s-1", [sms(1)])
        assert store.read_all() == []
        foreign.rollback()
    assert [e.position for e in store.read_all()] == [appended.position]


def test_a_writing_transaction_in_another_database_does_not_hold_readers_back(
    store: Store, databases: TestDatabases
) -> None:
    """Transaction ids are the server's; the horizon leaves out those of other databases
    (events_horizon), though they are older than the append and still running."""
    neighbour = databases.create(empty=True)
    try:
        with psycopg.connect(neighbour) as foreign:
            foreign.execute("CREATE TABLE scratch (x int)")  # holds a transaction id, idle
            store.append("s-0", [sms(0)])  # a later one ends: the foreign one is in the xip
            appended = store.append("s-1", [sms(1)])
            assert [e.stream_id for e in store.read_all()] == ["s-0", "s-1"]
            assert store.wait_for(appended.position, timeout=2)
            assert store.checkpoint_at(appended.position) is not None
            foreign.rollback()
    finally:
        databases.drop(neighbour)


def test_a_transaction_that_appended_does_not_read_its_own_uncommitted_events(
    store: Store, databases: TestDatabases
) -> None:
    """Its own id is not in its snapshot's list of running transactions; it still bounds
    what it reads, even when an older transaction of another database is left out."""
    neighbour = databases.create(empty=True)
    readable = (
        "SELECT count(*) FROM events"
        " WHERE transaction_id < (SELECT events_horizon(pg_current_snapshot()))"
    )
    try:
        with psycopg.connect(neighbour) as foreign:
            foreign.execute("CREATE TABLE scratch (x int)")  # older, and left out
            store.append("s-0", [sms(0)])
            with store.transaction() as tx:
                tx.append("s-1", [sms(1)])
                store.append("s-2", [sms(2)])  # commits after it: its id is below xmax
                assert tx.connection.execute(readable).fetchone() == (1,)  # s-0 only
            foreign.rollback()
    finally:
        databases.drop(neighbour)


def test_a_snapshot_holding_transactions_it_does_not_list_keeps_its_xmin(
    database_url: str,
) -> None:
    """A hot standby's snapshot lists its running transactions as subtransactions, not in
    xip: its xmin is the horizon, as it always was."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        horizon = "SELECT events_horizon(%s::text::pg_snapshot)::text"
        assert conn.execute(horizon, ("1000:1010:",)).fetchone() == ("1000",)
        assert conn.execute(horizon, ("1000:1010:1000,1004",)).fetchone() == ("1000",)
        assert conn.execute(horizon, ("1010:1010:",)).fetchone() == ("1010",)


def test_an_idle_read_only_transaction_does_not_hold_readers_back(
    store: Store, database_url: str
) -> None:
    with psycopg.connect(database_url) as reader:
        reader.execute("SELECT count(*) FROM events")  # idle in transaction, no xid
        appended = store.append("s-1", [sms(1)])
        assert [e.position for e in store.read_all()] == [appended.position]


def test_appends_to_other_streams_do_not_wait_for_a_held_append(store: Store) -> None:
    """No global write lock: only the held stream is locked."""
    with held_append(store, "s-held", commit=True):
        done = threading.Event()
        thread = threading.Thread(target=lambda: (store.append("s-other", [sms(1)]), done.set()))
        thread.start()
        assert done.wait(5), "an append to another stream waited for the held transaction"
        thread.join()


def test_an_append_to_the_same_stream_waits_for_the_held_one(store: Store) -> None:
    with held_append(store, "s-held", commit=True) as release:
        done = threading.Event()
        result: list[int] = []

        def append() -> None:
            result.append(store.append("s-held", [sms(1)]).stream_version())
            done.set()

        thread = threading.Thread(target=append)
        thread.start()
        assert not done.wait(0.3)
        release()
        assert done.wait(5)
        thread.join()
    assert result == [2]


def test_no_checkpoint_is_handed_out_past_a_running_transaction(store: Store) -> None:
    with held_append(store, "s-held", commit=True) as release:
        later = store.append("s-later", [sms(2)])
        assert store.checkpoint_at(later.position) is None
        release()
    checkpoint = store.checkpoint_at(later.position)
    assert checkpoint is not None
    every = [e.position for e in store.read_all()]
    assert later.position in every
    assert store.read_all(checkpoint) == []


def test_a_transaction_that_collides_with_a_commit_appends_after_it(store: Store) -> None:
    with held_append(store, "s-1", commit=True) as release:
        done = threading.Event()
        versions: list[int] = []

        def append_in_transaction() -> None:
            with store.transaction() as tx:
                versions.append(tx.append("s-1", [sms(2)]).stream_version())
            done.set()

        thread = threading.Thread(target=append_in_transaction)
        thread.start()
        assert not done.wait(0.3)  # waits on the held version 1
        release()
        assert done.wait(5)
        thread.join()
    assert versions == [2]
    assert store.verify_stream("s-1").ok
