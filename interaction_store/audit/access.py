"""The access log: who read which customer, when, through which endpoint.

The API records each read of a customer's timeline, summary, context or export. So that
the hot reads pay no extra round trip, entries are buffered in memory and written
together (one COPY) every ``interval`` seconds by a thread of their own, and whenever
the log is queried; a server that is killed outright can lose the last interval's
entries (a clean stop writes them).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from interaction_store.keys import ApiKey
from interaction_store.views import FAMILY

__all__ = ["Access", "AccessLog", "accesses"]

log = logging.getLogger(__name__)

_COPY = "COPY access_log (read_at, key_id, key_name, customer_id, endpoint) FROM STDIN"


@dataclass(frozen=True, slots=True)
class Access:
    access_id: int
    read_at: datetime
    key_id: str
    key_name: str
    customer_id: str
    endpoint: str


class AccessLog:
    """Buffers access entries and writes them in the background."""

    def __init__(self, pool: ConnectionPool[Any], *, interval: float = 0.2) -> None:
        self.pool = pool
        self.interval = interval
        self._pending: list[tuple[datetime, str, str, str, str]] = []
        self._lock = threading.Lock()
        self._writing = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, key: ApiKey, customer_id: str, endpoint: str) -> None:
        entry = (datetime.now(UTC), key.key_id, key.name, customer_id, endpoint)
        with self._lock:
            self._pending.append(entry)

    def flush(self) -> int:
        """Write what is buffered now; how many entries were written."""
        with self._writing:  # entries are written in the order they were recorded
            with self._lock:
                entries, self._pending = self._pending, []
            if not entries:
                return 0
            try:
                with (
                    self.pool.connection() as conn,
                    conn.cursor() as cursor,
                    cursor.copy(_COPY) as copy,
                ):
                    for entry in entries:
                        copy.write_row(entry)
            except Exception:
                with self._lock:  # kept for the next attempt, ahead of newer entries
                    self._pending[:0] = entries
                raise
            return len(entries)

    def start(self) -> None:
        def run() -> None:
            while not self._stop.wait(self.interval):
                try:
                    self.flush()
                except Exception:
                    log.exception("writing the access log failed; retrying")

        self._thread = threading.Thread(target=run, name="access-log", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()


def accesses(
    conn: psycopg.Connection[Any], customer_id: str, *, after: int = 0, limit: int = 100
) -> list[Access]:
    """The reads of a customer, oldest first, including reads made under the ids of
    customers merged into it."""
    rows = conn.execute(
        FAMILY
        + """
        SELECT access_id, read_at, key_id, key_name, customer_id, endpoint
          FROM access_log
         WHERE customer_id IN (SELECT id FROM family UNION SELECT %(customer)s)
           AND access_id > %(after)s
         ORDER BY access_id
         LIMIT %(limit)s
        """,
        {"customer": customer_id, "after": after, "limit": limit},
    ).fetchall()
    return [Access(*row) for row in rows]
