"""Rebuild a projection from position zero beside the live one, then swap it in.

1. Empty copies of the projection's tables are made in a schema of their own,
   ``rebuild_<projection>``, with the live tables' columns, constraints and indexes under
   the same names.
2. The whole log is applied to them in batches, with ``search_path`` pointing at that
   schema first, so the projection's own SQL writes to the copies untouched. Readers and
   the live runner go on using the live tables meanwhile.
3. In one transaction: the live checkpoint row is locked (a live runner waits), the copies
   catch up with the last events, the live tables move out and the copies move in, and the
   checkpoint becomes the rebuild's. Readers see the old view or the new, never half of one.

An event that fails during the rebuild is parked as a dead letter when the swap commits,
as the live runner would have parked it.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from interaction_store.privacy import RETENTION_LOCK
from interaction_store.projections.runner import Projection, batch_settings
from interaction_store.store import Checkpoint, RecordedEvent, Store

__all__ = ["RebuildError", "RebuildResult", "copying_views", "rebuild"]

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")
#: The table part of ``pg_get_indexdef``: "CREATE INDEX name ON schema.table USING ...".
_INDEX_TARGET = re.compile(r" ON (?:ONLY )?\S+ USING ")


class RebuildError(RuntimeError):
    """The rebuild cannot start (another is running, or the projection is unknown)."""


@dataclass(frozen=True, slots=True)
class RebuildResult:
    projection: str
    events: int
    parked: int
    seconds: float
    checkpoint: Checkpoint


def rebuild(
    store: Store,
    projection: Projection,
    *,
    batch_size: int = 2000,
    progress: Callable[[int], None] | None = None,
) -> RebuildResult:
    """Rebuild ``projection``'s tables from the whole log and swap them in atomically.

    ``progress`` is called with the number of events applied after each batch.
    """
    if not _NAME.match(projection.name):
        raise RebuildError(f"projection name {projection.name!r} cannot name a schema")
    started = time.perf_counter()
    shadow = f"rebuild_{projection.name}"
    with store.pool.connection() as conn:
        autocommit = conn.autocommit
        conn.autocommit = True
        try:
            return _rebuild(store, projection, conn, shadow, batch_size, progress, started)
        finally:
            conn.autocommit = autocommit  # the pool's connections stay as the pool made them


def _rebuild(
    store: Store,
    projection: Projection,
    conn: psycopg.Connection[Any],
    shadow: str,
    batch_size: int,
    progress: Callable[[int], None] | None,
    started: float,
) -> RebuildResult:
    locked = conn.execute(
        "SELECT pg_try_advisory_lock(hashtext('interaction-store rebuild'), hashtext(%s))",
        (projection.name,),
    ).fetchone()
    if not (locked and locked[0]):
        raise RebuildError(f"a rebuild of {projection.name} is already running")
    try:
        with copying_views(conn):  # retention waits for the copies (see RETENTION_LOCK)
            try:
                live = _live_schema(conn, projection.tables)
                _create_copies(conn, live, shadow, projection.tables)
                build = _Build(store, projection, conn, live, shadow, batch_size, progress)
                while build.next_batch():
                    pass
                for table in projection.tables:  # plans for the swap's catch-up and reads
                    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(shadow, table)))
                with conn.transaction():
                    _swap(build)
                return RebuildResult(
                    projection.name,
                    build.applied,
                    len(build.parked),
                    time.perf_counter() - started,
                    build.checkpoint,
                )
            finally:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(shadow))
                )
    finally:
        conn.execute(
            "SELECT pg_advisory_unlock(hashtext('interaction-store rebuild'), hashtext(%s))",
            (projection.name,),
        )


@contextlib.contextmanager
def copying_views(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Hold the retention lock shared (on ``conn``, in autocommit) while copies of the views
    are made from the log: a retention run waits for the copy to be done, and a copy waits
    for a retention run to have shredded its keys (see ``RETENTION_LOCK``)."""
    conn.execute("SELECT pg_advisory_lock_shared(%s)", (RETENTION_LOCK,))
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock_shared(%s)", (RETENTION_LOCK,))


def _live_schema(conn: psycopg.Connection[Any], tables: Sequence[str]) -> str:
    """The schema the live tables are found in through the search path."""
    schemas = set()
    for table in tables:
        row = conn.execute(
            "SELECT n.nspname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
            " WHERE c.oid = to_regclass(%s)",
            (table,),
        ).fetchone()
        if row is None:
            raise RebuildError(f"table {table} does not exist: run `interaction-store migrate`")
        schemas.add(row[0])
    if len(schemas) != 1:
        raise RebuildError(f"the tables {', '.join(tables)} are in several schemas")
    return str(schemas.pop())


def _create_copies(
    conn: psycopg.Connection[Any], live: str, shadow: str, tables: Sequence[str]
) -> None:
    """Empty tables like the live ones, with their constraints and indexes, same names."""
    with conn.transaction():
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(shadow)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(shadow)))
        for table in tables:
            source = sql.Identifier(live, table)
            target = sql.Identifier(shadow, table)
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
                    " INCLUDING IDENTITY INCLUDING GENERATED)"
                ).format(target, source)
            )
            oid = f"{live}.{table}"
            for name, definition in conn.execute(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = %s::regclass AND contype IN ('p', 'u', 'x')",
                (oid,),
            ).fetchall():
                conn.execute(
                    sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                        target, sql.Identifier(name), sql.SQL(definition)
                    )
                )
            for (definition,) in conn.execute(
                """
                SELECT pg_get_indexdef(x.indexrelid) FROM pg_index AS x
                 WHERE x.indrelid = %s::regclass
                   AND NOT EXISTS (SELECT FROM pg_constraint AS c WHERE c.conindid = x.indexrelid)
                """,
                (oid,),
            ).fetchall():
                copy, found = _INDEX_TARGET.subn(
                    f" ON {target.as_string(conn)} USING ", definition, 1
                )
                if not found:
                    raise RebuildError(f"cannot copy index: {definition}")
                conn.execute(sql.SQL(copy))  # built from the catalog's own definition
            _copy_privileges(conn, oid, target)


