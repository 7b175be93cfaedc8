"""NOTIFY wake-ups after commit, read-your-writes, and following the log."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from interaction_store import Checkpoint
from interaction_store.projections import ProjectionRunner
from interaction_store.store import RecordedEvent, Store, _Listener
from tests.helpers import sms


def test_an_append_sends_one_coalesced_notification_after_commit(
    store: Store, database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {store.notify_channel}")
        result = store.append("s-1", [sms(1)])
        notes = list(listener.notifies(timeout=2, stop_after=1))
    assert [n.payload for n in notes] == [str(result.position)]


def test_a_burst_of_appends_is_coalesced(store: Store, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {store.notify_channel}")
        threads = [
            threading.Thread(target=store.append, args=(f"s-{i}", [sms(i)])) for i in range(40)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        store.close()  # flushes the last pending wake-up
        notes = list(listener.notifies(timeout=0.5))
    assert 1 <= len(notes) < 40
    assert max(int(n.payload) for n in notes) == store.head()


def test_wait_for_returns_once_the_position_is_readable(store: Store) -> None:
    result = store.append("s-1", [sms(1)])
    assert store.wait_for(result.position, timeout=2)
    assert not store.wait_for(result.position + 100, timeout=0.1)


def test_follow_is_woken_promptly_and_polls_when_no_notification_comes(store: Store) -> None:
    received: list[RecordedEvent] = []
    stop = threading.Event()
    arrived = threading.Event()

    def follow() -> None:
        for event in store.follow(Checkpoint.START, poll_interval=30, stop=stop):
            received.append(event)
            arrived.set()

    thread = threading.Thread(target=follow)
    thread.start()
    time.sleep(0.2)  # let it reach its wait
    started = time.monotonic()
    store.append("s-1", [sms(1)])
    assert arrived.wait(5), "a follower with a 30 s poll interval was not woken"
    assert time.monotonic() - started < 5
    stop.set()
    store.append("s-1", [sms(2)])  # wakes the follower so it sees stop
    thread.join(10)
    assert not thread.is_alive()
    assert received[0].data["text"] == "message 1"


def test_a_lost_notification_costs_latency_not_events(pool: object, store: Store) -> None:
    """A store whose wake-ups go to another channel: the follower still gets every event."""
    from psycopg_pool import ConnectionPool

    assert isinstance(pool, ConnectionPool)
    deaf = Store(pool, notify_channel="nobody_listens")
    received: list[RecordedEvent] = []
    stop = threading.Event()

    def follow() -> None:
        for event in store.follow(poll_interval=0.1, stop=stop):
            received.append(event)
            if len(received) == 3:
                stop.set()

    thread = threading.Thread(target=follow)
    thread.start()
    for i in range(3):
        deaf.append("s-1", [sms(i)])
    thread.join(10)
    deaf.close()
    assert [e.stream_version for e in received] == [1, 2, 3]


def test_a_lost_listen_connection_is_opened_again(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server drops the follower's LISTEN connection (a restart, a failover): the
    follower listens again instead of polling at its slow interval from then on."""
    monkeypatch.setattr(_Listener, "retry_seconds", 0.2, raising=False)
    arrived = threading.Event()
    stop = threading.Event()

    def follow() -> None:
        for _ in store.follow(Checkpoint.START, poll_interval=30, stop=stop):
            arrived.set()

    thread = threading.Thread(target=follow)
    thread.start()
    time.sleep(0.5)  # into its wait
    with psycopg.connect(database_url, autocommit=True) as conn:
        dropped = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN%%'"
        ).fetchone()
    assert dropped == (1,)
    time.sleep(1.0)  # it notices, and listens again
    store.append("s-1", [sms(1)])
    try:
        assert arrived.wait(10), "the follower was not woken: it polls at 30 s"
    finally:
        stop.set()
        store.append("s-1", [sms(2)])
        thread.join(40)


def test_a_cancelled_wait_ends_at_once_and_an_idle_runner_stops_promptly(store: Store) -> None:
    """Stopping a projector that waits for new events does not wait out its poll interval
    (a service's shutdown, or each API test's, took that second)."""
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    started = time.monotonic()
    assert store.wait_for(store.head() + 1, timeout=10, cancel=cancel) is False
    assert time.monotonic() - started < 1.0

    runner = ProjectionRunner(store, [], poll_interval=10)
    thread = threading.Thread(target=runner.run)
    thread.start()
    time.sleep(0.3)  # caught up: waiting for an event that does not come
    stopping = time.monotonic()
    runner.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert time.monotonic() - stopping < 1.0
