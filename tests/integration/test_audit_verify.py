"""Sealing and ``audit verify`` on a real log: an untouched log verifies, and every kind
of tampering (a changed payload, a changed header field, a deleted event, two events
swapped, a truncated tail, a forged checkpoint) fails at the place it was done, for
tampering at random positions.

Each tampering runs in a transaction that is rolled back, with the append-only triggers
off for it (``session_replication_role = replica``), as an attacker with the database's
superuser would do it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import ConnectionPool

from interaction_store.audit import checkpoints
from interaction_store.audit.merkle import verify_consistency, verify_inclusion
from interaction_store.audit.signing import SigningKey
from interaction_store.audit.verify import VerifyReport, verify
from interaction_store.store import Store
from tests.helpers import email, sms

KEY = SigningKey.generate()


def build_log(store: Store, pool: ConnectionPool[Any]) -> list[int]:
    """24 events in 6 streams, each append its own transaction, sealed twice."""
    for n in range(12):
        store.append_batch([sms(n, phone=f"+1415555{n % 3:04d}", thread_key=f"pair-{n % 3}")])
    with pool.connection() as conn:
        assert checkpoints.seal(conn, KEY) is not None
    for n in range(12):
        store.append_batch([email(n, external_id=f"<m{n % 3}-{n}@example.com>",
                                  thread_key=f"mail-{n % 3}")])  # fmt: skip
    with pool.connection() as conn:
        assert checkpoints.seal(conn, KEY) is not None
        rows = conn.execute(
            "SELECT position FROM events ORDER BY transaction_id, position"
        ).fetchall()
    return [row[0] for row in rows]


@pytest.fixture
def positions(store: Store, pool: ConnectionPool[Any]) -> list[int]:
    return build_log(store, pool)


@pytest.fixture
def tx(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection in a transaction that is always rolled back."""
    with psycopg.connect(database_url) as conn:
        conn.execute("SET session_replication_role = replica")
        yield conn
        conn.rollback()


def verified(conn: psycopg.Connection[Any]) -> VerifyReport:
    return verify(conn, KEY.public)


def test_an_untouched_log_verifies(positions: list[int], tx: psycopg.Connection[Any]) -> None:
    report = verified(tx)
    assert report.ok, report.failures
    assert (report.events, report.checkpoints) == (24, 2)
    assert report.streams == 6


