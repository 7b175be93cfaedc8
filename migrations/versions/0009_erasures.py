"""Erasures, indexed: a point-in-time read asks whether its customer was erased since.

Revision ID: 0009_erasures
Revises: 0008_privacy
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0009_erasures"
down_revision = "0008_privacy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
-- customer.erased events are few, and name the customers merged into the erased one in
-- their data: an as_of read of any of them finds the erasure here without a scan.
CREATE INDEX events_erasures ON events (position) WHERE type = 'customer.erased';
""")


def downgrade() -> None:
    op.execute("DROP INDEX events_erasures;")
