"""What the connectors' feeds look up or remember between deliveries, in PostgreSQL.

The mappings in ``interaction_store.connectors`` are pure; the little state a feed needs
lives here: the SMS session of a pair of numbers, the thread of a post being replied to,
the owner of a contact, and (for the IMAP poller) each folder's cursor.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg

from interaction_store.privacy import Keyring
from interaction_store.projections.timeline import provisional_customer_id
from interaction_store.views import lookup_read

__all__ = [
    "is_stored",
    "owner_of",
    "sms_session",
    "stored_thread",
]


def is_stored(conn: psycopg.Connection[Any], event_id: UUID) -> bool:
    return (
        conn.execute("SELECT FROM events WHERE event_id = %s", (event_id,)).fetchone() is not None
    )


def sms_session(conn: psycopg.Connection[Any], pair: str, at: datetime, gap: timedelta) -> str:
    """The thread key of the conversation an SMS of ``pair`` at ``at`` belongs to: the
    pair's current one, or a new one when the last message is more than ``gap`` old.

    One statement, so concurrent deliveries of one pair agree on the session.
    """
    row = conn.execute(
        """
        INSERT INTO sms_sessions AS s (pair, started_at, last_at)
        VALUES (%(pair)s, %(at)s, %(at)s)
        ON CONFLICT (pair) DO UPDATE
           SET started_at = CASE WHEN excluded.last_at - s.last_at > %(gap)s
                                 THEN excluded.started_at ELSE s.started_at END,
               last_at = greatest(s.last_at, excluded.last_at)
        RETURNING started_at
        """,
        {"pair": pair, "at": at, "gap": gap},
    ).fetchone()
    assert row is not None
    started: datetime = row[0]
    return f"{pair}|{started.strftime('%Y%m%dT%H%M%SZ')}"


def stored_thread(conn: psycopg.Connection[Any], event_ids: Iterable[UUID]) -> str | None:
    """The thread key of the first of these events that is stored."""
    row = conn.execute(
        "SELECT payload->>'thread_key' FROM events WHERE event_id = ANY(%s)"
        " ORDER BY position LIMIT 1",
        (list(event_ids),),
    ).fetchone()
    return None if row is None else row[0]


def owner_of(
    conn: psycopg.Connection[Any], contact: str, keyring: Keyring, *, phone_region: str = "US"
) -> str:
    """The customer a contact belongs to now (merges followed), or the provisional customer
    it gets when no one claims it. ``contact`` is ``kind:value``; ``ValueError`` if it is
    malformed. ``keyring`` (the store's) gives the contact's token."""
    read = lookup_read(contact, phone_region=phone_region)
    owner = read.run(conn)
    if owner is not None:
        return owner
    kind, value = read.params["kind"], read.params["value"]
    return provisional_customer_id(kind, keyring.contact_token(kind, value))
