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

The tree and the chains are checked in one pass over the events in gap-safe order.

``from_checkpoint`` verifies only what came after a checkpoint already verified (whose
signature is still checked), for a quick regular run.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg

from interaction_store.audit.chain import (
    ZERO_HASH,
    canonical_json,
    content_digest_of,
    link_hash_of,
    metadata_digest,
)
from interaction_store.audit.checkpoints import SealedCheckpoint, checkpoints
from interaction_store.audit.merkle import Frontier, event_leaf
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
    when there are no checkpoints yet. ``progress`` is told of events checked.

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
    _check_log(conn, sealed, start, report, progress)
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


_EVENTS = """
SELECT position, stream_id, stream_version, event_id::text, type, schema_version,
       to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       (extract(epoch FROM recorded_at) * 1000000)::bigint,
       payload::text, metadata::text, content_digest, hash, prev_hash
  FROM events
 WHERE (transaction_id, position) > (%s::text::xid8, %s::bigint)
 ORDER BY events.transaction_id, events.position
"""


_COVERED = "(e.transaction_id, e.position) <= (%(txid)s::text::xid8, %(position)s::bigint)"

# How many versions below ``first`` a checkpoint covers, and the hash of the one before
# ``first``: all of 1 to ``first`` - 1 are there when the count is ``first`` - 1.
_COVERED_HEAD = f"""
SELECT (SELECT count(*) FROM events AS e
         WHERE e.stream_id = %(stream_id)s AND e.stream_version < %(first)s AND {_COVERED}),
       e.hash
  FROM events AS e
 WHERE e.stream_id = %(stream_id)s AND e.stream_version = %(first)s - 1 AND {_COVERED}
"""

_COVERED_BELOW = f"""
SELECT e.stream_version, e.position, e.hash, e.prev_hash
  FROM events AS e
 WHERE e.stream_id = %(stream_id)s AND e.stream_version < %(first)s AND {_COVERED}
 ORDER BY e.stream_version
"""


# Each stream's first version after the checkpoint, with the versions the checkpoint
# covers above that one (none, nearly always: one row with NULLs).
_COVERED_ABOVE = f"""
WITH firsts AS MATERIALIZED (
    SELECT e.stream_id, min(e.stream_version) AS first
      FROM events AS e
     WHERE NOT {_COVERED}
     GROUP BY e.stream_id
)
SELECT f.stream_id, f.first, e.stream_version, e.position, e.hash, e.prev_hash
  FROM firsts AS f
  LEFT JOIN events AS e
    ON e.stream_id = f.stream_id AND e.stream_version > f.first AND {_COVERED}
"""


@functools.lru_cache(maxsize=4096)
def _metadata_digest(text: str) -> bytes:
    """Metadata repeats from event to event (the connector's name): digested once."""
    return metadata_digest(orjson.Fragment(canonical_json(orjson.loads(text))))


