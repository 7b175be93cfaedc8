"""The store's contract: what every caller may rely on, against real PostgreSQL."""

from __future__ import annotations

from uuid import uuid4

import psycopg
import pytest

from interaction_store import (
    ANY,
    NO_STREAM,
    Checkpoint,
    ConcurrencyError,
    EventValidationError,
    IdempotencyConflict,
    StreamAppend,
)
from interaction_store.events import EmailReceived
from interaction_store.store import Store
from tests.helpers import T0, count_events, email, sms


def test_append_then_read_round_trips_every_field(store: Store) -> None:
    events = [email(1), email(2)]
    result = store.append("conversation-a", events, expected_version=NO_STREAM)

    assert [e.stream_version for e in result.events] == [1, 2]
    assert result.stream_version() == 2
    assert result.appended == 2
    read = store.read_stream("conversation-a")
    assert [r.position for r in read] == [e.position for e in result.events]
    first = read[0]
    assert first.type == "email.received"
    assert first.schema_version == 1
    assert first.occurred_at == T0.replace(minute=1)
    assert first.data["contact"] == {"kind": "email", "value": "alice@example.com"}
    assert first.data["subject"] == "Order 1"
    assert first.data["channel"] == "email"
    assert first.data["direction"] == "inbound"
    assert first.recorded_at >= first.occurred_at
    assert first.prev_hash == bytes(32)
    assert read[1].prev_hash == first.hash
    model = first.to_model()
    assert isinstance(model, EmailReceived)
    assert model.id == first.event_id


def test_read_stream_from_version_and_limit(store: Store) -> None:
    store.append("conversation-a", [sms(i) for i in range(10)])
    assert [
        e.stream_version for e in store.read_stream("conversation-a", from_version=4, limit=3)
    ] == [4, 5, 6]
    assert store.read_stream("conversation-missing") == []
    assert store.stream_version("conversation-a") == 10
    assert store.stream_version("conversation-missing") == 0


def test_expected_version_exact_no_stream_and_any(store: Store) -> None:
    store.append("s-1", [sms(1)], expected_version=NO_STREAM)
    store.append("s-1", [sms(2)], expected_version=1)
    store.append("s-1", [sms(3)], expected_version=ANY)

    with pytest.raises(ConcurrencyError) as stale:
        store.append("s-1", [sms(4)], expected_version=1)
    assert (stale.value.stream_id, stale.value.expected, stale.value.actual) == ("s-1", 1, 3)
    assert "'s-1'" in str(stale.value)
    assert "version 3" in str(stale.value)

    with pytest.raises(ConcurrencyError) as exists:
        store.append("s-1", [sms(5)], expected_version=NO_STREAM)
    assert exists.value.expected == "no stream"

    with pytest.raises(ConcurrencyError):
        store.append("s-new", [sms(6)], expected_version=2)
    assert store.stream_version("s-1") == 3
    assert store.read_stream("s-new") == []


def test_retried_append_returns_the_original_result_and_writes_nothing(
    store: Store, database_url: str
) -> None:
    batch = [sms(1), sms(2)]
    first = store.append("s-1", batch, expected_version=NO_STREAM)
    store.append("s-1", [sms(3)])

    # The retry still says NO_STREAM: an idempotent replay is not a concurrency error.
    again = store.append("s-1", batch, expected_version=NO_STREAM)

    assert [(e.position, e.stream_version) for e in again.events] == [
        (e.position, e.stream_version) for e in first.events
    ]
    assert all(e.already_present for e in again.events)
    assert again.appended == 0
    assert count_events(database_url) == 3


def test_derived_ids_make_redelivery_idempotent(store: Store, database_url: str) -> None:
    delivery = email(7)  # no "id": derived from type and external_id
    first = store.append_batch([delivery])
    second = store.append_batch([delivery])
    assert second.events[0].event_id == first.events[0].event_id
    assert second.events[0].already_present
    assert count_events(database_url) == 1


def test_same_id_with_other_content_is_a_conflict_and_nothing_is_written(
    store: Store, database_url: str
) -> None:
    original = sms(1, text="original")
    store.append("s-1", [original])
    changed = {**original, "data": {**original["data"], "text": "changed"}}

    with pytest.raises(IdempotencyConflict) as conflict:
        store.append("s-1", [sms(2), changed])

    assert str(conflict.value.event_id) == original["id"]
    assert count_events(database_url) == 1
    assert store.read_stream("s-1")[0].data["text"] == "original"


def test_same_id_in_another_stream_is_a_conflict(store: Store) -> None:
    event = sms(1)
    store.append("s-1", [event])
    with pytest.raises(IdempotencyConflict):
        store.append("s-2", [event])


