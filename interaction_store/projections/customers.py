"""The customers projection: profile facts (name, tier, account value, churn risk).

Everything else the customers view shows (identities, counts per channel, open
conversations, preferred agent, priority) is read from the identity graph, the timeline
and the conversations when asked, so it always follows the latest links and merges.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import psycopg

from interaction_store.store import RecordedEvent

__all__ = ["CustomersProjection"]

_PROFILE_FIELDS = ("name", "tier", "account_value", "churn_risk")


class CustomersProjection:
    """Maintains ``customer_profiles``."""

    name = "customers"
    tables: tuple[str, ...] = ("customer_profiles",)

    def apply(self, conn: psycopg.Connection[Any], events: Sequence[RecordedEvent]) -> None:
        run: list[RecordedEvent] = []
        for event in events:
            if event.type in ("customer.registered", "customer.profile_updated"):
                run.append(event)
            elif event.type == "customer.erased":
                _profiles(conn, run)
                run = []
                _erase(conn, event)
        _profiles(conn, run)


def _erase(conn: psycopg.Connection[Any], event: RecordedEvent) -> None:
    """An erased customer's profile keeps only that it was erased; the customers merged
    into it lose theirs. (A customer without a profile, such as a contact's provisional
    customer, is simply unknown afterwards; its address starts afresh if it writes again.)"""
    data = event.data
    conn.execute(
        """
        UPDATE customer_profiles
           SET name = NULL, tier = NULL, account_value = NULL, churn_risk = NULL,
               registered_at = NULL, erased_at = %(at)s, updated_at = %(at)s,
               position = %(position)s
         WHERE customer_id = %(c)s
        """,
        {"c": data["customer_id"], "at": event.occurred_at, "position": event.position},
    )
    merged = data.get("merged_customer_ids") or []
    if merged:
        conn.execute("DELETE FROM customer_profiles WHERE customer_id = ANY(%s)", (merged,))


def _profiles(conn: psycopg.Connection[Any], events: Sequence[RecordedEvent]) -> None:
    """Insert the profiles, or update the facts the events give (absent or null: kept).

    A run's events are first folded per customer, in order, so one statement writes them.
    """
    if not events:
        return
    folded: dict[str, dict[str, Any]] = {}
    for event in events:
        data = event.data
        row = folded.setdefault(
            data["customer_id"],
            {"customer_id": data["customer_id"], "registered_at": None}
            | dict.fromkeys(_PROFILE_FIELDS),
        )
        for field in _PROFILE_FIELDS:
            if data.get(field) is not None:
                row[field] = data[field]
        if event.type == "customer.registered" and row["registered_at"] is None:
            row["registered_at"] = event.occurred_at
        row["updated_at"], row["position"] = event.occurred_at, event.position
    conn.execute(
        """
        INSERT INTO customer_profiles AS p (customer_id, name, tier, account_value, churn_risk,
                                            registered_at, updated_at, position)
        SELECT customer_id, name, tier, account_value, churn_risk, registered_at, updated_at,
               position
          FROM jsonb_to_recordset(%s::jsonb) AS r(
                   customer_id text, name text, tier text, account_value double precision,
                   churn_risk double precision, registered_at timestamptz,
                   updated_at timestamptz, position bigint)
        ON CONFLICT (customer_id) DO UPDATE
           SET name = coalesce(excluded.name, p.name),
               tier = coalesce(excluded.tier, p.tier),
               account_value = coalesce(excluded.account_value, p.account_value),
               churn_risk = coalesce(excluded.churn_risk, p.churn_risk),
               registered_at = coalesce(p.registered_at, excluded.registered_at),
               -- registered again after an erasure: a new customer under the old id
               erased_at = CASE WHEN excluded.registered_at IS NULL THEN p.erased_at END,
               updated_at = excluded.updated_at,
               position = excluded.position
        """,
        (orjson.dumps(list(folded.values())).decode(),),
    )
