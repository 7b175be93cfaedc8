"""Each contact's own provisional customer beside its owner, so that a link to a claimed
contact's provisional customer follows the contact to its claimer.

Revision ID: 0010_contact_homes
Revises: 0009_erasures
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0010_contact_homes"
down_revision = "0009_erasures"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
-- home: the contact's provisional customer (derived from its kind and token, in Python),
-- whoever owns the contact now. The views are emptied for the projections to build them
-- again with it.
TRUNCATE identities, customer_merges, timeline, customer_profiles, conversations,
         conversation_waits;
DELETE FROM projection_checkpoints;
ALTER TABLE identities ADD COLUMN home text NOT NULL;
CREATE INDEX identities_home ON identities (home);
""")


def downgrade() -> None:
    op.execute("""
DROP INDEX identities_home;
ALTER TABLE identities DROP COLUMN home;
""")
