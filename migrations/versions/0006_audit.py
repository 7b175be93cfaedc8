"""Tamper evidence for the whole log: the leaves of a Merkle tree over the events in
gap-safe order, and the signed checkpoints (tree size, root hash, time, Ed25519
signature) a sealer adds as the tree grows.

Revision ID: 0006_audit
Revises: 0005_connector_state
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0006_audit"
down_revision = "0005_connector_state"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(r"""
-- Leaf i of the tree is the i-th event in gap-safe order ((transaction_id, position)),
-- hashed as RFC 6962 leaves are: SHA-256(0x00 || the event's hash).
CREATE TABLE audit_leaves (
    leaf_index  bigint      PRIMARY KEY,
    position    bigint      NOT NULL UNIQUE,
    leaf_hash   bytea       NOT NULL
);

-- A checkpoint signs (tree_size, root_hash, sealed_at). frontier holds the roots of the
-- tree's perfect subtrees, from which the next seal extends the tree; last_read is the
-- log checkpoint (transaction_id:position) of its last leaf.
CREATE TABLE audit_checkpoints (
    checkpoint_id   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tree_size       bigint      NOT NULL UNIQUE CHECK (tree_size > 0),
    root_hash       bytea       NOT NULL,
    frontier        bytea[]     NOT NULL,
    last_read       text        NOT NULL,
    sealed_at       timestamptz NOT NULL,
    key_id          text        NOT NULL,
    signature       bytea       NOT NULL
);
""")


def downgrade() -> None:
    op.execute("DROP TABLE audit_checkpoints; DROP TABLE audit_leaves;")