def test_metadata_is_not_part_of_the_idempotency_fingerprint(store: Store) -> None:
    event = sms(1)
    store.append("s-1", [{**event, "metadata": {"correlation_id": "first"}}])
    retry = store.append("s-1", [{**event, "metadata": {"correlation_id": "retry"}}])
    assert retry.events[0].already_present
    assert store.read_stream("s-1")[0].metadata == {"correlation_id": "first"}


def test_a_batch_is_atomic_across_streams(store: Store, database_url: str) -> None:
    store.append("s-2", [sms(0)])
    with pytest.raises(ConcurrencyError):
        store.append_many(
            [
                StreamAppend("s-1", [sms(1), sms(2)], NO_STREAM),
                StreamAppend("s-2", [sms(3)], NO_STREAM),  # s-2 exists: the whole batch fails
            ]
        )
    assert count_events(database_url) == 1
    assert store.stream_version("s-1") == 0

    result = store.append_many(
        [StreamAppend("s-1", [sms(1)], NO_STREAM), StreamAppend("s-2", [sms(3)], 1)]
    )
    assert {e.stream_id: e.stream_version for e in result.events} == {"s-1": 1, "s-2": 2}


def test_append_batch_derives_streams_from_the_data(store: Store) -> None:
    result = store.append_batch(
        [
            sms(1, conversation_id="c-42"),
            email(1, thread_key="<root@mail>"),
            {
                "type": "customer.registered",
                "occurred_at": T0.isoformat(),
                "data": {"customer_id": "cu-1", "name": "Alice"},
            },
        ]
    )
    streams = [e.stream_id for e in result.events]
    assert streams[0] == "conversation-c-42"
    assert streams[1].startswith("conversation-cv-")
    assert streams[2] == "customer-cu-1"
    # The derived conversation id is written into the event, so readers need not derive it.
    stored = store.read_stream(streams[1])[0]
    assert f"conversation-{stored.data['conversation_id']}" == streams[1]


def test_transaction_commits_all_appends_or_none(store: Store, database_url: str) -> None:
    def abandoned_transaction() -> None:
        with store.transaction() as tx:
            tx.append("s-1", [sms(1)])
            tx.append("s-2", [sms(2)])
            raise RuntimeError("abandon")

    with pytest.raises(RuntimeError):
        abandoned_transaction()
    assert count_events(database_url) == 0

    with store.transaction() as tx:
        tx.append("s-1", [sms(1)])
        tx.append("s-2", [sms(2)])
    assert count_events(database_url) == 2


def test_hash_chain_verifies_and_detects_a_changed_payload(store: Store, database_url: str) -> None:
    store.append("s-1", [sms(i) for i in range(5)])
    store.append("s-1", [sms(5)])
    report = store.verify_stream("s-1")
    assert report.ok
    assert report.checked == 6

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # bypass the append-only guard
        conn.execute(
            "UPDATE events SET payload = jsonb_set(payload, '{text}', '\"tampered\"')"
            " WHERE stream_id = 's-1' AND stream_version = 3"
        )
    broken = store.verify_stream("s-1")
    assert not broken.ok
    assert broken.broken is not None
    assert broken.broken.stream_version == 3
    assert "content" in broken.broken.reason


def test_the_log_refuses_updates_and_deletes(store: Store, database_url: str) -> None:
    store.append("s-1", [sms(1)])
    with psycopg.connect(database_url, autocommit=True) as conn:
        for statement in ("UPDATE events SET type = 'x'", "DELETE FROM events", "TRUNCATE events"):
            with pytest.raises(psycopg.Error, match="append-only"):
                conn.execute(statement)
    assert count_events(database_url) == 1


def test_read_all_returns_everything_once_in_commit_order(store: Store) -> None:
    appended = []
    for i in range(5):
        appended += store.append(f"s-{i % 2}", [sms(i), sms(i + 100)]).events
    seen = []
    checkpoint = Checkpoint.START
    while page := store.read_all(checkpoint, limit=3):
        seen += page
        checkpoint = page[-1].checkpoint
    assert [e.event_id for e in seen] == [e.event_id for e in appended]
    assert store.read_all(checkpoint) == []
    assert [e.type for e in store.read_all(types=["email.received"])] == []
    assert len(store.read_all(types=["sms.received"])) == 10
    assert store.head() == max(e.position for e in appended)
    assert store.checkpoint_at(appended[3].position) == seen[3].checkpoint
    assert store.checkpoint_at(10_000) is None


def test_checkpoint_string_form_round_trips() -> None:
    assert Checkpoint.parse(str(Checkpoint(123, 45))) == Checkpoint(123, 45)
    with pytest.raises(ValueError, match="not a checkpoint"):
        Checkpoint.parse("45")


