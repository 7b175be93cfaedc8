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
from typing import Any, Protocol

import psycopg

from interaction_store.store import Checkpoint, RecordedEvent, Store

__all__ = ["Lag", "Projection", "ProjectionRunner"]

log = logging.getLogger(__name__)


class Projection(Protocol):
    """A view of the log. ``apply`` must only write through ``conn``."""

    name: str

    def apply(self, conn: psycopg.Connection[Any], events: Sequence[RecordedEvent]) -> None: ...


@dataclass(frozen=True, slots=True)
class Lag:
    """How far a projection trails the log."""

    projection: str
    position: int
    head: int
    events: int
    seconds: float


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
        for projection in self.projections:
            self._register(projection.name)

    # Running ------------------------------------------------------------------------

    def run_once(self) -> int:
        """Apply one batch to every projection; the number of events applied."""
        return sum(self.step(projection) for projection in self.projections)

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
                self.store.wait_for(head + 1, timeout=self.poll_interval)

    def stop(self) -> None:
        self._stop.set()

    def step(self, projection: Projection) -> int:
        """Apply the next batch of one projection; 0 when there is nothing to do."""
        checkpoint = self.checkpoint(projection.name)
        events = self.store.read_all(after=checkpoint, limit=self.batch_size)
        if not events:
            return 0
        try:
            self._apply(projection, checkpoint, events)
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
        with self.store.pool.connection() as conn:
            row = conn.execute(
                "SELECT transaction_id::text, position FROM projection_checkpoints"
                " WHERE projection = %s",
                (name,),
            ).fetchone()
        return Checkpoint(int(row[0]), row[1]) if row else Checkpoint.START

    def lag(self) -> list[Lag]:
        """Each projection's distance from the head of the log, in events and seconds."""
        with self.store.pool.connection() as conn:
            rows = conn.execute(
                """
                SELECT c.projection, c.position, h.head,
                       (SELECT count(*) FROM events AS e
                         WHERE (e.transaction_id, e.position) > (c.transaction_id, c.position)),
                       coalesce(extract(epoch FROM now() - (
                           SELECT min(e.recorded_at) FROM events AS e
                            WHERE (e.transaction_id, e.position)
                                  > (c.transaction_id, c.position))), 0)
                  FROM projection_checkpoints AS c,
                       (SELECT coalesce(max(position), 0) AS head FROM events) AS h
                 WHERE c.projection = ANY (%s)
                 ORDER BY c.projection
                """,
                ([p.name for p in self.projections],),
            ).fetchall()
        return [Lag(r[0], r[1], r[2], r[3], float(r[4])) for r in rows]

    # Internals ----------------------------------------------------------------------

    def _register(self, name: str) -> None:
        with self.store.pool.connection() as conn:
            conn.execute(
                "INSERT INTO projection_checkpoints (projection) VALUES (%s)"
                " ON CONFLICT DO NOTHING",
                (name,),
            )

    def _apply(
        self, projection: Projection, checkpoint: Checkpoint, events: Sequence[RecordedEvent]
    ) -> None:
        last = events[-1].checkpoint
        with self.store.pool.connection() as conn, conn.transaction():
            claimed = conn.execute(
                """
                UPDATE projection_checkpoints
                   SET transaction_id = %(txid)s::text::xid8, position = %(position)s,
                       applied = applied + %(count)s, updated_at = now()
                 WHERE projection = %(name)s
                   AND transaction_id = %(seen_txid)s::text::xid8
                   AND position = %(seen_position)s
                """,
                {
                    "name": projection.name,
                    "txid": str(last.transaction_id),
                    "position": last.position,
                    "count": len(events),
                    "seen_txid": str(checkpoint.transaction_id),
                    "seen_position": checkpoint.position,
                },
            ).rowcount
            if claimed != 1:
                raise _Lost()
            projection.apply(conn, events)

    def _apply_one_by_one(
        self, projection: Projection, checkpoint: Checkpoint, events: Sequence[RecordedEvent]
    ) -> int:
        applied = 0
        for event in events:
            for attempt in range(1, self.max_attempts + 1):
                try:
                    self._apply(projection, checkpoint, [event])
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
