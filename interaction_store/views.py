"""Reading the views: customer lookup and the cross-channel timeline.

Only projections write these tables; everything here reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from interaction_store.identity import normalise_contact, parse_contact_string

__all__ = ["TimelineItem", "lookup_customer", "resolve_customer", "timeline"]


@dataclass(frozen=True, slots=True)
class TimelineItem:
    position: int
    event_id: UUID
    customer_id: str
    occurred_at: datetime
    channel: str
    direction: str
    type: str
    conversation_id: str
    agent_id: str | None
    contact: str
    subject: str | None
    snippet: str


def resolve_customer(conn: psycopg.Connection[Any], customer_id: str) -> str:
    """The customer an id stands for now (a merged customer's id is an alias)."""
    row = conn.execute("SELECT resolve_customer(%s)", (customer_id,)).fetchone()
    assert row is not None
    return str(row[0])


def lookup_customer(
    conn: psycopg.Connection[Any], identity: str, *, phone_region: str = "US"
) -> str | None:
    """The customer of an identity written ``kind:value`` (normalised like appends)."""
    kind, value = parse_contact_string(identity)
    value = normalise_contact(kind, value, phone_region=phone_region)
    row = conn.execute(
        "SELECT resolve_customer(customer_id) FROM identities WHERE kind = %s AND value = %s",
        (kind, value),
    ).fetchone()
    return str(row[0]) if row else None


def timeline(
    conn: psycopg.Connection[Any],
    customer_id: str,
    *,
    limit: int = 50,
    before: int | None = None,
    channel: str | None = None,
    type: str | None = None,
    conversation_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[TimelineItem]:
    """A customer's interactions, newest first; pass the last item's position as
    ``before`` for the next page (a keyset cursor)."""
    rows = conn.execute(
        """
        SELECT position, event_id, customer_id, occurred_at, channel, direction, type,
               conversation_id, agent_id, contact_kind || ':' || contact_value, subject,
               snippet
          FROM timeline
         WHERE customer_id = resolve_customer(%(customer)s)
           AND (%(before)s::bigint IS NULL OR position < %(before)s::bigint)
           AND (%(channel)s::text IS NULL OR channel = %(channel)s::text)
           AND (%(type)s::text IS NULL OR type = %(type)s::text)
           AND (%(conversation)s::text IS NULL OR conversation_id = %(conversation)s::text)
           AND (%(since)s::timestamptz IS NULL OR occurred_at >= %(since)s::timestamptz)
           AND (%(until)s::timestamptz IS NULL OR occurred_at < %(until)s::timestamptz)
         ORDER BY position DESC
         LIMIT %(limit)s
        """,
        {
            "customer": customer_id,
            "before": before,
            "channel": channel,
            "type": type,
            "conversation": conversation_id,
            "since": since,
            "until": until,
            "limit": limit,
        },
    ).fetchall()
    return [TimelineItem(*row) for row in rows]
