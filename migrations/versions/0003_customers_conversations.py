"""The customers and conversations views.

Revision ID: 0003_customers_conversations
Revises: 0002_projections
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0003_customers_conversations"
down_revision = "0002_projections"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(r"""
-- A rebuild that applies a parked event settles its dead letter as 'rebuilt'.
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_resolution_check,
    ADD CONSTRAINT dead_letters_resolution_check
        CHECK (resolution IN ('retried', 'skipped', 'rebuilt'));

-- Profile facts of registered customers (projection "customers"). Keyed by the id the
-- customer was registered under; a merged customer keeps its row and reads through to
-- its target's.
CREATE TABLE customer_profiles (
    customer_id     text        PRIMARY KEY,
    name            text,
    tier            text,
    account_value   double precision,
    churn_risk      double precision,
    registered_at   timestamptz,
    updated_at      timestamptz NOT NULL,
    erased_at       timestamptz,
    position        bigint      NOT NULL
);

-- One row per conversation (projection "conversations"). case_id groups conversations
-- joined by conversation.linked: the smallest conversation id of the group.
CREATE TABLE conversations (
    conversation_id text        PRIMARY KEY,
    case_id         text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('open', 'resolved')),
    channels        text[]      NOT NULL DEFAULT '{}',
    interactions    integer     NOT NULL DEFAULT 0,
    opened_at       timestamptz,
    last_activity_at timestamptz,
    resolved_at     timestamptz,
    position        bigint      NOT NULL
);
CREATE INDEX conversations_case ON conversations (case_id);

-- Each time a conversation waited for an answer: from an inbound interaction that needs
-- one until the first response in its case (an outbound, an answered call, resolution).
-- Due times and breaches are computed when read, from the service-level policy then in
-- force, so changing the policy needs no rebuild.
CREATE TABLE conversation_waits (
    conversation_id text        NOT NULL,
    started_position bigint     NOT NULL,
    started_at      timestamptz NOT NULL,
    channel         text        NOT NULL,
    ended_position  bigint,
    ended_at        timestamptz,
    ended_by        text        CHECK (ended_by IN ('response', 'resolved', 'chat ended')),
    PRIMARY KEY (conversation_id, started_position)
);
CREATE INDEX conversation_waits_open ON conversation_waits (conversation_id)
    WHERE ended_position IS NULL;

-- Lookups by conversation for the customers and conversations read queries; no query
-- looks rows up by owner, and every index costs each insert.
CREATE INDEX timeline_conversation ON timeline (conversation_id, position);
DROP INDEX timeline_owner;
-- Only rows that name no customer are ever re-attributed by their contact.
DROP INDEX timeline_contact;
CREATE INDEX timeline_contact ON timeline (contact_kind, contact_value)
    WHERE NOT named_customer;
""")


def downgrade() -> None:
    op.execute("""
DROP INDEX timeline_contact;
CREATE INDEX timeline_contact ON timeline (contact_kind, contact_value);
CREATE INDEX timeline_owner ON timeline (owner_id);
DROP INDEX timeline_conversation;
DROP TABLE conversation_waits;
DROP TABLE conversations;
DROP TABLE customer_profiles;
UPDATE dead_letters SET resolution = 'retried' WHERE resolution = 'rebuilt';
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_resolution_check,
    ADD CONSTRAINT dead_letters_resolution_check CHECK (resolution IN ('retried', 'skipped'));
""")
