"""Batches larger than one chunk: sent as several statements of one transaction while the
next chunk is prepared. They must keep every promise a one-statement append keeps."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest

from interaction_store import (
    NO_STREAM,
    ConcurrencyError,
    EventValidationError,
    IdempotencyConflict,
    StreamAppend,
)
from interaction_store import store as store_module
from interaction_store.store import Store
from tests.helpers import count_events, sms

CHUNK = store_module._CHUNK
SIZE = 2 * CHUNK + CHUNK // 2  # three chunks, the last one partial


def batch(size: int = SIZE, conversations: int = 7, offset: int = 0) -> list[dict[str, Any]]:
    """Events spread round-robin over a few conversations, so each spans every chunk."""
    return [sms(offset + i, conversation_id=f"c-{i % conversations}") for i in range(size)]


def test_a_large_batch_keeps_the_callers_order_and_each_streams_chain(
    store: Store, database_url: str
) -> None:
    events = batch()
    result = store.append_batch(events)

    assert [str(e.event_id) for e in result.events] == [e["id"] for e in events]
    positions = [e.position for e in result.events]
    assert positions == sorted(positions)
    assert count_events(database_url) == SIZE
    for n in range(7):
        stream = f"conversation-c-{n}"
        read = store.read_stream(stream, limit=SIZE)
        assert [r.stream_version for r in read] == list(range(1, len(read) + 1))
        assert [str(r.event_id) for r in read] == [
            e["id"] for e in events if e["data"]["conversation_id"] == f"c-{n}"
        ]
        assert store.verify_stream(stream).ok
    assert result.stream_version("conversation-c-0") == len(range(0, SIZE, 7))


def test_an_invalid_event_in_the_last_chunk_writes_nothing_and_keeps_its_index(
    store: Store, database_url: str
) -> None:
    events = batch()
    events[SIZE - 3]["data"]["contact"] = {"kind": "phone", "value": "not a number"}
    events[CHUNK + 1]["type"] = "sms.unknown"
    with pytest.raises(EventValidationError) as invalid:
        store.append_batch(events)
    assert [(e.index, e.field) for e in invalid.value.errors] == [
        (CHUNK + 1, "type"),
        (SIZE - 3, "data.contact.value"),
    ]
    assert count_events(database_url) == 0


def test_a_repeated_id_across_chunks_is_refused(store: Store, database_url: str) -> None:
    events = batch()
    events[-1] = {**events[-1], "id": events[0]["id"]}
    with pytest.raises(EventValidationError, match=rf"events\[{SIZE - 1}\]\.id"):
        store.append_batch(events)
    assert count_events(database_url) == 0


def test_replaying_a_large_batch_returns_the_original_positions(store: Store) -> None:
    events = batch()
    first = store.append_batch(events[: CHUNK + 10])  # part of it, across a chunk boundary
    replay = store.append_batch(events)

    assert replay.already_present == CHUNK + 10
    assert replay.appended == SIZE - CHUNK - 10
    assert [e.position for e in replay.events[: CHUNK + 10]] == [e.position for e in first.events]
    again = store.append_batch(events)
    assert again.appended == 0
    assert [e.position for e in again.events] == [e.position for e in replay.events]
    assert store.verify_stream("conversation-c-3").ok


def test_an_id_stored_with_other_content_in_a_later_chunk_is_a_conflict(
    store: Store, database_url: str
) -> None:
    events = batch()
    clash = dict(events[2 * CHUNK + 5])
    store.append_batch([{**clash, "data": {**clash["data"], "text": "other content"}}])
    with pytest.raises(IdempotencyConflict):
        store.append_batch(events)
    assert count_events(database_url) == 1


def test_an_expectation_holds_for_a_stream_spread_over_chunks(
    store: Store, database_url: str
) -> None:
    store.append("s-a", [sms(0)])
    many = [sms(i) for i in range(1, SIZE)]
    with pytest.raises(ConcurrencyError) as refused:
        store.append_many([StreamAppend("s-a", many, NO_STREAM)])
    assert (refused.value.stream_id, refused.value.actual) == ("s-a", 1)
    assert count_events(database_url) == 1

    result = store.append_many([StreamAppend("s-a", many, 1), StreamAppend("s-b", [], 0)])
    assert result.stream_version("s-a") == SIZE
    with pytest.raises(ConcurrencyError):
        store.append_many([StreamAppend("s-c", many), StreamAppend("s-b", [], 3)])
    assert count_events(database_url) == SIZE


def test_a_stream_given_no_events_is_held_to_its_expectation_in_a_small_batch(
    store: Store, database_url: str
) -> None:
    store.append("s-b", [sms(0)])
    with pytest.raises(ConcurrencyError) as refused:
        store.append_many([StreamAppend("s-a", [sms(1)]), StreamAppend("s-b", [], NO_STREAM)])
    assert refused.value.stream_id == "s-b"
    assert count_events(database_url) == 1


def test_concurrent_large_batches_on_shared_streams_interleave_safely(
    store: Store, database_url: str
) -> None:
    writers, rounds = 3, 2
    acknowledged: list[str] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(writers)

    def write(w: int) -> None:
        try:
            start.wait(timeout=30)
            for r in range(rounds):
                events = batch(offset=(w * rounds + r) * SIZE)
                result = store.append_batch(events)
                with lock:
                    acknowledged.extend(str(e.event_id) for e in result.events)
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert failures == []
    assert len(acknowledged) == len(set(acknowledged)) == writers * rounds * SIZE
    assert count_events(database_url) == writers * rounds * SIZE
    per_stream = Counter[str]()
    for n in range(7):
        read = store.read_stream(f"conversation-c-{n}", limit=10 * SIZE)
        per_stream[f"c-{n}"] = len(read)
        assert [r.stream_version for r in read] == list(range(1, len(read) + 1))
        assert store.verify_stream(f"conversation-c-{n}").ok
    assert sum(per_stream.values()) == writers * rounds * SIZE


@pytest.mark.timeout(60)
def test_a_large_batch_of_large_events_does_not_stall_the_pipeline(
    store: Store, database_url: str
) -> None:
    # Over a Unix socket, a pipeline message of a megabyte or more can deadlock psycopg's
    # sync; the store keeps each statement of a chunked batch well below that.
    events = batch(CHUNK + 20)
    for i in range(0, len(events), 20):
        events[i]["data"]["text"] = f"{i:06d}" + "x" * 900_000
    result = store.append_batch(events)
    assert result.appended == len(events)
    assert count_events(database_url) == len(events)
    assert len(store.read_stream("conversation-c-0")[0].data["text"]) == 900_006