def test_an_empty_log_verifies(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        report = verify(conn, None)
    assert report.ok
    assert report.events == 0


def test_sealing_nothing_new_adds_no_checkpoint(
    positions: list[int], pool: ConnectionPool[Any]
) -> None:
    with pool.connection() as conn:
        assert checkpoints.seal(conn, KEY) is None
        assert [c.tree_size for c in checkpoints.checkpoints(conn)] == [12, 24]


def test_proofs_of_inclusion_and_consistency_hold(
    positions: list[int], pool: ConnectionPool[Any]
) -> None:
    with pool.connection() as conn:
        first, second = checkpoints.checkpoints(conn)
        for position in (positions[0], positions[11], positions[23]):
            proof = checkpoints.prove_inclusion(conn, position)
            assert proof is not None
            assert proof.checkpoint == second
            assert verify_inclusion(
                proof.leaf_hash, proof.leaf_index, second.tree_size, proof.path, second.root_hash
            )
        older = checkpoints.prove_inclusion(conn, positions[3], first.checkpoint_id)
        assert older is not None
        assert verify_inclusion(
            older.leaf_hash, older.leaf_index, first.tree_size, older.path, first.root_hash
        )
        proof = checkpoints.consistency_between(conn, first, second)
    assert verify_consistency(
        first.tree_size, first.root_hash, second.tree_size, second.root_hash, proof
    )


def test_a_transaction_still_open_is_sealed_once_it_commits(
    store: Store, pool: ConnectionPool[Any], database_url: str
) -> None:
    store.append_batch([sms(0)])
    held = threading.Event()
    release = threading.Event()

    def slow_append() -> None:
        with store.transaction() as transaction:
            transaction.append("conversation-held", [sms(1)])
            held.set()
            release.wait(10)

    writer = threading.Thread(target=slow_append)
    writer.start()
    held.wait(10)
    store.append_batch([sms(2)])  # commits after the held one began
    with pool.connection() as conn:
        first = checkpoints.seal(conn, KEY)
    release.set()
    writer.join()
    with pool.connection() as conn:
        second = checkpoints.seal(conn, KEY)
    assert first is not None
    assert second is not None
    assert first.tree_size == 1  # the later commit waits behind the held transaction
    assert second.tree_size == 3
    with psycopg.connect(database_url) as conn:
        assert verified(conn).ok


def _swap_commit_order(conn: psycopg.Connection[Any], a: int, b: int) -> None:
    conn.execute(
        """
        UPDATE events AS e SET transaction_id = o.transaction_id
          FROM events AS o
         WHERE (e.position, o.position) IN ((%(a)s, %(b)s), (%(b)s, %(a)s))
        """,
        {"a": a, "b": b},
    )


TAMPERINGS = ["payload", "header", "metadata", "delete", "swap", "truncate", "checkpoint"]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(kind=st.sampled_from(TAMPERINGS), index=st.integers(0, 23), other=st.integers(1, 23))
def test_tampering_fails_verification_at_its_place(
    positions: list[int], database_url: str, kind: str, index: int, other: int
) -> None:
    position = positions[index]
    with psycopg.connect(database_url) as conn:
        conn.execute("SET session_replication_role = replica")
        expected: set[int | None] = {position}
        if kind == "payload":
            conn.execute(
                'UPDATE events SET payload = payload || \'{"agent_id": "mallory"}\''
                " WHERE position = %s",
                (position,),
            )
        elif kind == "header":
            conn.execute(
                "UPDATE events SET occurred_at = occurred_at - interval '1 day'"
                " WHERE position = %s",
                (position,),
            )
        elif kind == "metadata":
            conn.execute(
                'UPDATE events SET metadata = \'{"actor": "mallory"}\' WHERE position = %s',
                (position,),
            )
        elif kind == "delete":
            conn.execute("DELETE FROM events WHERE position = %s", (position,))
        elif kind == "swap":
            partner = positions[(index + other) % 24]
            _swap_commit_order(conn, position, partner)
            expected = {position, partner}
        elif kind == "truncate":
            conn.execute("DELETE FROM events WHERE position = ANY(%s)", (positions[index:],))
        else:
            checkpoint_id = 1 + index % 2
            conn.execute(
                "UPDATE audit_checkpoints SET root_hash = sha256(root_hash)"
                " WHERE checkpoint_id = %s",
                (checkpoint_id,),
            )
        report = verified(conn)
        conn.rollback()
    assert not report.ok, kind
    if kind == "checkpoint":
        assert report.failures[0].checkpoint_id == 1 + index % 2
        assert "signature" in report.failures[0].what
    else:
        assert {f.position for f in report.failures} & expected, report.failures


def test_a_checkpoint_signed_with_another_key_is_refused(
    positions: list[int], pool: ConnectionPool[Any], database_url: str
) -> None:
    mallory = SigningKey.generate()
    with pool.connection() as conn:
        conn.execute(
            "DELETE FROM audit_checkpoints WHERE checkpoint_id = 2;"
            " DELETE FROM audit_leaves WHERE leaf_index >= 12"
        )
        forged = checkpoints.seal(conn, mallory)  # re-sealed by someone else
    assert forged is not None
    with psycopg.connect(database_url) as conn:
        report = verified(conn)
    assert not report.ok
    assert report.failures[0].checkpoint_id == forged.checkpoint_id
    assert "not the trusted key" in report.failures[0].what


def test_verify_from_a_checkpoint_checks_only_what_came_after(
    positions: list[int], tx: psycopg.Connection[Any]
) -> None:
    tx.execute(  # covered by checkpoint 2, not by checkpoint 1
        "UPDATE events SET occurred_at = occurred_at - interval '1 day' WHERE position = %s",
        (positions[14],),
    )
    assert verify(tx, KEY.public, from_checkpoint=1).ok is False  # from 1: the change shows
    report = verify(tx, KEY.public, from_checkpoint=2)
    assert report.ok, report.failures
    assert report.checkpoints == 1
    with pytest.raises(LookupError):
        verify(tx, KEY.public, from_checkpoint=9)


def test_versions_that_committed_out_of_order_still_chain(store: Store, database_url: str) -> None:
    """Two writers of one stream can commit in the other order than their transactions
    began; the chain is checked in version order all the same."""
    first = store.append("conversation-x", [sms(1)]).events[0].position
    second = store.append("conversation-x", [sms(2)]).events[0].position
    with psycopg.connect(database_url) as conn:
        conn.execute("SET session_replication_role = replica")
        _swap_commit_order(conn, first, second)
        assert verified(conn).ok
        conn.execute("DELETE FROM events WHERE position = %s", (first,))
        report = verified(conn)
        conn.rollback()
    assert [(f.position, f.what) for f in report.failures] == [
        (second, "version 1 is missing (version 2 follows it)")
    ]


def test_verify_from_a_checkpoint_takes_versions_that_committed_out_of_order(
    store: Store, pool: ConnectionPool[Any], database_url: str
) -> None:
    store.append("conversation-y", [sms(0)])
    with pool.connection() as conn:
        first = checkpoints.seal(conn, KEY)
    assert first is not None
    second = store.append("conversation-y", [sms(1)]).events[0].position
    third = store.append("conversation-y", [sms(2)]).events[0].position
    with psycopg.connect(database_url) as conn:
        conn.execute("SET session_replication_role = replica")
        _swap_commit_order(conn, second, third)  # version 3 now sorts before version 2
        report = verify(conn, KEY.public, from_checkpoint=first.checkpoint_id)
        conn.rollback()
    assert report.ok, report.failures


@pytest.mark.parametrize("long_writes", [2, 3])
def test_verify_from_a_checkpoint_that_covers_a_later_version_and_not_an_earlier_one(
    store: Store, pool: ConnectionPool[Any], database_url: str, long_writes: int
) -> None:
    """A long transaction, begun first, appends version ``long_writes`` of a stream after
    a younger one appended the version before it and committed; a third transaction,
    begun between the two, is still open at the seal. The checkpoint covers the long
    transaction's version and not the one before it: a healthy log, which verifies from
    that checkpoint too; the version before it, deleted, is missed all the same."""
    stream = "conversation-s"
    if long_writes == 3:
        store.append(stream, [sms(0)])
    with psycopg.connect(database_url) as between:
        with store.transaction() as long_tx:
            long_tx.append("conversation-other", [sms(1)])  # the oldest transaction id
            between.execute("SELECT pg_current_xact_id()")
            younger = store.append(stream, [sms(2)]).events[0]  # commits at once
            long_tx.append(stream, [sms(3)])
        with pool.connection() as conn:  # the long transaction has committed
            first = checkpoints.seal(conn, KEY)
        between.rollback()
    store.append(stream, [sms(4)])  # one more version, after the checkpoint
    assert first is not None
    with psycopg.connect(database_url) as conn:
        covered = conn.execute(
            "SELECT stream_version FROM events WHERE stream_id = %s AND position <> %s"
            " AND (transaction_id, position) <= (split_part(%s, ':', 1)::xid8,"
            " split_part(%s, ':', 2)::bigint) ORDER BY stream_version",
            (stream, younger.position, first.last_read, first.last_read),
        ).fetchall()
        assert [v for (v,) in covered] == ([2] if long_writes == 2 else [1, 3])
        assert verified(conn).ok
        report = verify(conn, KEY.public, from_checkpoint=first.checkpoint_id)
        assert report.ok, report.failures
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM events WHERE position = %s", (younger.position,))
        report = verify(conn, KEY.public, from_checkpoint=first.checkpoint_id)
        conn.rollback()
    assert not report.ok
    assert f"version {younger.stream_version} is missing" in report.failures[0].what
