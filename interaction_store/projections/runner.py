"""The projection runner: fold the log into views, exactly once.

A projection names itself and applies a batch of events to its view tables on the
connection it is given, inside the runner's transaction. For each batch the runner:

1. reads the next events after the projection's checkpoint (gap-safe ``read_all``);
2. opens a transaction and claims the batch with a compare-and-set on the checkpoint row
   (``UPDATE ... WHERE`` the checkpoint is still the one read), which also locks the row,
   so a second runner on the same projection waits, then finds the checkpoint moved and
   drops its copy of the batch;
3. applies the events and advances the checkpoint in that same transaction.

A crash anywhere rolls the whole batch back: every event is applied exactly once.
An event that fails is retried alone; after ``max_attempts`` it is parked in
``dead_letters`` and the projection goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import psycopg

from interaction_store.store import Checkpoint, RecordedEvent, Store

__all__ = [
    "DeadLetter",
    "DeadLetterError",
    "Lag",
    "Projection",
    "ProjectionRunner",
    "batch_settings",
]

log = logging.getLogger(__name__)


class Projection(Protocol):
    """A view of the log. ``apply`` must only write through ``conn``, and only to
    ``tables`` (which a rebuild builds afresh beside the live ones, then swaps in)."""

    name: str
    tables: tuple[str, ...]

    def apply(self, conn: psycopg.Connection[Any], events: Sequence[RecordedEvent]) -> None: ...


@dataclass(frozen=True, slots=True)
class Lag:
    """How far a projection trails the log."""

    projection: str
    position: int
    head: int
    events: int
    #: Age of the oldest event not yet applied (0 when caught up).
    seconds: float
    #: Seconds since the checkpoint last moved.
    since_progress: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a projection parked after its retries failed."""

    id: int
    projection: str
    position: int
    event_id: UUID
    type: str
    error: str
    attempts: int
    parked_at: datetime
    resolution: str | None
    resolved_at: datetime | None


class DeadLetterError(ValueError):
    """A dead letter that does not exist or was already handled."""


def batch_settings(conn: psycopg.Connection[Any]) -> None:
    """Settings for a transaction that applies a batch to views.

    - Views grow from empty: a plan cached while a table was tiny (a sequential scan)
      would be kept as it grows, so each batch is planned for the data it meets.
    - The commit does not wait for its WAL flush. Views are derived and the checkpoint
      commits with them, so a crash can only lose whole batches, which are applied again:
      never half, never twice. The log itself always commits synchronously.
    """
    conn.execute(
        "SELECT set_config('plan_cache_mode', 'force_custom_plan', true),"
        " set_config('synchronous_commit', 'off', true)"
    )


class _Lost(Exception):
    """Another runner advanced the checkpoint first."""


