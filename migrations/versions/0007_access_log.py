"""Who read which customer: one row per read of a customer's timeline, summary, context
or export, with the API key's id and name.

Revision ID: 0007_access_log
Revises: 0006_audit
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0007_access_log"
down_revision = "0006_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(r"""
CREATE TABLE access_log (
    access_id   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    read_at     timestamptz NOT NULL,
    key_id      text        NOT NULL,
    key_name    text        NOT NULL,
    customer_id text        NOT NULL,
    endpoint    text        NOT NULL
);
CREATE INDEX access_log_customer ON access_log (customer_id, access_id);
""")


def downgrade() -> None:
    op.execute("DROP TABLE access_log;")
