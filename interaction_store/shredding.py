"""Erasure and retention: destroying data keys, so what they sealed can never be read.

The log is never rewritten. ``erase`` destroys every key of a customer (and of the
customers merged into it, and of their contacts) and appends ``customer.erased``, in one
transaction; the projections then purge the person's rows from the views. ``apply_retention``
destroys the keys of each channel's months that are older than its period (every
interaction's content key is derived from its owner's key and its month's), and
writes the views' subjects and snippets again from what can still be read.

Both take, exclusively, an advisory lock that appends sealing personal data take shared,
so no event is written under a key that is already destroyed (see ``data_keys_live``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from interaction_store import views
from interaction_store.exceptions import DatabaseError
from interaction_store.privacy import PERIOD_OWNER, PLACEHOLDER, RETENTION_LOCK, SHREDDING_LOCK
from interaction_store.projections.timeline import provisional_customer_id, refresh_content
from interaction_store.store import EVENT_COLUMNS, Store

__all__ = [
    "ChannelRetention",
    "Erasure",
    "RetentionReport",
    "ViewsBehind",
    "apply_retention",
    "erase",
    "views_behind",
]


@dataclass(frozen=True, slots=True)
class Erasure:
    customer_id: str
    merged_customer_ids: list[str]
    contacts: int  # the contacts whose keys were destroyed
    keys_shredded: int
    position: int  # of the customer.erased event


class ViewsBehind(DatabaseError):
    """The views are behind the log; an erasure needs them up to date to know whom it
    erases. Run the projections (or wait for them) and try again."""


#: The projections whose views say who a customer is: its merges, contacts and profile.
_IDENTITY_VIEWS = ("timeline", "customers")


def views_behind(conn: psycopg.Connection[Any]) -> bool:
    """Whether an event has committed that the identity views have not applied yet
    (including one the projections cannot read yet, for a transaction still open that
    began before it)."""
    row = conn.execute(
        """
        SELECT EXISTS (
            SELECT FROM unnest(%(names)s::text[]) AS p(name)
              LEFT JOIN projection_checkpoints AS c ON c.projection = p.name
             WHERE EXISTS (
                   SELECT FROM events AS e
                    WHERE (e.transaction_id, e.position)
                          > (coalesce(c.transaction_id, '0'), coalesce(c.position, 0))))
        """,
        {"names": list(_IDENTITY_VIEWS)},
    ).fetchone()
    return bool(row and row[0])


def erase(
    store: Store,
    customer_id: str,
    *,
    reason: str = "",
    actor: str | None = None,
    wait: float = 10.0,
) -> Erasure:
    """Erase a customer (an alias stands for the customer it was merged into).

    ``LookupError`` for an unknown customer, with nothing written. Whom to erase (the
    customers merged in, the contacts) is read from the views, so they must have applied
    the whole log: this waits up to ``wait`` seconds for the projections, then raises
    ``ViewsBehind``. Returns once the keys are destroyed and ``customer.erased`` is in the
    log; the views are purged when the projections reach it.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            return _erase(store, customer_id, reason, actor)
        except _Behind:
            if time.monotonic() >= deadline:
                raise ViewsBehind() from None
            time.sleep(0.05)


class _Behind(Exception):
    pass


def _erase(store: Store, customer_id: str, reason: str, actor: str | None) -> Erasure:
    with store.transaction() as tx:
        conn = tx.connection
        # Under the lock, no append that seals can commit; then the views must hold all
        # that has (an erasure that saw them behind would miss a link or a merge).
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SHREDDING_LOCK,))
        if views_behind(conn):
            raise _Behind()
        found = views.find_customer_read(customer_id).run(conn)
        if found is None:
            raise LookupError(f"no customer {customer_id}")
        family = [
            row[0]
            for row in conn.execute(views.FAMILY + "SELECT id FROM family", {"customer": found})
        ]
        merged = sorted(c for c in family if c != found)
        contacts = conn.execute(
            """
            SELECT kind, token FROM identities WHERE customer_id = ANY(%(family)s)
            UNION
            -- Contacts the customers' own events named that nobody claims now and that
            -- never wrote: they are known only from those events, which are erased.
            SELECT i.kind, i.token
              FROM events AS e
                   CROSS JOIN LATERAL jsonb_array_elements(
                       CASE WHEN e.payload ? 'contact' THEN jsonb_build_array(e.payload->'contact')
                            ELSE coalesce(e.payload->'contacts', '[]') END) AS c
                   JOIN identities AS i ON i.kind = c->>'kind' AND i.token = c->>'token'
             WHERE e.stream_id = ANY(%(streams)s) AND i.confidence = 'provisional'
               AND NOT EXISTS (SELECT FROM timeline AS t
                                WHERE NOT t.named_customer AND t.contact_kind = i.kind
                                  AND t.contact_token = i.token)
            """,
            {"family": family, "streams": [f"customer-{c}" for c in family]},
        ).fetchall()
        keyring = store.sealer.keyring(conn)
        owners = [keyring.token(f"customer:{c}") for c in family]
        owners += [bytes.fromhex(token) for _, token in contacts]
        # Events naming a contact's provisional customer (a chat visitor linked to it):
        # sealed under that customer's key.
        owners += [
            keyring.token(f"customer:{provisional_customer_id(kind, token)}")
            for kind, token in contacts
        ]
        shredded = [
            row[0]
            for row in conn.execute(
                """
                UPDATE data_keys SET key = NULL, shredded_at = now(), shred_reason = 'erasure'
                 WHERE owner = ANY(%s) AND shredded_at IS NULL
                RETURNING key_id
                """,
                (owners,),
            )
        ]
        _redact_dead_letters(conn, shredded)
        metadata: dict[str, Any] = {"connector": "erasure"}
        if actor:
            metadata["actor"] = actor
        result = tx.append(
            f"customer-{found}",
            [
                {
                    "type": "customer.erased",
                    "occurred_at": datetime.now(UTC),
                    "data": {
                        "customer_id": found,
                        "reason": reason,
                        "merged_customer_ids": merged,
                        "erased_contacts": [
                            {"kind": kind, "token": token} for kind, token in contacts
                        ],
                    },
                    "metadata": metadata,
                }
            ],
        )
    store.sealer.forget(shredded)
    return Erasure(found, merged, len(contacts), len(shredded), result.position)


