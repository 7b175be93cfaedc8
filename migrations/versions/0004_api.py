"""The HTTP API: API keys (stored as hashes, each with its scopes) and idempotency keys.

Revision ID: 0004_api
Revises: 0003_customers_conversations
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0004_api"
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

-- Idempotency-Key: the first request with a key stores its answer; a retry with the same
-- key and payload gets that answer again. status is NULL while the first is in flight.
CREATE TABLE idempotency_keys (
    key_id          text        NOT NULL,
    idempotency_key text        NOT NULL,
    fingerprint     bytea       NOT NULL,
    status          integer,
    body            bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, idempotency_key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
""")


def downgrade() -> None:
    op.execute("DROP TABLE idempotency_keys; DROP TABLE api_keys;")