class _Chains:
    """Every stream's chain, checked as its events come in commit order.

    A stream's versions almost always commit in order; when one comes before the version
    it follows (two writers whose transactions began in one order and committed in the
    other), it waits in ``early`` until that version has been checked. From a checkpoint,
    a version it covers above one it does not waits in ``covered``.
    """

    def __init__(
        self, conn: psycopg.Connection[Any], report: VerifyReport, after: tuple[str, int]
    ) -> None:
        self.conn = conn
        self.report = report
        self.after = after  # the events up to here are trusted (a verified checkpoint)
        self.fresh = after == ("0", 0)  # from the first event: streams start at version 1
        self.heads: dict[str, tuple[int, bytes]] = {}
        self.early: dict[tuple[str, int], tuple[Any, ...]] = {}
        # From a checkpoint: each stream's first version after it, and the versions it
        # covers above that one (see ``_covered``), stepped over as they are reached.
        self.first: dict[str, int] = {}
        self.covered: dict[tuple[str, int], tuple[int, bytes, bytes]] = {}
        if not self.fresh:
            self._covered()
        self.failed = False

    def add(self, row: tuple[Any, ...]) -> None:
        stream_id, version = row[1], row[2]
        head = self.heads.get(stream_id)
        if head is None:
            head = self._start(stream_id, version)
        if version != head[0] + 1:
            if version > head[0] + 1:
                self.early[(stream_id, version)] = row
            else:
                self._fail(row, f"version {version} comes again after version {head[0]}")
            return
        self._check(row, head[1])
        while True:  # what waited for this version: covered versions, early ones
            version, prev = self.heads[stream_id]
            covered = self.covered.pop((stream_id, version + 1), None)
            if covered is not None:
                position, stored_hash, prev_hash = covered
                self.heads[stream_id] = (version + 1, stored_hash)
                if prev_hash != prev:
                    self._fail(
                        (position, stream_id),
                        f"version {version + 1}: prev_hash is not the previous event's hash",
                    )
                continue
            later = self.early.pop((stream_id, version + 1), None)
            if later is None:
                return
            self._check(later, prev)

    def finish(self) -> None:
        waiting = [(row[0], key) for key, row in self.early.items()]
        waiting += [(covered[0], key) for key, covered in self.covered.items()]
        for position, (stream_id, version) in sorted(waiting):
            head = self.heads.get(stream_id, (0, ZERO_HASH))
            self._fail(
                (position, stream_id),
                f"version {head[0] + 1} is missing (version {version} follows it)",
            )

    def _covered(self) -> None:
        """The versions the checkpoint covers above a stream's first version after it.

        A checkpoint covers the transactions older than every one running when it was
        sealed, so it can cover a stream's version 3 and not its version 2: two appenders
        whose transactions began in one order and committed in the other, with a third
        transaction open between them. Those versions are trusted, like the rest of what
        the checkpoint covers, but each is still linked to the version before it.
        """
        params = {"txid": self.after[0], "position": self.after[1]}
        rows = self.conn.execute(_COVERED_ABOVE, params).fetchall()
        for stream_id, first, version, position, stored_hash, prev_hash in rows:
            self.first[stream_id] = first
            if version is not None:
                self.covered[(stream_id, version)] = (
                    position,
                    bytes(stored_hash),
                    bytes(prev_hash),
                )

    def _start(self, stream_id: str, version: int) -> tuple[int, bytes]:
        """The head a stream's chain resumes from: version 0, or, from a checkpoint, the
        last of the versions it covers below the stream's first one after it (all of
        them, 1 to that one, unless some were deleted)."""
        self.report.streams += 1
        head = (0, ZERO_HASH)
        first = self.first.get(stream_id, version)
        if not self.fresh and first > 1:
            params = {"stream_id": stream_id, "first": first}
            params |= {"txid": self.after[0], "position": self.after[1]}
            row = self.conn.execute(_COVERED_HEAD, params).fetchone()
            if row is not None and row[0] == first - 1:
                head = (first - 1, bytes(row[1]))
            else:  # versions are missing below: the chain resumes below the gap
                for version_, position, stored_hash, prev_hash in self.conn.execute(
                    _COVERED_BELOW, params
                ):
                    if version_ == head[0] + 1:
                        head = (version_, bytes(stored_hash))
                    else:
                        self.covered[(stream_id, version_)] = (
                            position,
                            bytes(stored_hash),
                            bytes(prev_hash),
                        )
        self.heads[stream_id] = head
        return head

    def _check(self, row: tuple[Any, ...], prev: bytes) -> None:
        (_position, stream_id, version, event_id, type_, schema_version, occurred_at,
         micros, payload, metadata, stored_digest, stored_hash, prev_hash) = row  # fmt: skip
        stored_hash = bytes(stored_hash)
        self.heads[stream_id] = (version, stored_hash)
        if bytes(prev_hash) != prev:
            self._fail(row, f"version {version}: prev_hash is not the previous event's hash")
            return
        digest = content_digest_of(
            event_id,
            stream_id,
            type_,
            schema_version,
            occurred_at,
            orjson.Fragment(canonical_json(orjson.loads(payload))),
        )
        if digest != bytes(stored_digest):
            self._fail(row, f"version {version}: content differs from its digest")
            return
        meta = _metadata_digest(metadata)
        if link_hash_of(prev, digest, meta, version, micros) != stored_hash:
            self._fail(row, f"version {version}: hash does not match the event and its predecessor")

    def _fail(self, row: tuple[Any, ...], what: str) -> None:
        if not self.failed:
            self.report.failures.append(Failure(what, position=row[0], stream_id=row[1]))
            self.failed = True


def _check_log(
    conn: psycopg.Connection[Any],
    sealed: list[SealedCheckpoint],
    start: SealedCheckpoint | None,
    report: VerifyReport,
    progress: Callable[[int], None],
) -> None:
    """One pass over the events in gap-safe order: the tree leaf by leaf, and each
    stream's chain."""
    if start is None:
        frontier, after = Frontier(), ("0", 0)
    else:
        frontier = Frontier.from_hashes(start.tree_size, start.frontier)
        txid, position = start.last_read.split(":")
        after = (txid, int(position))
    pending = [c for c in sealed if c.tree_size > frontier.size]
    chains = _Chains(conn, report, after)
    stored = _rows(
        conn,
        "SELECT leaf_index, position, leaf_hash FROM audit_leaves WHERE leaf_index >= %s"
        " ORDER BY leaf_index",
        (frontier.size,),
    )
    failed = False
    done = 0
    for row in _rows(conn, _EVENTS, after):
        chains.add(row)
        position, stream_id, event_hash = row[0], row[1], bytes(row[11])
        index = frontier.size
        leaf = event_leaf(position, event_hash)
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
    chains.finish()
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


def _rows(conn: psycopg.Connection[Any], statement: str, params: Any) -> Iterator[Any]:
    """Rows of a query, streamed from a server-side cursor (a whole log does not fit in
    memory at once). The caller's connection must be in a transaction or autocommit."""
    with conn.cursor(name=f"verify_{next(_CURSORS)}") as cursor:
        cursor.itersize = _FETCH
        cursor.execute(statement, params)
        yield from cursor
