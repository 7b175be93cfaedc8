"""Erasure and retention: destroying data keys, so what they sealed can never be read.

The log is never rewritten. ``erase`` destroys every key of a customer (and of the
customers merged into it, and of their contacts) and appends ``customer.erased``, in one
transaction; the projections then purge the person's rows from the views. ``apply_retention``
destroys the keys of each channel's months that are older than its period (every
interaction's content key is derived from its owner's key and its month's), and
writes the views' subjects and snippets again from what can still be read.

Both take a lock on ``data_keys`` that appends sealing personal data also take, so no
event is written under a key that is already destroyed (see ``data_keys_live``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from interaction_store import views
from interaction_store.privacy import PERIOD_OWNER
from interaction_store.projections.timeline import refresh_content
from interaction_store.store import EVENT_COLUMNS, Store

__all__ = ["Erasure", "RetentionReport", "apply_retention", "erase"]


@dataclass(frozen=True, slots=True)
class Erasure:
    customer_id: str
    merged_customer_ids: list[str]
    contacts: int  # the contacts whose keys were destroyed
    keys_shredded: int
    position: int  # of the customer.erased event


def erase(store: Store, customer_id: str, *, reason: str = "", actor: str | None = None) -> Erasure:
    """Erase a customer (an alias stands for the customer it was merged into).

    ``LookupError`` for an unknown customer, with nothing written. Returns once the keys
    are destroyed and ``customer.erased`` is in the log; the views are purged when the
    projections reach it.
    """
    with store.transaction() as tx:
        conn = tx.connection
        found = views.find_customer_read(customer_id).run(conn)
        if found is None:
            raise LookupError(f"no customer {customer_id}")
        family = [
            row[0]
            for row in conn.execute(views.FAMILY + "SELECT id FROM family", {"customer": found})
        ]
        merged = sorted(c for c in family if c != found)
        contacts = conn.execute(
            "SELECT kind, value FROM identities WHERE customer_id = ANY(%s)", (family,)
        ).fetchall()
        keyring = store.sealer.keyring(conn)
        owners = [keyring.token(f"customer:{c}") for c in family]
        owners += [keyring.token(f"{kind}:{value}") for kind, value in contacts]
        # Appends that seal hold ROW EXCLUSIVE on data_keys until they commit: wait for
        # them, and keep new ones out until the keys are gone.
        conn.execute("LOCK TABLE data_keys IN SHARE ROW EXCLUSIVE MODE")
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
                            {"kind": kind, "token": keyring.token(f"{kind}:{value}").hex()}
                            for kind, value in contacts
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

    Before rewriting rows, waits up to ``wait`` seconds for the projections to pass the
    log's head, so that no batch they read before the keys went writes content after.
    """
    now = now or datetime.now(UTC)
    report = RetentionReport(dry_run=dry_run)
    shredded: dict[str, list[int]] = {}
    with store.pool.connection() as conn, conn.transaction():
        if not dry_run:
            conn.execute("LOCK TABLE data_keys IN SHARE ROW EXCLUSIVE MODE")
        for channel, period in sorted(periods.items()):
            cutoff = now - period
            item = ChannelRetention(channel, period, cutoff)
            report.channels.append(item)
            expiring = """
                FROM data_keys
               WHERE owner = %(owner)s AND channel = %(channel)s AND shredded_at IS NULL
                 AND (period + interval '1 month') <= %(cutoff)s
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
            if ids:
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
    report.projections_caught_up = _wait_for_projections(store, wait)
    for item in report.channels:
        if shredded[item.channel]:
            item.rows_redacted = _redact(store, shredded[item.channel])
    return report


def _wait_for_projections(store: Store, wait: float) -> bool:
    head = store.head()
    deadline = time.monotonic() + wait
    while True:
        with store.pool.connection() as conn:
            row = conn.execute(
                "SELECT coalesce(min(position), 0) FROM projection_checkpoints"
                " WHERE projection = 'timeline'"
            ).fetchone()
        if row is None or row[0] >= head:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _redact(store: Store, key_ids: list[int], batch: int = 2000) -> int:
    """Write the timeline rows of the events sealed under ``key_ids`` again."""
    changed = 0
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
                return changed
            with conn.transaction():
                changed += refresh_content(conn, store.recorded(conn, rows))
            after = rows[-1][0]
