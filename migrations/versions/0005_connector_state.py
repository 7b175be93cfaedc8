"""What the connectors remember between deliveries: SMS sessions (a pair of numbers is
split into conversations after an idle gap) and IMAP cursors (the last UID stored of each
folder, under its UIDVALIDITY).

Revision ID: 0005_connector_state
Revises: 0004_api
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0005_connector_state"
down_revision = "0004_api"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(r"""
-- The current conversation of each pair of numbers ("customer|ours"): it began at
-- started_at, and its last message was at last_at.
CREATE TABLE sms_sessions (
    pair        text        PRIMARY KEY,
    started_at  timestamptz NOT NULL,
    last_at     timestamptz NOT NULL
);

-- How far the IMAP poller has stored each folder of each mailbox. A new UIDVALIDITY
-- means the server renumbered the folder: it is read again from the start (the events'
-- ids make that store nothing twice).
CREATE TABLE imap_cursors (
    mailbox     text        NOT NULL,
    folder      text        NOT NULL,
    uidvalidity bigint      NOT NULL,
    last_uid    bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mailbox, folder)
);
""")


def downgrade() -> None:
    op.execute("DROP TABLE imap_cursors; DROP TABLE sms_sessions;")
