"""The timeline is read newest first by when each interaction happened; a reply that
happened before the message waiting does not end its wait.

Revision ID: 0012_timeline_by_time
Revises: 0011_dead_letter_redaction
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0012_timeline_by_time"
down_revision = "0011_dead_letter_redaction"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
-- Interactions reach the log late (a mailbox polled later, a backfill of last year's
-- calls): a page of the timeline goes by occurred_at, the log's order breaking ties.
DROP INDEX timeline_customer;
CREATE INDEX timeline_customer ON timeline (customer_id, occurred_at DESC, position DESC);
-- The waits are built again by the new rule: a reply that reached the log after a
-- message it happened before no longer ends that message's wait.
TRUNCATE conversations, conversation_waits;
UPDATE projection_checkpoints
   SET transaction_id = '0', position = 0, applied = 0, updated_at = now()
 WHERE projection = 'conversations';
""")


def downgrade() -> None:
    op.execute("""
DROP INDEX timeline_customer;
CREATE INDEX timeline_customer ON timeline (customer_id, position DESC);
""")
