"""``audit replay``: rebuild every view from the log into a schema of its own and compare
it with the live views, row by row.

For each projection, empty copies of its tables are filled from position zero in the
schema ``replay_<projection>`` (as a rebuild does, see ``projections.rebuild``), up to
where the live view stands. Then, with the live checkpoint locked so the view cannot move,
the copies catch up with what the live view applied meanwhile, and each table is compared
both ways (``EXCEPT ALL``): the rows only the live view has, and the rows only the replay
has. Nothing live is changed; the copies are dropped at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from interaction_store.projections import all_projections
from interaction_store.projections.rebuild import (
    _Build,
    _create_copies,
    _live_schema,
    copying_views,
)
from interaction_store.projections.runner import Projection
from interaction_store.store import Checkpoint, Store

__all__ = ["Difference", "ReplayReport", "replay"]

#: At most this many differing rows are listed per table (they are all counted).
SHOWN = 20


@dataclass(frozen=True, slots=True)
class Difference:
    """Rows of one table that differ: ``side`` is where they are and the other lacks."""

    projection: str
    table: str
    side: str  # "live" or "replay"
    count: int
    rows: list[dict[str, Any]]


@dataclass
class ReplayReport:
    events: int = 0
    tables: int = 0
    rows: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.differences


def replay(
    store: Store,
    projections: Sequence[Projection] | None = None,
    *,
    batch_size: int = 2000,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Replay the log into copies of the views and report every difference."""
    report = ReplayReport()
    for projection in projections or all_projections():
        with store.pool.connection() as conn:
            _replay_one(store, projection, conn, batch_size, progress, report)
    return report


def _replay_one(
    store: Store,
    projection: Projection,
    conn: psycopg.Connection[Any],
    batch_size: int,
    progress: Callable[[int], None] | None,
    report: ReplayReport,
) -> None:
    shadow = f"replay_{projection.name}"
    live = _live_schema(conn, projection.tables)
    with copying_views(conn):  # retention waits for the copies (see RETENTION_LOCK)
        try:
            _create_copies(conn, live, shadow, projection.tables)
            build = _Build(store, projection, conn, live, shadow, batch_size, progress)
            build.until = _live_checkpoint(conn, projection.name)
            while build.next_batch():
                pass
            with conn.transaction():
                # The live view cannot move now: catch up with where it went meanwhile.
                build.until = _live_checkpoint(conn, projection.name, lock=True)
                while build.next_batch():
                    pass
                report.events = max(report.events, build.applied)
                for table in projection.tables:
                    report.tables += 1
                    _compare(conn, projection.name, table, live, shadow, report)
        finally:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(shadow)))


def _live_checkpoint(conn: psycopg.Connection[Any], name: str, *, lock: bool = False) -> Checkpoint:
    row = conn.execute(
        "SELECT transaction_id::text, position FROM projection_checkpoints WHERE projection = %s"
        + (" FOR UPDATE" if lock else ""),
        (name,),
    ).fetchone()
    return Checkpoint.START if row is None else Checkpoint(int(row[0]), int(row[1]))


def _compare(
    conn: psycopg.Connection[Any],
    projection: str,
    table: str,
    live: str,
    shadow: str,
    report: ReplayReport,
) -> None:
    ours, theirs = sql.Identifier(live, table), sql.Identifier(shadow, table)
    count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ours)).fetchone()
    report.rows += int(count[0]) if count else 0
    for side, first, second in (("live", ours, theirs), ("replay", theirs, ours)):
        cursor = conn.execute(
            sql.SQL(
                "SELECT to_jsonb(d) FROM (SELECT * FROM {} EXCEPT ALL SELECT * FROM {}) AS d"
            ).format(first, second)
        )
        rows = [row[0] for row in cursor.fetchall()]
        if rows:
            report.differences.append(Difference(projection, table, side, len(rows), rows[:SHOWN]))
