"""Real threads and connections appending and reading at once."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import defaultdict
from uuid import UUID

import pytest

from interaction_store import NO_STREAM, Checkpoint, ConcurrencyError, IdempotencyConflict
from interaction_store.store import Store
from tests.helpers import count_events, sms

WRITERS = 10
BATCHES = 100
BATCH_SIZE = 100
STREAMS = 25


@pytest.mark.slow
def test_writers_and_followers_agree_on_every_acknowledged_event(store: Store) -> None:
    acknowledged: set[UUID] = set()
    ack_lock = threading.Lock()
    writers_done = threading.Event()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(BATCHES):
                stream = f"conversation-{rng.randrange(STREAMS)}"  # streams overlap between writers
                result = store.append(stream, [sms(i, text="x") for i in range(BATCH_SIZE)])
                with ack_lock:
                    acknowledged.update(e.event_id for e in result.events)
        except BaseException as exc:
            errors.append(exc)

    def reader(seen: list[UUID], checkpoints: list[Checkpoint]) -> None:
        checkpoint = Checkpoint.START
        try:
            while True:
                finished = writers_done.is_set()
                page = store.read_all(checkpoint, limit=2000)
                for event in page:
                    seen.append(event.event_id)
                if page:
                    checkpoint = page[-1].checkpoint
                    checkpoints.append(checkpoint)
                elif finished:
                    return
                else:
                    time.sleep(0.005)
        except BaseException as exc:
            errors.append(exc)

    readings: list[tuple[list[UUID], list[Checkpoint]]] = [([], []), ([], [])]
    readers = [threading.Thread(target=reader, args=r) for r in readings]
    writers = [threading.Thread(target=writer, args=(seed,)) for seed in range(WRITERS)]
    for thread in readers + writers:
        thread.start()
    for thread in writers:
        thread.join(240)
    writers_done.set()
    for thread in readers:
        thread.join(60)

    assert not errors, errors[:3]
    assert len(acknowledged) == WRITERS * BATCHES * BATCH_SIZE
    for seen, checkpoints in readings:
        assert len(seen) == len(set(seen)), "a reader saw an event twice"
        assert set(seen) == acknowledged, "a reader missed an acknowledged event"
        assert all(a < b for a, b in itertools.pairwise(checkpoints)), (
            "a reader's checkpoint went backwards"
        )

    versions: dict[str, list[int]] = defaultdict(list)
    checkpoint = Checkpoint.START
    while page := store.read_all(checkpoint, limit=10_000):
        for event in page:
            versions[event.stream_id].append(event.stream_version)
        checkpoint = page[-1].checkpoint
    for stream, stream_versions in versions.items():
        assert sorted(stream_versions) == list(range(1, len(stream_versions) + 1)), stream
        assert store.verify_stream(stream).ok


def run_together(count: int, action: object) -> list[object]:
    """Run ``action`` in ``count`` threads released at the same instant; return outcomes."""
    assert callable(action)
    barrier = threading.Barrier(count)
    outcomes: list[object] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = action(i)
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


def test_concurrent_identical_appends_store_exactly_one(store: Store, database_url: str) -> None:
    batch = [sms(i) for i in range(5)]
    outcomes = run_together(8, lambda _: store.append("s-1", batch, expected_version=NO_STREAM))

    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    positions = {tuple(e.position for e in o.events) for o in outcomes}  # type: ignore[attr-defined]
    assert len(positions) == 1
    assert sum(o.appended for o in outcomes) == 5  # type: ignore[attr-defined]
    assert count_events(database_url) == 5


def test_concurrent_appends_of_one_event_to_different_streams(
    store: Store, database_url: str
) -> None:
    event = sms(1)
    outcomes = run_together(6, lambda i: store.append(f"s-{i}", [event]))
    successes = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(successes) == 1
    assert all(isinstance(o, IdempotencyConflict) for o in outcomes if o not in successes)
    assert count_events(database_url) == 1


def test_racing_writers_with_the_same_expected_version_one_wins(
    store: Store, database_url: str
) -> None:
    store.append("s-1", [sms(0)])
    outcomes = run_together(8, lambda i: store.append("s-1", [sms(i + 1)], expected_version=1))
    winners = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(winners) == 1
    assert all(
        isinstance(o, ConcurrencyError) and o.actual == 2 for o in outcomes if o not in winners
    )
    assert store.stream_version("s-1") == 2
    assert count_events(database_url) == 2


def test_crossed_transactions_fail_fast_instead_of_retrying_a_deadlock(store: Store) -> None:
    """Two transactions append to the same two streams in opposite orders."""
    barrier = threading.Barrier(2)

    def crossed(first: str, second: str) -> str:
        with store.transaction() as tx:
            tx.append(first, [sms(1)])
            barrier.wait(10)
            tx.append(second, [sms(2)])
        return "committed"

    started = time.monotonic()
    outcomes = run_together(2, lambda i: crossed(*(("s-a", "s-b") if i == 0 else ("s-b", "s-a"))))
    assert time.monotonic() - started < 10
    assert sorted(map(type, outcomes), key=str) == sorted([str, ConcurrencyError], key=str)
    failure = next(o for o in outcomes if isinstance(o, ConcurrencyError))
    assert "deadlock" in str(failure)
    # the loser's appends were rolled back: only the winner's two events are stored
    assert store.stream_version("s-a") == 1
    assert store.stream_version("s-b") == 1
