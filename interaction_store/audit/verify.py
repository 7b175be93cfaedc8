"""``audit verify``: prove the log is what was appended and sealed, or name where not.

Three checks, each over what is stored, trusting nothing else:

1. **Checkpoints**: each one's signature verifies with the public key, sizes grow, and
   its stored frontier gives its signed root.
2. **The tree**: the events in gap-safe order, leaf by leaf, are the leaves that were
   sealed (same event, same hash), and the tree they make has each checkpoint's signed
   root at its size. A deleted, inserted, reordered or truncated event shows here, and
   so does a checkpoint whose root was forged.
3. **The chains**: every stream's events, in version order, hash to what they store (see
   ``chain``): a changed payload, header field or metadata shows here.

``from_checkpoint`` verifies only what came after a checkpoint already verified (whose
signature is still checked), for a quick regular run.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg

from interaction_store.audit.chain import ZERO_HASH, ChainRow, verify_chain
from interaction_store.audit.checkpoints import SealedCheckpoint, checkpoints
from interaction_store.audit.merkle import Frontier, leaf_hash
from interaction_store.audit.signing import PublicKey

__all__ = ["Failure", "VerifyReport", "verify"]

_FETCH = 5_000
_CURSORS = itertools.count()


@dataclass(frozen=True, slots=True)
class Failure:
    """One place where the log is not what was sealed."""

    what: str
    position: int | None = None
    stream_id: str | None = None
    checkpoint_id: int | None = None

    def __str__(self) -> str:
        where = []
        if self.position is not None:
            where.append(f"position {self.position}")
        if self.stream_id is not None:
            where.append(f"stream {self.stream_id}")
        if self.checkpoint_id is not None:
            where.append(f"checkpoint {self.checkpoint_id}")
        return f"{', '.join(where)}: {self.what}" if where else self.what


@dataclass
class VerifyReport:
    events: int = 0
    streams: int = 0
    checkpoints: int = 0
    #: The first failure of each check, in the order the checks run.
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def verify(
    conn: psycopg.Connection[Any],
    key: PublicKey | None,
    *,
    from_checkpoint: int | None = None,
    progress: Callable[[int], None] = lambda _: None,
) -> VerifyReport:
    """Check the checkpoints, the tree and every stream chain. ``key`` may be None only
    when there are no checkpoints yet. ``progress`` is told of events checked, twice
    each (once for the tree, once for the chains).

    ``conn`` must not be in autocommit mode: the checks read the log through cursors of
    one transaction, best a REPEATABLE READ one, so that all three see one snapshot.
    """
    report = VerifyReport()
    sealed = checkpoints(conn)
    start: SealedCheckpoint | None = None
    if from_checkpoint is not None:
        chosen = [c for c in sealed if c.checkpoint_id == from_checkpoint]
        if not chosen:
            raise LookupError(f"there is no checkpoint {from_checkpoint}")
        start = chosen[0]
        sealed = [c for c in sealed if c.checkpoint_id >= from_checkpoint]
    _check_checkpoints(sealed, key, report)
    _check_tree(conn, sealed, start, report, progress)
    _check_chains(conn, start, report, progress)
    return report


def _check_checkpoints(
    sealed: list[SealedCheckpoint], key: PublicKey | None, report: VerifyReport
) -> None:
    previous = 0
    for checkpoint in sealed:
        report.checkpoints += 1
        failure = None
        if key is None:
            failure = "no public key to verify it with (set INTERACTION_STORE_AUDIT_PUBLIC_KEY)"
        elif checkpoint.key_id != key.key_id:
            failure = f"signed with key {checkpoint.key_id}, not the trusted key {key.key_id}"
        elif not key.verifies(checkpoint.signature, checkpoint.message()):
            failure = "its signature does not verify: its size, root or time was altered"
        elif checkpoint.tree_size <= previous:
            failure = f"covers {checkpoint.tree_size} events, no more than the one before"
        else:
            try:
                stored = Frontier.from_hashes(checkpoint.tree_size, checkpoint.frontier)
            except ValueError as exc:
                failure = f"its frontier is malformed ({exc})"
            else:
                if stored.root() != checkpoint.root_hash:
                    failure = "its stored frontier does not give its signed root"
        if failure is not None:
            report.failures.append(Failure(failure, checkpoint_id=checkpoint.checkpoint_id))
            return
        previous = checkpoint.tree_size


def _check_tree(
    conn: psycopg.Connection[Any],
    sealed: list[SealedCheckpoint],
    start: SealedCheckpoint | None,
    report: VerifyReport,
    progress: Callable[[int], None],
) -> None:
    if start is None:
        frontier, after = Frontier(), ("0", 0)
    else:
        frontier = Frontier.from_hashes(start.tree_size, start.frontier)
        txid, position = start.last_read.split(":")
        after = (txid, int(position))
    pending = [c for c in sealed if c.tree_size > frontier.size]
    events = _rows(
        conn,
        """
        SELECT position, stream_id, hash FROM events
         WHERE (transaction_id, position) > (%s::text::xid8, %s::bigint)
         ORDER BY events.transaction_id, events.position
        """,
        after,
    )
    stored = _rows(
        conn,
        "SELECT leaf_index, position, leaf_hash FROM audit_leaves WHERE leaf_index >= %s"
        " ORDER BY leaf_index",
        (frontier.size,),
    )
    failed = False
    done = 0
    for position, stream_id, event_hash in events:
        index = frontier.size
        leaf = leaf_hash(bytes(event_hash))
        sealed_leaf = next(stored, None)
        if not failed and sealed_leaf is not None:
            if sealed_leaf[1] != position:
                report.failures.append(
                    Failure(
                        f"leaf {index} was sealed as the event at position {sealed_leaf[1]},"
                        f" but the log has the event at position {position} there: an event"
                        " was deleted, inserted or moved",
                        position=sealed_leaf[1],
                    )
                )
                failed = True
            elif bytes(sealed_leaf[2]) != leaf:
                report.failures.append(
                    Failure(
                        f"its hash is not the one sealed in leaf {index}",
                        position=position,
                        stream_id=stream_id,
                    )
                )
                failed = True
        frontier.append(leaf)
        done += 1
        if done % _FETCH == 0:
            progress(_FETCH)
        while pending and pending[0].tree_size == frontier.size:
            checkpoint = pending.pop(0)
            if not failed and frontier.root() != checkpoint.root_hash:
                report.failures.append(
                    Failure(
                        f"the first {checkpoint.tree_size} events do not give its signed root",
                        checkpoint_id=checkpoint.checkpoint_id,
                    )
                )
                failed = True
    progress(done % _FETCH)
    report.events = done
    if pending and not failed:
        missing = next(stored, None)
        report.failures.append(
            Failure(
                f"the log ends after {frontier.size} events, but checkpoint"
                f" {pending[0].checkpoint_id} covers {pending[0].tree_size}: the newest"
                " events were removed",
                position=None if missing is None else missing[1],
                checkpoint_id=pending[0].checkpoint_id,
            )
        )


def _check_chains(
    conn: psycopg.Connection[Any],
    start: SealedCheckpoint | None,
    report: VerifyReport,
    progress: Callable[[int], None],
) -> None:
    after = ("0", 0) if start is None else tuple(start.last_read.split(":"))
    rows = _rows(
        conn,
        """
        SELECT position, event_id, stream_id, stream_version, type, schema_version,
               occurred_at, recorded_at, payload::text, metadata::text, content_digest,
               hash, prev_hash
          FROM events
         WHERE (transaction_id, position) > (%s::text::xid8, %s::bigint)
         ORDER BY stream_id, stream_version
        """,
        (after[0], int(after[1])),
    )
    stream: list[ChainRow] = []
    failed = False
    done = 0

    def check(chain: list[ChainRow]) -> None:
        nonlocal failed
        report.streams += 1
        first = chain[0]
        prev = ZERO_HASH
        if first.stream_version > 1:
            prev = _hash_of(conn, first.stream_id, first.stream_version - 1) or ZERO_HASH
        result = verify_chain(first.stream_id, chain, prev=prev, first_version=first.stream_version)
        if result.broken is not None and not failed:
            broken = result.broken
            report.failures.append(
                Failure(
                    f"version {broken.stream_version}: {broken.reason}",
                    position=broken.position,
                    stream_id=broken.stream_id,
                )
            )
            failed = True

    for row in rows:
        chained = ChainRow(
            position=row[0],
            event_id=row[1],
            stream_id=row[2],
            stream_version=row[3],
            type=row[4],
            schema_version=row[5],
            occurred_at=row[6],
            recorded_at=row[7],
            data=orjson.loads(row[8]),
            metadata=orjson.loads(row[9]),
            content_digest=bytes(row[10]),
            hash=bytes(row[11]),
            prev_hash=bytes(row[12]),
        )
        if stream and stream[0].stream_id != chained.stream_id:
            check(stream)
            stream = []
        stream.append(chained)
        done += 1
        if done % _FETCH == 0:
            progress(_FETCH)
    if stream:
        check(stream)
    progress(done % _FETCH)


def _hash_of(conn: psycopg.Connection[Any], stream_id: str, version: int) -> bytes | None:
    row = conn.execute(
        "SELECT hash FROM events WHERE stream_id = %s AND stream_version = %s",
        (stream_id, version),
    ).fetchone()
    return None if row is None else bytes(row[0])


def _rows(conn: psycopg.Connection[Any], statement: str, params: Any) -> Iterator[Any]:
    """Rows of a query, streamed from a server-side cursor (a whole log does not fit in
    memory at once). The caller's connection must be in a transaction or autocommit."""
    with conn.cursor(name=f"verify_{next(_CURSORS)}") as cursor:
        cursor.itersize = _FETCH
        cursor.execute(statement, params)
        yield from cursor