class ProjectionRunner:
    """Runs projections over a store's log: catch up, then follow."""

    def __init__(
        self,
        store: Store,
        projections: Sequence[Projection],
        *,
        batch_size: int = 500,
        max_attempts: int = 3,
        poll_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.projections = list(projections)
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        # The checkpoints as this runner last set them; None: read them from the table.
        self._known: dict[str, Checkpoint] | None = None
        for projection in self.projections:
            self._register(projection.name)

    # Running ------------------------------------------------------------------------

    def run_once(self) -> int:
        """Apply one batch to every projection; the number of events applied.

        Projections at the same checkpoint (the usual case) share one read of the log and
        one transaction; if that fails, each is applied on its own (and a poison event
        found and parked).
        """
        at: dict[Checkpoint, list[Projection]] = {}
        checkpoints = self._known or self.checkpoints()
        self._known = None  # until this round has gone as expected
        for projection in self.projections:
            at.setdefault(checkpoints[projection.name], []).append(projection)
        applied, known = 0, dict(checkpoints)
        for checkpoint, projections in at.items():
            events = self.store.read_all(after=checkpoint, limit=self.batch_size)
            if not events:
                continue
            if len(projections) == 1:  # alone: its own step, failures handled there
                done = self._step(projections[0], checkpoint, events)
                applied += done
                if done == len(events):  # applied or parked, the checkpoint is past them all
                    known[projections[0].name] = events[-1].checkpoint
                else:
                    known = {}
                continue
            try:
                self._apply(projections, checkpoint, events)
                applied += len(events) * len(projections)
                known.update((p.name, events[-1].checkpoint) for p in projections)
                continue
            except Exception:  # _Lost included: each is applied alone, and read afresh
                known = {}
            for projection in projections:
                applied += self._step(projection, checkpoint, events)
        if len(known) == len(checkpoints):
            self._known = known
        return applied

    def catch_up(self) -> int:
        """Apply batches until every projection has reached the readable end of the log."""
        total = 0
        while applied := self.run_once():
            total += applied
        return total

    def run(self) -> None:
        """Catch up, then follow the log until ``stop()``: woken by NOTIFY, or by polling."""
        while not self._stop.is_set():
            if self.run_once():
                continue
            head = self.store.head()
            if not self._stop.is_set():
                self.store.wait_for(head + 1, timeout=self.poll_interval, cancel=self._stop)

    def stop(self) -> None:
        self._stop.set()

    def stopped(self, wait: float = 0.0) -> bool:
        """Whether ``stop()`` was called, waiting up to ``wait`` seconds for it."""
        return self._stop.wait(wait)

    def step(self, projection: Projection) -> int:
        """Apply the next batch of one projection; 0 when there is nothing to do."""
        checkpoint = self.checkpoint(projection.name)
        events = self.store.read_all(after=checkpoint, limit=self.batch_size)
        return self._step(projection, checkpoint, events)

    def _step(
        self, projection: Projection, checkpoint: Checkpoint, events: Sequence[RecordedEvent]
    ) -> int:
        if not events:
            return 0
        try:
            self._apply([projection], checkpoint, events)
        except _Lost:
            return 0
        except Exception as exc:  # one event is at fault: find it, retry it, park it
            log.warning(
                "%s: batch after %s failed (%s); retrying event by event",
                projection.name,
                checkpoint,
                exc,
            )
            return self._apply_one_by_one(projection, checkpoint, events)
        return len(events)

    # State --------------------------------------------------------------------------

    def checkpoint(self, name: str) -> Checkpoint:
        return self._read_checkpoints([name])[name]

    def checkpoints(self) -> dict[str, Checkpoint]:
        """Every projection's checkpoint, read together."""
        return self._read_checkpoints([p.name for p in self.projections])

    def _read_checkpoints(self, names: list[str]) -> dict[str, Checkpoint]:
        with self.store.pool.connection() as conn:
            rows = conn.execute(
                "SELECT projection, transaction_id::text, position FROM projection_checkpoints"
                " WHERE projection = ANY (%s)",
                (names,),
            ).fetchall()
        found = {name: Checkpoint(int(txid), position) for name, txid, position in rows}
        return {name: found.get(name, Checkpoint.START) for name in names}

    def lag(self) -> list[Lag]:
        """Each projection's distance from the head of the log, in events and seconds."""
        with self.store.pool.connection() as conn:
            rows = conn.execute(
                """
                SELECT c.projection, c.position, h.head, w.events,
                       coalesce(extract(epoch FROM now() - w.oldest), 0),
                       extract(epoch FROM now() - c.updated_at)
                  FROM projection_checkpoints AS c
                       CROSS JOIN (SELECT coalesce(max(position), 0) AS head FROM events) AS h
                       CROSS JOIN LATERAL (
                           SELECT count(*) AS events, min(e.recorded_at) AS oldest
                             FROM events AS e
                            WHERE (e.transaction_id, e.position)
                                  > (c.transaction_id, c.position)) AS w
                 WHERE c.projection = ANY (%s)
                 ORDER BY c.projection
                """,
                ([p.name for p in self.projections],),
            ).fetchall()
        return [Lag(r[0], r[1], r[2], r[3], float(r[4]), float(r[5])) for r in rows]

    def oldest_writer(self) -> tuple[int, float, str] | None:
        """The backend whose open writing transaction is the oldest: (pid, seconds, query).

        Readers of the log stop at the oldest running writer (gap safety), so a long
        transaction anywhere in the database holds every projection back.
        """
        with self.store.pool.connection() as conn:
            row = conn.execute(
                """
                SELECT pid, extract(epoch FROM now() - xact_start), left(query, 120)
                  FROM pg_stat_activity
                 WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
                 ORDER BY xact_start LIMIT 1
                """
            ).fetchone()
        return (int(row[0]), float(row[1]), str(row[2])) if row else None

    def stalled(self, after: float = 60.0) -> list[Lag]:
        """The projections that look stuck: events have waited more than ``after`` seconds
        and the checkpoint has not moved for as long (a liveness check)."""
        return [
            lag
            for lag in self.lag()
            if lag.events and lag.seconds > after and lag.since_progress > after
        ]

    # Dead letters -------------------------------------------------------------------

    def dead_letters(self, *, resolved: bool = False) -> list[DeadLetter]:
        """The parked events of these projections, oldest first (with ``resolved``, also
        those already retried or skipped)."""
        with self.store.pool.connection() as conn:
            rows = conn.execute(
                """
                SELECT id, projection, position, event_id, type, error, attempts, parked_at,
                       resolution, resolved_at
                  FROM dead_letters
                 WHERE projection = ANY (%s) AND (%s OR resolution IS NULL)
                 ORDER BY id
                """,
                ([p.name for p in self.projections], resolved),
            ).fetchall()
        return [DeadLetter(*row) for row in rows]

    def retry(self, dead_letter_id: int) -> DeadLetter:
        """Apply a parked event again (after a fix). On success it is marked retried; on
        failure nothing changes but its error and attempt count, and the error is raised.

        The event is applied now, after the events that followed it in the log, while the
        projection's checkpoint row is locked (its runner waits). Where the order matters
        (two links of one contact, two profile updates) a rebuild gives the exact view.
        """
        projections = {p.name: p for p in self.projections}
        try:
            with self.store.pool.connection() as conn, conn.transaction():
                letter = self._unresolved(conn, dead_letter_id)
                projection = projections.get(letter.projection)
                if projection is None:
                    raise LookupError(f"projection {letter.projection!r} is not run here")
                conn.execute(
                    "SELECT FROM projection_checkpoints WHERE projection = %s FOR UPDATE",
                    (letter.projection,),
                )
                batch_settings(conn)
                event = self.store.read_event(letter.position)
                if event is None:
                    raise LookupError(f"no event at position {letter.position}")
                projection.apply(conn, [event])
                return self._resolve(conn, dead_letter_id, "retried")
        except DeadLetterError:
            raise
        except Exception as exc:
            self._record_failure(dead_letter_id, exc)
            raise

    def skip(self, dead_letter_id: int) -> DeadLetter:
        """Give up on a parked event: it stays in the table, marked skipped, with the time."""
        with self.store.pool.connection() as conn, conn.transaction():
            self._unresolved(conn, dead_letter_id)
            return self._resolve(conn, dead_letter_id, "skipped")

    def _unresolved(self, conn: psycopg.Connection[Any], dead_letter_id: int) -> DeadLetter:
        row = conn.execute(
            """
            SELECT id, projection, position, event_id, type, error, attempts, parked_at,
                   resolution, resolved_at
              FROM dead_letters WHERE id = %s FOR UPDATE
            """,
            (dead_letter_id,),
        ).fetchone()
        if row is None:
            raise DeadLetterError(f"there is no dead letter {dead_letter_id}")
        letter = DeadLetter(*row)
        if letter.resolution is not None:
            raise DeadLetterError(
                f"dead letter {dead_letter_id} was already {letter.resolution}"
                f" at {letter.resolved_at:%Y-%m-%d %H:%M:%S}"
            )
        return letter

    def _resolve(
        self, conn: psycopg.Connection[Any], dead_letter_id: int, resolution: str
    ) -> DeadLetter:
        row = conn.execute(
            """
            UPDATE dead_letters SET resolution = %s, resolved_at = now() WHERE id = %s
            RETURNING id, projection, position, event_id, type, error, attempts, parked_at,
                      resolution, resolved_at
            """,
            (resolution, dead_letter_id),
        ).fetchone()
        assert row is not None
        return DeadLetter(*row)

    def _record_failure(self, dead_letter_id: int, error: Exception) -> None:
        with self.store.pool.connection() as conn:
            conn.execute(
                "UPDATE dead_letters SET error = %s, attempts = attempts + 1"
                " WHERE id = %s AND resolution IS NULL",
                (f"{type(error).__name__}: {error}"[:2000], dead_letter_id),
            )

    # Internals ----------------------------------------------------------------------

    def _register(self, name: str) -> None:
        with self.store.pool.connection() as conn:
            conn.execute(
                "INSERT INTO projection_checkpoints (projection) VALUES (%s)"
                " ON CONFLICT DO NOTHING",
                (name,),
            )

    def _apply(
        self,
        projections: Sequence[Projection],
        checkpoint: Checkpoint,
        events: Sequence[RecordedEvent],
    ) -> None:
        """Claim the batch for each projection and apply it, all in one transaction."""
        last = events[-1].checkpoint
        with self.store.pool.connection() as conn, conn.transaction():
            self._claim(conn, [p.name for p in projections], checkpoint, last, len(events))
            batch_settings(conn)
            for projection in projections:
                projection.apply(conn, events)

    def _claim(
        self,
        conn: psycopg.Connection[Any],
        names: list[str],
        checkpoint: Checkpoint,
        last: Checkpoint,
        count: int,
    ) -> None:
        """Compare-and-set the checkpoints from ``checkpoint`` to ``last``, or raise _Lost.

        The rows are locked in name order, the same in every runner, so two runners
        never wait for each other in a circle.
        """
        claimed = conn.execute(
            """
            UPDATE projection_checkpoints
               SET transaction_id = %(txid)s::text::xid8, position = %(position)s,
                   applied = applied + %(count)s, updated_at = now()
             WHERE projection IN (SELECT projection FROM projection_checkpoints
                                   WHERE projection = ANY (%(names)s)
                                   ORDER BY projection FOR UPDATE)
               AND transaction_id = %(seen_txid)s::text::xid8
               AND position = %(seen_position)s
            """,
            {
                "names": names,
                "txid": str(last.transaction_id),
                "position": last.position,
                "count": count,
                "seen_txid": str(checkpoint.transaction_id),
                "seen_position": checkpoint.position,
            },
        ).rowcount
        if claimed != len(names):
            raise _Lost()

    def _apply_one_by_one(
        self, projection: Projection, checkpoint: Checkpoint, events: Sequence[RecordedEvent]
    ) -> int:
        applied = 0
        for event in events:
            for attempt in range(1, self.max_attempts + 1):
                try:
                    self._apply([projection], checkpoint, [event])
                    break
                except _Lost:
                    return applied
                except Exception as exc:
                    if attempt < self.max_attempts:
                        time.sleep(0.01 * attempt)
                        continue
                    try:
                        self._park(projection.name, checkpoint, event, exc, attempt)
                    except _Lost:
                        return applied
            checkpoint = event.checkpoint
            applied += 1
        return applied

    def _park(
        self,
        name: str,
        checkpoint: Checkpoint,
        event: RecordedEvent,
        error: Exception,
        attempts: int,
    ) -> None:
        """Record the event as a dead letter and move the checkpoint past it, together."""
        log.error(
            "%s: parking event %s at position %s: %s", name, event.event_id, event.position, error
        )
        with self.store.pool.connection() as conn, conn.transaction():
            moved = conn.execute(
                """
                UPDATE projection_checkpoints
                   SET transaction_id = %s::text::xid8, position = %s, updated_at = now()
                 WHERE projection = %s AND transaction_id = %s::text::xid8 AND position = %s
                """,
                (
                    str(event.transaction_id),
                    event.position,
                    name,
                    str(checkpoint.transaction_id),
                    checkpoint.position,
                ),
            ).rowcount
            if moved != 1:
                raise _Lost()
            conn.execute(
                "INSERT INTO dead_letters (projection, position, event_id, type, error, attempts)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    name,
                    event.position,
                    event.event_id,
                    event.type,
                    f"{type(error).__name__}: {error}"[:2000],
                    attempts,
                ),
            )
