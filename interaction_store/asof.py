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

from interaction_store.privacy import Sealer
from interaction_store.projections.conversations import ConversationsProjection
from interaction_store.projections.customers import CustomersProjection
from interaction_store.projections.rebuild import _live_schema
from interaction_store.projections.timeline import (
    READABLE_AGAIN,
    TimelineProjection,
    provisional_customer_id,
)
from interaction_store.store import EVENT_COLUMNS, RecordedEvent, recorded_events
from interaction_store.views import FAMILY

__all__ = ["as_of", "parse_as_of", "position_at", "recorded_at"]

_TABLES = (
    "identities",
    "customer_merges",
    "timeline",
    "customer_profiles",
    "conversations",
    "conversation_waits",
)
_COLUMNS = EVENT_COLUMNS


def recorded_at(conn: psycopg.Connection[Any], position: int) -> datetime | None:
    """When the event at ``position`` (or the last one before it) was recorded."""
    row = conn.execute(
        "SELECT recorded_at FROM events WHERE position <= %s ORDER BY position DESC LIMIT 1",
        (position,),
    ).fetchone()
    return None if row is None else row[0]


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
    conn: psycopg.Connection[Any],
    position: int,
    customer_id: str | None = None,
    *,
    sealer: Sealer,
) -> Iterator[None]:
    """Within the block, the views on ``conn`` are as they were at ``position``. With
    ``customer_id``, only that customer's rows are rebuilt (the rest of the timeline and
    the other customers' conversations are left out); without it, every row is.
    ``sealer`` (the store's) opens the personal fields of the events replayed.

    A customer erased since reads as it does now, at any time: looking back does not undo
    an erasure.
    """
    if customer_id is not None and _erased(conn, customer_id):
        yield
        return
    with conn.transaction():
        live = _live_schema(conn, _TABLES)
        for table in _TABLES:
            conn.execute(
                sql.SQL(
                    "CREATE TEMPORARY TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING"
                    " CONSTRAINTS INCLUDING INDEXES) ON COMMIT DROP"
                ).format(sql.Identifier(table), sql.Identifier(live, table))
            )
        # Cached plans (psycopg's prepared statements, resolve_customer's) still point at
        # the live tables: a new temporary table does not invalidate them. Plan afresh.
        conn.execute("DISCARD PLANS")
        _graph(conn, live, position, sealer)
        _timeline(conn, live, position, customer_id)
        if customer_id is not None:
            _conversations(conn, position, sealer)
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


def _erased(conn: psycopg.Connection[Any], customer_id: str) -> bool:
    """Whether the customer was erased, itself or as one merged into the erased one (the
    erasure purged that merge, so the customer no longer resolves to its target)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM events WHERE type = 'customer.erased' AND (stream_id IN"
        " ('customer-' || %(c)s, 'customer-' || resolve_customer(%(c)s))"
        " OR payload->'merged_customer_ids' ? %(c)s))",
        {"c": customer_id},
    ).fetchone()
    return bool(row and row[0])


#: Where the log ends for the read: at the position, whatever the commit order. A
#: transaction can hold a position below one committed before it (an append spanning
#: another's), so the cut is by position, and what is below it is applied in the order
#: the views apply it (``transaction_id, position``): at the head, that is the live views.
_UPTO = "e.position <= %(position)s::bigint"


def _graph(conn: psycopg.Connection[Any], live: str, position: int, sealer: Sealer) -> None:
    """Replay the customer events up to ``position``, each contact's first sight in its
    place."""
    bounds = {"position": position}
    sights = conn.execute(
        sql.SQL(
            "SELECT min(t.position), t.contact_kind, t.contact_token,"
            " coalesce(min(t.contact_value) FILTER (WHERE t.contact_value NOT LIKE"
            " 'erased-%%'), min(t.contact_value))"
            " FROM {} AS t JOIN events AS e ON e.position = t.position"
            " WHERE NOT t.named_customer AND " + _UPTO + " GROUP BY t.contact_kind, t.contact_token"
        ).format(sql.Identifier(live, "timeline")),
        bounds,
    ).fetchall()
    events = _events(
        conn,
        "SELECT "
        + _COLUMNS
        + " FROM events AS e WHERE type LIKE 'customer.%%' AND "
        + _UPTO
        + " ORDER BY transaction_id, position",
        bounds,
        sealer,
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
    """Apply a run to each projection as a rebuild does: an event one of them cannot
    apply (a merge that would make a cycle, which the projector parked as a dead letter)
    is passed over by that one."""
    if not events:
        return
    for projection in (timeline, customers):
        try:
            with conn.transaction():  # a savepoint
                projection.apply(conn, events)
        except Exception:
            for event in events:  # the event at fault, found and passed over
                with contextlib.suppress(Exception), conn.transaction():
                    projection.apply(conn, [event])


def _first_seen(conn: psycopg.Connection[Any], sights: Sequence[tuple[Any, ...]]) -> None:
    if not sights:
        return
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO identities AS i (kind, token, value, customer_id, home, confidence,"
            " reason, position) VALUES (%s, %s, %s, %s, %s, 'provisional', 'first seen', %s)"
            " ON CONFLICT (kind, token) DO UPDATE SET value = excluded.value WHERE "
            + READABLE_AGAIN,
            [
                (kind, token, value, home, home, p)
                for p, kind, token, value in sights
                for home in [provisional_customer_id(kind, token)]
            ],
        )


def _timeline(
    conn: psycopg.Connection[Any], live: str, position: int, customer_id: str | None
) -> None:
    """The live rows up to ``position``, with owners and customers from the past graph."""
    source = sql.Identifier(live, "timeline")
    bounds = {"position": position, "customer": customer_id}
    if customer_id is None:
        conn.execute(
            sql.SQL(
                "INSERT INTO timeline SELECT t.* FROM {} AS t"
                " JOIN events AS e ON e.position = t.position WHERE " + _UPTO
            ).format(source),
            bounds,
        )
    else:
        conn.execute(
            sql.SQL(
                FAMILY
                + """
                INSERT INTO timeline
                SELECT t.* FROM {} AS t JOIN events AS e ON e.position = t.position
                 WHERE """
                + _UPTO
                + """
                   AND (t.named_customer AND t.owner_id IN (SELECT id FROM family)
                        OR NOT t.named_customer AND (t.contact_kind, t.contact_token) IN (
                            SELECT kind, token FROM identities
                             WHERE customer_id IN (SELECT id FROM family)))
                """
            ).format(source),
            bounds,
        )
    conn.execute(
        """
        UPDATE timeline AS t SET owner_id = i.customer_id
          FROM identities AS i
         WHERE NOT t.named_customer AND i.kind = t.contact_kind AND i.token = t.contact_token
        """
    )
    conn.execute("UPDATE timeline SET customer_id = resolve_customer(owner_id)")


def _conversations(conn: psycopg.Connection[Any], position: int, sealer: Sealer) -> None:
    streams = [
        f"conversation-{row[0]}"
        for row in conn.execute("SELECT DISTINCT conversation_id FROM timeline").fetchall()
    ]
    events = _events(
        conn,
        "SELECT "
        + _COLUMNS
        + " FROM events AS e WHERE stream_id = ANY(%(streams)s) AND "
        + _UPTO
        + " ORDER BY transaction_id, position",
        {"streams": streams, "position": position},
        sealer,
    )
    if events:
        ConversationsProjection().apply(conn, events)


def _events(
    conn: psycopg.Connection[Any], statement: str, params: Any, sealer: Sealer
) -> list[RecordedEvent]:
    return recorded_events(conn, conn.execute(statement, params).fetchall(), sealer)
