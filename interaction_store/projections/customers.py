"""The customers projection: profile facts (name, tier, account value, churn risk).

Everything else the customers view shows (identities, counts per channel, open
conversations, preferred agent, priority) is read from the identity graph, the timeline
and the conversations when asked, so it always follows the latest links and merges.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from interaction_store.store import RecordedEvent

__all__ = ["CustomersProjection"]

_PROFILE_FIELDS = ("name", "tier", "account_value", "churn_risk")


class CustomersProjection:
    """Maintains ``customer_profiles``."""

    name = "customers"
    tables: tuple[str, ...] = ("customer_profiles",)

    def apply(self, conn: psycopg.Connection[Any], events: Sequence[RecordedEvent]) -> None:
        for event in events:
            if event.type in ("customer.registered", "customer.profile_updated"):
                _profile(conn, event)
            elif event.type == "customer.erased":
                conn.execute(
                    """
                    UPDATE customer_profiles
                       SET name = NULL, erased_at = %s, updated_at = %s, position = %s
                     WHERE customer_id = %s
                    """,
                    (
                        event.occurred_at,
                        event.occurred_at,
                        event.position,
                        event.data["customer_id"],
                    ),
                )


def _profile(conn: psycopg.Connection[Any], event: RecordedEvent) -> None:
    """Insert the profile, or update the facts the event gives (absent or null: kept)."""
    data = event.data
    facts = [data.get(field) for field in _PROFILE_FIELDS]
    registered = event.occurred_at if event.type == "customer.registered" else None
    conn.execute(
        """
        INSERT INTO customer_profiles (customer_id, name, tier, account_value, churn_risk,
                                       registered_at, updated_at, position)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (customer_id) DO UPDATE
           SET name = coalesce(excluded.name, customer_profiles.name),
               tier = coalesce(excluded.tier, customer_profiles.tier),
               account_value = coalesce(excluded.account_value, customer_profiles.account_value),
               churn_risk = coalesce(excluded.churn_risk, customer_profiles.churn_risk),
               registered_at = coalesce(customer_profiles.registered_at, excluded.registered_at),
               updated_at = excluded.updated_at,
               position = excluded.position
        """,
        (data["customer_id"], *facts, registered, event.occurred_at, event.position),
    )
