"""API keys: stored as hashes, each with its scopes.

Revision ID: 0004_api_keys
Revises: 0003_customers_conversations
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0004_api_keys"
down_revision = "0003_customers_conversations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(r"""
-- A key is "isk_<key_id>_<secret>"; only the SHA-256 of the whole key is kept.
CREATE TABLE api_keys (
    key_id          text        PRIMARY KEY,
    name            text        NOT NULL,
    key_hash        bytea       NOT NULL,
    scopes          text[]      NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    CHECK (scopes <@ ARRAY['events:append', 'timeline:read', 'audit:read', 'admin'])
);
""")


def downgrade() -> None:
    op.execute("DROP TABLE api_keys;")
