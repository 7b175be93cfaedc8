"""Point-in-time reads: the views as they stood when the log ended at a position.

``as_of(conn, position, customer_id)`` opens a transaction in which temporary tables
named as the views (``identities``, ``customer_merges``, ``timeline``,
``customer_profiles``, ``conversations``, ``conversation_waits``) hold them as of that
position. PostgreSQL looks up temporary tables first, so ``views.timeline``,
``views.customer`` and the rest read the past unchanged. They are built, not stored:

1. The identity graph and the profiles are replayed from the customer events up to the
   position (registrations, links, unlinks, merges, unmerges, profile updates, erasures),
   through the projections' own code, with each contact's first sight (which gave it a
   provisional customer) in its place in the log. A merge made later does not show.
2. The customer's interactions up to the position are the live timeline's rows, each
   given its owner and customer again from that graph.
3. The customer's conversations are replayed from their events up to the position.

The cost grows with the number of customer events up to the position (and with the
customer's own history), not with the whole log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from interaction_store.projections.conversations import ConversationsProjection
from interaction_store.projections.customers import CustomersProjection
from interaction_store.projections.rebuild import _live_schema
from interaction_store.projections.timeline import TimelineProjection, provisional_customer_id
from interaction_store.store import EVENT_COLUMNS, RecordedEvent, recorded_event

__all__ = ["as_of", "parse_as_of", "position_at"]

_TABLES = (
    "identities",
    "customer_merges",
    "timeline",
    "customer_profiles",
    "conversations",
    "conversation_waits",
)
_COLUMNS = EVENT_COLUMNS


def position_at(conn: psycopg.Connection[Any], moment: datetime) -> int:
    """The last position recorded at or before ``moment`` (0: none was)."""
    row = conn.execute(
        "SELECT coalesce(max(position), 0) FROM events WHERE recorded_at <= %s", (moment,)
    ).fetchone()
    return int(row[0]) if row else 0


def parse_as_of(conn: psycopg.Connection[Any], text: str) -> int:
    """The position an ``as_of`` names: digits are a position (one the log has reached),
    anything else an ISO 8601 date-time with its offset. ``ValueError`` says why not."""
    if text.isdigit():
        position = int(text)
        row = conn.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()
        if row is None or position > int(row[0]):
            raise ValueError(f"no event has position {position} yet")
        return position
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("must be a position or an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        raise ValueError("a date-time needs its UTC offset")
    return position_at(conn, moment)


@contextlib.contextmanager
def as_of(
    conn: psycopg.Connection[Any], position: int, customer_id: str | None = None
) -> Iterator[None]:
    """Within the block, the views on ``conn`` are as they were at ``position``. With
    ``customer_id``, only that customer's rows are rebuilt (the rest of the timeline and
    the other customers' conversations are left out); without it, every row is."""
    with conn.transaction():
        live = _live_schema(conn, _TABLES)
        for table in _TABLES:
            conn.execute(
                sql.SQL(
                    "CREATE TEMPORARY TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING"
                    " CONSTRAINTS INCLUDING INDEXES) ON COMMIT DROP"
                ).format(sql.Identifier(table), sql.Identifier(live, table))
            )
        _graph(conn, live, position)
        _timeline(conn, live, position, customer_id)
        if customer_id is not None:
            _conversations(conn, position)
        try:
            yield
        finally:
            # Gone at commit (or rollback) anyway; dropped now in case the caller's own
            # transaction goes on, so that its later reads see the live views again.
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
                for table in _TABLES:
                    conn.execute(
                        sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(sql.Identifier(table))
                    )


def _graph(conn: psycopg.Connection[Any], live: str, position: int) -> None:
    """Replay the customer events up to ``position``, each contact's first sight in its
    place."""
    sights = conn.execute(
        sql.SQL(
            "SELECT min(position), contact_kind, contact_value FROM {} WHERE NOT named_customer"
            " AND position <= %s GROUP BY contact_kind, contact_value"
        ).format(sql.Identifier(live, "timeline")),
        (position,),
    ).fetchall()
    events = _events(
        conn,
        "SELECT " + _COLUMNS + " FROM events WHERE type LIKE 'customer.%%' AND position <= %s"
        " ORDER BY transaction_id, position",
        (position,),
    )
    timeline, customers = TimelineProjection(), CustomersProjection()
    sights.sort()
    run: list[RecordedEvent] = []
    seen = 0
    for event in events:
        first = seen
        while seen < len(sights) and sights[seen][0] < event.position:
            seen += 1
        if seen > first:
            _apply(conn, run, timeline, customers)
            run = []
            _first_seen(conn, sights[first:seen])
        run.append(event)
    _apply(conn, run, timeline, customers)
    _first_seen(conn, sights[seen:])


def _apply(
    conn: psycopg.Connection[Any],
    events: list[RecordedEvent],
    timeline: TimelineProjection,
    customers: CustomersProjection,
) -> None:
    if events:
        timeline.apply(conn, events)
        customers.apply(conn, events)


def _first_seen(conn: psycopg.Connection[Any], sights: Sequence[tuple[Any, ...]]) -> None:
    if not sights:
        return
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO identities (kind, value, customer_id, confidence, reason, position)"
            " VALUES (%s, %s, %s, 'provisional', 'first seen', %s)"
            " ON CONFLICT (kind, value) DO NOTHING",
            [(kind, value, provisional_customer_id(kind, value), p) for p, kind, value in sights],
        )


def _timeline(
    conn: psycopg.Connection[Any], live: str, position: int, customer_id: str | None
) -> None:
    """The live rows up to ``position``, with owners and customers from the past graph."""
    source = sql.Identifier(live, "timeline")
    if customer_id is None:
        conn.execute(
            sql.SQL("INSERT INTO timeline SELECT * FROM {} WHERE position <= %s").format(source),
            (position,),
        )
    else:
        conn.execute(
            sql.SQL(
                """
                WITH RECURSIVE family(id) AS (
                    SELECT resolve_customer(%(customer)s)
                    UNION
                    SELECT m.source_customer_id FROM customer_merges AS m
                      JOIN family AS f ON m.target_customer_id = f.id
                )
                INSERT INTO timeline
                SELECT t.* FROM {} AS t
                 WHERE t.position <= %(position)s
                   AND (t.named_customer AND t.owner_id IN (SELECT id FROM family)
                        OR NOT t.named_customer AND (t.contact_kind, t.contact_value) IN (
                            SELECT kind, value FROM identities
                             WHERE customer_id IN (SELECT id FROM family)))
                """
            ).format(source),
            {"customer": customer_id, "position": position},
        )
    conn.execute(
        """
        UPDATE timeline AS t SET owner_id = i.customer_id
          FROM identities AS i
         WHERE NOT t.named_customer AND i.kind = t.contact_kind AND i.value = t.contact_value
        """
    )
    conn.execute("UPDATE timeline SET customer_id = resolve_customer(owner_id)")


def _conversations(conn: psycopg.Connection[Any], position: int) -> None:
    streams = [
        f"conversation-{row[0]}"
        for row in conn.execute("SELECT DISTINCT conversation_id FROM timeline").fetchall()
    ]
    events = _events(
        conn,
        "SELECT " + _COLUMNS + " FROM events WHERE stream_id = ANY(%s) AND position <= %s"
        " ORDER BY transaction_id, position",
        (streams, position),
    )
    if events:
        ConversationsProjection().apply(conn, events)


def _events(conn: psycopg.Connection[Any], statement: str, params: Any) -> list[RecordedEvent]:
    return [recorded_event(row) for row in conn.execute(statement, params).fetchall()]
