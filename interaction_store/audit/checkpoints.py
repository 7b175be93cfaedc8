"""Sealing: extend the Merkle tree over the log and sign where it stands.

The sealer reads the events after the last checkpoint in gap-safe order (the order
every reader of the whole log sees; an event committing late is never passed over), adds
each as a leaf, and stores a checkpoint: the tree's size and root hash, the time, and an
Ed25519 signature over the three. One seal runs at a time (an advisory lock); each
extends the last, so the checkpoints form one growing tree, which inclusion and
consistency proofs can be checked against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from interaction_store.audit.merkle import (
    Frontier,
    consistency_proof,
    event_leaf,
    inclusion_proof,
)
from interaction_store.audit.signing import SigningKey, checkpoint_message

__all__ = [
    "InclusionProof",
    "SealedCheckpoint",
    "checkpoints",
    "consistency_between",
    "leaves",
    "prove_inclusion",
    "seal",
]

_LOCK = "interaction_store.audit.seal"
_BATCH = 20_000


@dataclass(frozen=True, slots=True)
class SealedCheckpoint:
    checkpoint_id: int
    tree_size: int
    root_hash: bytes
    sealed_at: datetime
    key_id: str
    signature: bytes
    frontier: tuple[bytes, ...]
    last_read: str

    def message(self) -> bytes:
        return checkpoint_message(self.tree_size, self.root_hash, self.sealed_at)


_COLUMNS = "checkpoint_id, tree_size, root_hash, sealed_at, key_id, signature, frontier, last_read"


def _checkpoint(row: Sequence[Any]) -> SealedCheckpoint:
    return SealedCheckpoint(
        checkpoint_id=row[0],
        tree_size=row[1],
        root_hash=bytes(row[2]),
        sealed_at=row[3],
        key_id=row[4],
        signature=bytes(row[5]),
        frontier=tuple(bytes(h) for h in row[6]),
        last_read=row[7],
    )


def checkpoints(
    conn: psycopg.Connection[Any], *, after: int = 0, limit: int | None = None
) -> list[SealedCheckpoint]:
    """The checkpoints, oldest first, after checkpoint id ``after``."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM audit_checkpoints WHERE checkpoint_id > %s"
        " ORDER BY checkpoint_id LIMIT %s",
        (after, limit),
    ).fetchall()
    return [_checkpoint(row) for row in rows]


def seal(
    conn: psycopg.Connection[Any],
    key: SigningKey,
    *,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    on_leaves: Callable[[int], None] | None = None,
) -> SealedCheckpoint | None:
    """Add the events not yet covered and sign the new tree; None when there are none.

    ``conn`` must be in autocommit mode: the seal is one transaction of its own.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_LOCK,))
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM audit_checkpoints ORDER BY checkpoint_id DESC LIMIT 1"
        ).fetchone()
        last = None if row is None else _checkpoint(row)
        frontier = (
            Frontier() if last is None else Frontier.from_hashes(last.tree_size, last.frontier)
        )
        txid, position = ("0", 0) if last is None else last.last_read.split(":")
        added = 0
        while True:
            rows = conn.execute(
                """
                SELECT transaction_id::text, position, hash FROM events
                 WHERE (transaction_id, position) > (%s::text::xid8, %s::bigint)
                   AND transaction_id < (SELECT events_horizon(pg_current_snapshot()))
                 ORDER BY events.transaction_id, events.position
                 LIMIT %s
                """,
                (txid, position, _BATCH),
            ).fetchall()
            if not rows:
                break
            leaves = []
            for _, event_position, event_hash in rows:
                leaf = event_leaf(event_position, bytes(event_hash))
                leaves.append((frontier.size, event_position, leaf))
                frontier.append(leaf)
            with (
                conn.cursor() as cursor,
                cursor.copy(
                    "COPY audit_leaves (leaf_index, position, leaf_hash) FROM STDIN"
                ) as copy,
            ):
                for leaf_row in leaves:
                    copy.write_row(leaf_row)
            txid, position = rows[-1][0], rows[-1][1]
            added += len(rows)
            if on_leaves is not None:
                on_leaves(len(rows))
        if not added:
            return None
        root = frontier.root()
        sealed_at = now().astimezone(UTC)
        sealed = conn.execute(
            f"""
            INSERT INTO audit_checkpoints (tree_size, root_hash, frontier, last_read,
                                           sealed_at, key_id, signature)
            VALUES (%s, %s, %s, %s, %s, %s, %s)
            RETURNING {_COLUMNS}
            """,
            (
                frontier.size,
                root,
                frontier.hashes(),
                f"{txid}:{position}",
                sealed_at,
                key.public.key_id,
                key.sign(checkpoint_message(frontier.size, root, sealed_at)),
            ),
        ).fetchone()
        assert sealed is not None
        return _checkpoint(sealed)


def leaves(conn: psycopg.Connection[Any], size: int) -> list[bytes]:
    """The first ``size`` stored leaf hashes."""
    rows = conn.execute(
        "SELECT leaf_hash FROM audit_leaves WHERE leaf_index < %s ORDER BY leaf_index", (size,)
    ).fetchall()
    return [bytes(row[0]) for row in rows]


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """That the event at ``position`` is leaf ``leaf_index`` of checkpoint's tree."""

    position: int
    leaf_index: int
    leaf_hash: bytes
    checkpoint: SealedCheckpoint
    path: list[bytes]


def prove_inclusion(
    conn: psycopg.Connection[Any], position: int, checkpoint_id: int | None = None
) -> InclusionProof | None:
    """The inclusion proof of an event in the latest checkpoint (or the one named); None
    when no checkpoint covers it yet. ``LookupError`` when no event has that position."""
    if conn.execute("SELECT FROM events WHERE position = %s", (position,)).fetchone() is None:
        raise LookupError(f"no event has position {position}")
    row = conn.execute(
        "SELECT leaf_index, leaf_hash FROM audit_leaves WHERE position = %s", (position,)
    ).fetchone()
    if row is None:
        return None
    index, leaf = int(row[0]), bytes(row[1])
    named = conn.execute(
        f"SELECT {_COLUMNS} FROM audit_checkpoints"
        " WHERE (%(id)s::bigint IS NULL OR checkpoint_id = %(id)s) AND tree_size > %(index)s"
        " ORDER BY checkpoint_id DESC LIMIT 1",
        {"id": checkpoint_id, "index": index},
    ).fetchone()
    if named is None:
        return None
    checkpoint = _checkpoint(named)
    path = inclusion_proof(index, leaves(conn, checkpoint.tree_size))
    return InclusionProof(position, index, leaf, checkpoint, path)


def consistency_between(
    conn: psycopg.Connection[Any], old: SealedCheckpoint, new: SealedCheckpoint
) -> list[bytes]:
    """The proof that ``new``'s tree extends ``old``'s."""
    return consistency_proof(old.tree_size, leaves(conn, new.tree_size))