@pytest.mark.parametrize(
    ("event", "field", "reason"),
    [
        (
            {"type": "fax.received", "occurred_at": T0.isoformat(), "data": {}},
            "type",
            "unknown event type",
        ),
        ({"occurred_at": T0.isoformat(), "data": {}}, "type", "missing"),
        (
            {**sms(1), "data": {"text": "hi", "external_id": "x"}},
            "data.contact",
            "required field is missing",
        ),
        ({**sms(1), "occurred_at": "yesterday"}, "occurred_at", "datetime"),
        ({**sms(1), "occurred_at": "2026-11-02T09:00:00"}, "occurred_at", "timezone"),
        ({**sms(1), "data": {**sms(1)["data"], "text": 42}}, "data.text", "valid string"),
        (
            {**sms(1), "data": {**sms(1)["data"], "contact": "phone:call me"}},
            "data.contact.value",
            "phone number",
        ),
        (
            {**sms(1), "data": {**sms(1)["data"], "contact": "fax:123"}},
            "data.contact.kind",
            "Input should be",
        ),
        ({**sms(1), "data": {**sms(1)["data"], "colour": "red"}}, "data.colour", "unknown field"),
        ({**sms(1), "data": {**sms(1)["data"], "text": "a\x00b"}}, "data.text", "NUL"),
        ({**sms(1), "metadata": {"actor": "a\x00b"}}, "metadata.actor", "NUL"),
        ({**sms(1), "metadata": {"note": {"k\x00": 1}}}, "metadata.note.k\\u0000", "NUL"),
        (
            {**sms(1), "data": {**sms(1)["data"], "text": "x" * (1024 * 1024 + 1)}},
            "data",
            "limit is 1,048,576",
        ),
    ],
    ids=[
        "unknown-type",
        "no-type",
        "missing-field",
        "bad-time",
        "naive-time",
        "wrong-type",
        "bad-phone",
        "bad-contact-kind",
        "unknown-field",
        "nul",
        "nul-in-metadata",
        "nul-in-a-metadata-key",
        "oversized",
    ],
)
def test_bad_events_name_index_field_and_reason_and_write_nothing(
    store: Store, database_url: str, event: dict[str, object], field: str, reason: str
) -> None:
    with pytest.raises(EventValidationError) as invalid:
        store.append("s-1", [sms(0), event])
    errors = invalid.value.errors
    assert any(e.index == 1 and e.field == field and reason in e.reason for e in errors), errors
    assert f"events[1].{field}" in str(invalid.value)
    assert count_events(database_url) == 0


def test_duplicate_ids_within_a_batch_are_refused(store: Store, database_url: str) -> None:
    event = sms(1)
    with pytest.raises(
        EventValidationError, match=r"events\[1\].id: repeats the id of events\[0\]"
    ):
        store.append("s-1", [event, event])
    assert count_events(database_url) == 0


def test_batch_size_limit(pool: object, database_url: str) -> None:
    from psycopg_pool import ConnectionPool

    assert isinstance(pool, ConnectionPool)
    small = Store(pool, max_batch_events=3)
    with pytest.raises(EventValidationError, match="4 events; the limit is 3"):
        small.append("s-1", [sms(i) for i in range(4)])
    small.close()
    assert count_events(database_url) == 0


def test_bad_stream_ids_and_expectations_are_refused(store: Store) -> None:
    with pytest.raises(EventValidationError, match="stream_id"):
        store.append("has space", [sms(1)])
    with pytest.raises(ValueError, match="expected_version"):
        store.append("s-1", [sms(1)], expected_version=-3)


def test_empty_batch_is_a_no_op(store: Store) -> None:
    assert store.append("s-1", []).events == ()
    assert store.head() == 0


def test_ids_with_white_space_or_control_characters_are_refused(
    store: Store, database_url: str
) -> None:
    """Such an id could not name its customer's stream: a customer "a\x1cb" would exist in
    the views with no stream for its own events (its erasure among them)."""
    for bad in ("a\x1cb", "a b", "a\x85b", "\x7f"):
        registered = {"type": "customer.registered", "occurred_at": "2026-11-02T09:00:00Z",
                      "data": {"customer_id": bad}}  # fmt: skip
        with pytest.raises(EventValidationError, match=r"events\[0\]\.data\.customer_id"):
            store.append_batch([registered])
        with pytest.raises(EventValidationError, match=r"events\[0\]\.data\.customer_id"):
            store.append_batch([sms(1, customer_id=bad)])
    assert count_events(database_url) == 0
    assert store.append_batch([sms(2, customer_id="cu-\u00e9t\u00e9")]).appended == 1


