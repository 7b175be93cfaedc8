"""Gap-safe readers wait only for writing transactions of their own database.

Readers read below the oldest transaction still running, so that one committing late is
never passed over. ``pg_snapshot_xmin`` gives that for the whole server: a long writing
transaction in any other database on it held every reader of the log back until it
ended. ``events_horizon(snapshot)`` leaves out the transactions that
``pg_stat_activity`` (and ``pg_prepared_xacts``) show in another database; one it cannot
place counts as this database's.

Revision ID: 0014_events_horizon
Revises: 0013_fresh_data_keys
Create Date: 2026-12-08
"""

from __future__ import annotations

from alembic import op

revision = "0014_events_horizon"
down_revision = "0013_fresh_data_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(r"""
-- The transaction id below which the log reads without gaps, for a statement whose
-- snapshot is given (pass pg_current_snapshot()): the oldest transaction in progress in
-- it, leaving out those shown running in another database, else its xmax. Safe because
-- only a transaction named as another database's is left out, and none of this one is:
-- a 32-bit backend_xid names one transaction of a snapshot unambiguously (they span less
-- than 2^31), and a backend stays in its database. One that ended meanwhile, or cannot
-- be placed, still counts, as before. Two kinds of snapshot hold running transactions
-- that their xip list does not show, and then the snapshot's xmin is kept, as before: a
-- hot standby's (which lists them all as subtransactions) and that of a transaction that
-- has written (whose own id is left out); and no transaction reads its own uncommitted
-- events.
CREATE FUNCTION events_horizon(snapshot pg_snapshot) RETURNS xid8
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED AS $fn$
DECLARE
    oldest xid8;
    horizon xid8;
BEGIN
    SELECT min(x) INTO oldest FROM pg_snapshot_xip(snapshot) AS x;
    IF pg_snapshot_xmin(snapshot) < coalesce(oldest, pg_snapshot_xmax(snapshot)) THEN
        RETURN pg_snapshot_xmin(snapshot);
    END IF;
    PERFORM pg_stat_clear_snapshot();  -- else a transaction reads pg_stat_activity once
    SELECT min(x) INTO horizon
      FROM pg_snapshot_xip(snapshot) AS x
     WHERE x::xid NOT IN (SELECT a.backend_xid FROM pg_stat_activity AS a
                           WHERE a.backend_xid IS NOT NULL
                             AND a.datname <> current_database()
                          UNION ALL
                          SELECT p.transaction FROM pg_prepared_xacts AS p
                           WHERE p.database <> current_database());
    RETURN least(coalesce(horizon, pg_snapshot_xmax(snapshot)),
                 pg_current_xact_id_if_assigned());
END
$fn$;
""")


def downgrade() -> None:
    op.execute("DROP FUNCTION events_horizon(pg_snapshot)")
