"""Projections: checkpoints, dead letters, the identity graph and the timeline view.

Revision ID: 0002_projections
Revises: 0001_events
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0002_projections"
down_revision = "0001_events"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(r"""
-- Where each projection stands in the log; advanced in the same transaction as its rows.
CREATE TABLE projection_checkpoints (
    projection      text        PRIMARY KEY,
    transaction_id  xid8        NOT NULL DEFAULT '0',
    position        bigint      NOT NULL DEFAULT 0,
    applied         bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Events a projection could not apply after its retries: parked, visible, retryable.
CREATE TABLE dead_letters (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projection      text        NOT NULL,
    position        bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    type            text        NOT NULL,
    error           text        NOT NULL,
    attempts        integer     NOT NULL,
    parked_at       timestamptz NOT NULL DEFAULT now(),
    resolution      text        CHECK (resolution IN ('retried', 'skipped')),
    resolved_at     timestamptz,
    UNIQUE (projection, position)
);

-- The identity graph: which customer each contact belongs to. A contact no customer
-- claims belongs to a provisional customer of its own (confidence 'provisional').
CREATE TABLE identities (
    kind            text        NOT NULL,
    value           text        NOT NULL,
    customer_id     text        NOT NULL,
    confidence      text        NOT NULL
                    CHECK (confidence IN ('verified', 'probable', 'provisional')),
    reason          text        NOT NULL DEFAULT '',
    source          text,
    position        bigint      NOT NULL,
    PRIMARY KEY (kind, value)
);
CREATE INDEX identities_customer ON identities (customer_id);

-- Active merges: source_customer_id is an alias of target_customer_id until unmerged.
CREATE TABLE customer_merges (
    source_customer_id text     PRIMARY KEY,
    target_customer_id text     NOT NULL,
    position        bigint      NOT NULL
);
CREATE INDEX customer_merges_target ON customer_merges (target_customer_id);

-- The customer a customer id stands for now: merges followed to their end.
CREATE FUNCTION resolve_customer(customer text) RETURNS text
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    target text;
BEGIN
    FOR hop IN 1 .. 100 LOOP
        SELECT m.target_customer_id INTO target
          FROM customer_merges AS m WHERE m.source_customer_id = customer;
        IF NOT FOUND THEN
            RETURN customer;
        END IF;
        customer := target;
    END LOOP;
    RAISE EXCEPTION 'merge chain from % is longer than 100 hops', customer;
END
$fn$;

-- One row per interaction. owner_id is the customer the interaction belongs to before
-- merges (named in the event, or its contact's customer); customer_id follows merges.
-- Both are recomputed when links and merges change, so unmerging restores every row.
CREATE TABLE timeline (
    position        bigint      PRIMARY KEY,
    event_id        uuid        NOT NULL,
    owner_id        text        NOT NULL,
    named_customer  boolean     NOT NULL,
    customer_id     text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    channel         text        NOT NULL,
    direction       text        NOT NULL,
    type            text        NOT NULL,
    conversation_id text        NOT NULL,
    agent_id        text,
    contact_kind    text        NOT NULL,
    contact_value   text        NOT NULL,
    subject         text,
    snippet         text        NOT NULL
);
CREATE INDEX timeline_customer ON timeline (customer_id, position DESC);
CREATE INDEX timeline_owner ON timeline (owner_id);
CREATE INDEX timeline_contact ON timeline (contact_kind, contact_value);
""")


def downgrade() -> None:
    op.execute("""
DROP TABLE timeline;
DROP FUNCTION resolve_customer(text);
DROP TABLE customer_merges;
DROP TABLE identities;
DROP TABLE dead_letters;
DROP TABLE projection_checkpoints;
""")
