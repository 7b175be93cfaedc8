"""Personal data: the data keys it is encrypted under, and the secret behind the keys.

Revision ID: 0008_privacy
Revises: 0007_access_log
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0008_privacy"
down_revision = "0007_access_log"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(r"""
-- The secret the data keys are wrapped with and identities are tokenised with. secret is
-- NULL when it is configured outside the database (INTERACTION_STORE_PRIVACY_KEY); the
-- fingerprint tells a wrong configured secret from the right one.
CREATE TABLE privacy_secret (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    secret      bytea,
    fingerprint bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One AES-256 key per owner (a customer or a contact, as a keyed token) and scope:
-- 'identity' (addresses and names) or '<channel>/<yyyy-mm>' (the content of that
-- channel's interactions of that month, so retention can shred a month at a time).
-- Shredding sets key to NULL: what it encrypted can no longer be read, and the next
-- event of that owner and scope gets a new key.
CREATE TABLE data_keys (
    key_id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner        bytea       NOT NULL,
    scope        text        NOT NULL,
    channel      text,
    period       date,
    key          bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    shredded_at  timestamptz,
    shred_reason text,
    CHECK ((key IS NULL) = (shredded_at IS NOT NULL))
);
CREATE UNIQUE INDEX data_keys_live ON data_keys (owner, scope) WHERE shredded_at IS NULL;
CREATE INDEX data_keys_owner ON data_keys (owner);
CREATE INDEX data_keys_expiring ON data_keys (channel, period) WHERE shredded_at IS NULL;

-- Called by each append that encrypts: takes, shared, the advisory lock that shredding
-- takes exclusively (so each waits for the other), then refuses (ISC02) if one of the
-- keys was shredded since the appender fetched it, so an event is never written under a
-- key that is already gone. An advisory lock, not one on data_keys: an appender still
-- makes new keys while an erasure waits for it. ids is empty for appends of customer
-- events that seal nothing (a merge): they take the lock all the same, since whom an
-- erasure erases depends on them; NULL for appends that need no lock.
CREATE FUNCTION data_keys_live(ids bigint[]) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    gone bigint[];
BEGIN
    IF ids IS NULL THEN
        RETURN true;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(4936157270312945623);
    SELECT array_agg(key_id) INTO gone
      FROM data_keys WHERE key_id = ANY (ids) AND key IS NULL;
    IF gone IS NOT NULL THEN
        RAISE EXCEPTION 'data keys % were shredded', gone
              USING ERRCODE = 'ISC02', DETAIL = array_to_string(gone, ',');
    END IF;
    RETURN true;
END
$fn$;

-- The identity graph is keyed by each contact's token, which its events carry whether
-- or not its address can still be read: attribution never depends on a key. The address
-- stays beside it for display and lookups. The views are emptied for the projections to
-- rebuild them from the log with tokens.
TRUNCATE identities, customer_merges, timeline, customer_profiles, conversations,
         conversation_waits;
DELETE FROM projection_checkpoints;
ALTER TABLE identities DROP CONSTRAINT identities_pkey;
ALTER TABLE identities ADD COLUMN token text NOT NULL;
ALTER TABLE identities ADD PRIMARY KEY (kind, token);
ALTER TABLE identities ADD CONSTRAINT identities_address UNIQUE (kind, value);
ALTER TABLE timeline ADD COLUMN contact_token text NOT NULL;
DROP INDEX timeline_contact;
CREATE INDEX timeline_contact ON timeline (contact_kind, contact_token)
    WHERE NOT named_customer;
""")


def downgrade() -> None:
    op.execute("""
TRUNCATE identities, customer_merges, timeline, customer_profiles, conversations,
         conversation_waits;
DELETE FROM projection_checkpoints;
DROP INDEX timeline_contact;
ALTER TABLE timeline DROP COLUMN contact_token;
CREATE INDEX timeline_contact ON timeline (contact_kind, contact_value)
    WHERE NOT named_customer;
ALTER TABLE identities DROP CONSTRAINT identities_address;
ALTER TABLE identities DROP CONSTRAINT identities_pkey;
ALTER TABLE identities DROP COLUMN token;
ALTER TABLE identities ADD PRIMARY KEY (kind, value);
DROP FUNCTION data_keys_live(bigint[]);
DROP TABLE data_keys;
DROP TABLE privacy_secret;
""")