def test_ids_are_uuids_and_stored_as_given(store: Store) -> None:
    event_id = uuid4()
    result = store.append("s-1", [{**sms(1), "id": str(event_id)}])
    assert result.events[0].event_id == event_id


def test_attributes_that_are_not_json_are_refused(store: Store, database_url: str) -> None:
    with pytest.raises(EventValidationError, match=r"events\[0\].data: is not JSON"):
        store.append("s-1", [sms(1, attributes={"huge": 2**70})])
    with pytest.raises(EventValidationError, match=r"events\[1\].metadata: is not JSON"):
        store.append("s-1", [sms(1), {**sms(2), "metadata": {"huge": -(2**70)}}])
    assert count_events(database_url) == 0


def test_batches_with_several_events_per_stream_and_one_per_stream_chain_alike(
    store: Store,
) -> None:
    store.append_many([StreamAppend("s-a", [sms(1)]), StreamAppend("s-b", [sms(2)])])  # one each
    store.append_many([StreamAppend("s-a", [sms(3), sms(4)]), StreamAppend("s-b", [sms(5)])])
    store.append("s-a", [sms(6)], expected_version=3)
    assert [e.stream_version for e in store.read_stream("s-a")] == [1, 2, 3, 4]
    assert store.verify_stream("s-a").ok
    assert store.verify_stream("s-b").ok
    with pytest.raises(ConcurrencyError):
        store.append_many([StreamAppend("s-a", [sms(7)], 1), StreamAppend("s-b", [sms(8)])])


def test_append_batch_keeps_the_callers_order_in_results_and_errors(
    store: Store, database_url: str
) -> None:
    a, b = sms(1, conversation_id="c-a"), sms(2, conversation_id="c-b")
    a2 = sms(3, conversation_id="c-a")
    result = store.append_batch([a, b, a2])
    assert [str(e.event_id) for e in result.events] == [a["id"], b["id"], a2["id"]]

    bad = sms(6, conversation_id="c-a", text="nul\x00")
    with pytest.raises(EventValidationError) as invalid:
        store.append_batch([sms(4, conversation_id="c-a"), sms(5, conversation_id="c-b"), bad])
    assert [e.index for e in invalid.value.errors] == [2]
    assert count_events(database_url) == 3


def test_an_empty_append_still_checks_its_expectation(store: Store) -> None:
    store.append("s-1", [sms(1)])
    assert store.append("s-1", [], expected_version=1).events == ()
    with pytest.raises(ConcurrencyError):
        store.append("s-1", [], expected_version=NO_STREAM)
    with pytest.raises(ConcurrencyError):
        store.append("s-2", [], expected_version=3)
    with store.transaction() as tx:
        tx.append("s-2", [sms(2)])
        tx.append("s-2", [], expected_version=1)  # sees its own transaction's append
        with pytest.raises(ConcurrencyError):
            tx.append("s-2", [], expected_version=NO_STREAM)


def test_a_stream_named_twice_with_an_expectation_is_refused(store: Store) -> None:
    with pytest.raises(EventValidationError, match="appears twice with an expected version"):
        store.append_many([StreamAppend("s-1", [sms(1)], NO_STREAM), StreamAppend("s-1", [])])
    result = store.append_many([StreamAppend("s-1", [sms(2)]), StreamAppend("s-1", [sms(3)])])
    assert [e.stream_version for e in result.events] == [1, 2]


def test_numbers_that_jsonb_rewrites_still_verify(store: Store) -> None:
    odd = {"zero": -0.0, "big": 1.2345678901234567e19, "huge": 1e20, "tiny": 1e-7, "x": 0.1}
    odd |= {"low": -1e19, "lowest": -9.223372036854775808e18, "debt": -1.5e17}
    store.append("s-1", [sms(1, attributes=odd)])
    assert store.verify_stream("s-1").ok


@pytest.mark.parametrize(
    ("text", "nul"),
    [
        (r"invalid byte sequence \u0000 in input", False),  # the text, as quoted in a mail
        (r"C:\\u0000", False),  # the text \\u0000 after an escaped backslash: still text
        ("a\\\x00", True),  # a backslash, then a real NUL
        ("a\\\\\x00", True),
    ],
)
def test_only_a_real_nul_is_refused(store: Store, text: str, nul: bool) -> None:
    event = sms(1, text=text)
    event["metadata"] = {"actor": text}
    if nul:
        with pytest.raises(EventValidationError, match=r"events\[0\]\.data\.text: contains a NUL"):
            store.append("s-1", [event])
        assert store.head() == 0
        return
    store.append("s-1", [event])
    [stored] = store.read_stream("s-1")
    assert (stored.data["text"], stored.metadata["actor"]) == (text, text)