def _copy_privileges(conn: psycopg.Connection[Any], oid: str, target: sql.Composable) -> None:
    """Give the copy the live table's owner and grants: readers keep their access."""
    row = conn.execute(
        "SELECT pg_get_userbyid(relowner), current_user FROM pg_class WHERE oid = %s::regclass",
        (oid,),
    ).fetchone()
    if row and row[0] != row[1]:
        conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(target, sql.Identifier(row[0])))
    for grantee, privilege, grantable in conn.execute(
        """
        SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,
               a.privilege_type, a.is_grantable
          FROM pg_class AS c, aclexplode(c.relacl) AS a
         WHERE c.oid = %s::regclass AND a.grantee <> c.relowner
        """,
        (oid,),
    ).fetchall():
        conn.execute(
            sql.SQL("GRANT {} ON {} TO {}{}").format(
                sql.SQL(privilege),
                target,
                sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC"),
                sql.SQL(" WITH GRANT OPTION" if grantable else ""),
            )
        )


class _Build:
    """The copies being filled: where they stand in the log, and what failed."""

    def __init__(
        self,
        store: Store,
        projection: Projection,
        conn: psycopg.Connection[Any],
        live: str,
        shadow: str,
        batch_size: int,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.store = store
        self.projection = projection
        self.conn = conn
        self.live = live
        self.shadow = shadow
        self.batch_size = batch_size
        self.progress = progress
        self.checkpoint = Checkpoint.START
        self.applied = 0
        self.parked: list[tuple[RecordedEvent, Exception]] = []
        #: Stop after this checkpoint (None: at the end of the log).
        self.until: Checkpoint | None = None

    def next_batch(self) -> bool:
        """Apply the next batch to the copies (in the caller's transaction, if any)."""
        events = self.store.read_all(after=self.checkpoint, limit=self.batch_size)
        if self.until is not None:
            until = (self.until.transaction_id, self.until.position)
            events = [e for e in events if (e.transaction_id, e.position) <= until]
        if not events:
            return False
        with self.conn.transaction():
            self._search_shadow_first()
            try:
                with self.conn.transaction():
                    self.projection.apply(self.conn, events)
            except Exception:
                for event in events:  # find the event at fault, as the runner does
                    try:
                        with self.conn.transaction():
                            self.projection.apply(self.conn, [event])
                    except Exception as exc:
                        self.parked.append((event, exc))
        self.checkpoint = events[-1].checkpoint
        self.applied += len(events)
        if self.progress is not None:
            self.progress(self.applied)
        return True

    def _search_shadow_first(self) -> None:
        batch_settings(self.conn)
        self.conn.execute(
            sql.SQL("SET LOCAL search_path = {}, {}").format(
                sql.Identifier(self.shadow), sql.Identifier(self.live)
            )
        )


def _swap(build: _Build) -> None:
    """Catch the copies up under the checkpoint's lock and swap them in (one transaction)."""
    conn, name = build.conn, build.projection.name
    conn.execute(
        "INSERT INTO projection_checkpoints (projection) VALUES (%s) ON CONFLICT DO NOTHING",
        (name,),
    )
    conn.execute("SELECT FROM projection_checkpoints WHERE projection = %s FOR UPDATE", (name,))
    while build.next_batch():
        pass
    conn.execute(sql.SQL("SET LOCAL search_path = {}").format(sql.Identifier(build.live)))
    retired = sql.Identifier(f"retired_{name}")
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(retired))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(retired))
    tables = build.projection.tables
    conn.execute(
        sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
            sql.SQL(", ").join(sql.Identifier(build.live, t) for t in tables)
        )
    )
    for table in tables:
        conn.execute(
            sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
                sql.Identifier(build.live, table), retired
            )
        )
        conn.execute(
            sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
                sql.Identifier(build.shadow, table), sql.Identifier(build.live)
            )
        )
    conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(retired))
    conn.execute(
        """
        UPDATE projection_checkpoints
           SET transaction_id = %s::text::xid8, position = %s, applied = %s, updated_at = now()
         WHERE projection = %s
        """,
        (str(build.checkpoint.transaction_id), build.checkpoint.position, build.applied, name),
    )
    # What the rebuild applied is in the new view: its dead letters are settled.
    conn.execute(
        """
        UPDATE dead_letters SET resolution = 'rebuilt', resolved_at = now()
         WHERE projection = %s AND (resolution IS NULL OR resolution = 'skipped')
           AND position <> ALL (%s)
        """,
        (name, [event.position for event, _ in build.parked]),
    )
    for event, error in build.parked:
        conn.execute(
            """
            INSERT INTO dead_letters (projection, position, event_id, type, error, attempts)
            VALUES (%s, %s, %s, %s, %s, 1)
            ON CONFLICT (projection, position) DO UPDATE
               SET error = excluded.error, attempts = dead_letters.attempts + 1,
                   resolution = NULL, resolved_at = NULL
             WHERE dead_letters.resolution IS DISTINCT FROM 'skipped'
            """,
            (name, event.position, event.event_id, event.type, f"{type(error).__name__}: {error}"),
        )