@dataclass(slots=True)
class ChannelRetention:
    channel: str
    period: timedelta
    cutoff: datetime
    keys: int = 0
    events: int = 0
    rows_redacted: int = 0


@dataclass(slots=True)
class RetentionReport:
    channels: list[ChannelRetention] = field(default_factory=list)
    dry_run: bool = False
    projections_caught_up: bool = True

    @property
    def keys(self) -> int:
        return sum(c.keys for c in self.channels)

    @property
    def events(self) -> int:
        return sum(c.events for c in self.channels)


def apply_retention(
    store: Store,
    periods: Mapping[str, timedelta],
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    wait: float = 10.0,
) -> RetentionReport:
    """Destroy each channel's content keys of the months that ended more than its period
    ago (so content is kept for its period, and at most a month longer), then write the
    affected timeline rows again from the shredded log.

    Before rewriting rows, waits up to ``wait`` seconds for the views to have applied
    every committed event, so that no batch read before the keys went writes content
    after.
    """
    now = now or datetime.now(UTC)
    report = RetentionReport(dry_run=dry_run)
    shredded: dict[str, list[int]] = {}
    with store.pool.connection() as conn, conn.transaction():
        if not dry_run:
            # After any rebuild or replay under way (whose copies of the views hold what
            # these keys sealed) and before any new one; then no seal with them commits.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (RETENTION_LOCK,))
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SHREDDING_LOCK,))
        for channel, period in sorted(periods.items()):
            cutoff = now - period
            item = ChannelRetention(channel, period, cutoff)
            report.channels.append(item)
            expiring = """
                FROM data_keys
               WHERE owner = %(owner)s AND channel = %(channel)s AND shredded_at IS NULL
                 AND ((period + interval '1 month') AT TIME ZONE 'UTC') <= %(cutoff)s
            """
            params = {"owner": PERIOD_OWNER, "channel": channel, "cutoff": cutoff}
            if dry_run:
                ids = [row[0] for row in conn.execute("SELECT key_id " + expiring, params)]
            else:
                ids = [
                    row[0]
                    for row in conn.execute(
                        "UPDATE data_keys SET key = NULL, shredded_at = now(),"
                        " shred_reason = 'retention' WHERE key_id IN (SELECT key_id "
                        + expiring
                        + ") RETURNING key_id",
                        params,
                    )
                ]
            item.keys = len(ids)
            if ids and not dry_run:
                _redact_dead_letters(conn, ids)
            if ids and dry_run:  # otherwise counted as they are rewritten
                row = conn.execute(
                    "SELECT count(*) FROM events"
                    " WHERE (payload->'sealed'->'content'->>'period_key')::bigint = ANY(%s)",
                    (ids,),
                ).fetchone()
                item.events = int(row[0]) if row else 0
            shredded[channel] = ids
    if dry_run:
        return report
    store.sealer.forget(i for ids in shredded.values() for i in ids)
    report.projections_caught_up = _caught_up(store, wait)
    for item in report.channels:
        if shredded[item.channel]:
            item.events, item.rows_redacted = _redact(store, shredded[item.channel])
    return report


def _redact_dead_letters(conn: psycopg.Connection[Any], key_ids: list[int]) -> None:
    """Blank the error text of the dead letters of events sealed under ``key_ids``: a
    projection's account of failing on an event can quote what it was given. The table is
    locked against writes till the keys are gone, so that none is parked meanwhile with
    the text; one parked later is blanked as it is written (``dead_letter_redacted``)."""
    if key_ids:
        conn.execute("LOCK TABLE dead_letters IN SHARE ROW EXCLUSIVE MODE")
        conn.execute(
            """
            UPDATE dead_letters AS d SET error = %(placeholder)s
              FROM events AS e
             WHERE e.position = d.position AND d.error <> %(placeholder)s
               AND ((e.payload->'sealed'->'identity'->>'key')::bigint = ANY(%(keys)s)
                    OR (e.payload->'sealed'->'content'->>'period_key')::bigint = ANY(%(keys)s))
            """,
            {"placeholder": PLACEHOLDER, "keys": key_ids},
        )


def _caught_up(store: Store, wait: float) -> bool:
    """Whether the views applied every committed event within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        with store.pool.connection() as conn:
            if not views_behind(conn):
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _redact(store: Store, key_ids: list[int], batch: int = 2000) -> tuple[int, int]:
    """Write the timeline rows of the events sealed under ``key_ids`` again: how many
    events those are, and how many rows changed."""
    events = changed = 0
    after = 0
    with store.pool.connection() as conn:
        while True:
            rows = conn.execute(
                "SELECT " + EVENT_COLUMNS + " FROM events"
                " WHERE (payload->'sealed'->'content'->>'period_key')::bigint = ANY(%s)"
                " AND position > %s ORDER BY position LIMIT %s",
                (key_ids, after, batch),
            ).fetchall()
            if not rows:
                return events, changed
            with conn.transaction():
                changed += refresh_content(conn, store.recorded(conn, rows))
            events += len(rows)
            after = rows[-1][0]
