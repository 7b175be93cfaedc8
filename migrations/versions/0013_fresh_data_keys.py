"""Appends make their new data keys in their own statement: ids come from the sequence
beforehand, and the check of the keys an append seals under refuses an id with no key.

Revision ID: 0013_fresh_data_keys
Revises: 0012_timeline_by_time
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0013_fresh_data_keys"
down_revision = "0012_timeline_by_time"
branch_labels = None
depends_on = None


# data_keys_live as in 0008_privacy, but for the query that finds the ids refused.
_DATA_KEYS_LIVE = """
CREATE OR REPLACE FUNCTION data_keys_live(ids bigint[]) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    gone bigint[];
BEGIN
    IF ids IS NULL THEN
        RETURN true;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(4936157270312945623);
    {gone}
    IF gone IS NOT NULL THEN
        RAISE EXCEPTION 'data keys % were shredded', gone
              USING ERRCODE = 'ISC02', DETAIL = array_to_string(gone, ',');
    END IF;
    RETURN true;
END
$fn$;
"""


def upgrade() -> None:
    # An id with no row at all counts as gone too: a key an appender reserved an id for
    # and made, but whose append rolled back, must never seal an event.
    op.execute(
        _DATA_KEYS_LIVE.format(
            gone="""SELECT array_agg(i.key_id) INTO gone
      FROM unnest(ids) AS i(key_id)
     WHERE NOT EXISTS (SELECT FROM data_keys AS k
                        WHERE k.key_id = i.key_id AND k.key IS NOT NULL);"""
        )
    )


def downgrade() -> None:
    op.execute(
        _DATA_KEYS_LIVE.format(
            gone="""SELECT array_agg(key_id) INTO gone
      FROM data_keys WHERE key_id = ANY (ids) AND key IS NULL;"""
        )
    )
