"""The event log: the events table, the hash-chain function and the append-only guard.

Revision ID: 0001_events
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0001_events"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(r"""
CREATE TABLE events (
    position        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- the appending transaction: readers follow (transaction_id, position) below the
    -- oldest running transaction, so a late commit is never skipped
    transaction_id  xid8        NOT NULL,
    event_id        uuid        NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL,
    type            text        NOT NULL,
    schema_version  integer     NOT NULL,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    content_digest  bytea       NOT NULL,
    hash            bytea       NOT NULL,
    prev_hash       bytea       NOT NULL,
    -- the idempotency key
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    -- the optimistic-concurrency guard: two appends that read the same stream head
    -- cannot both write its next version; the loser retries against the new head
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version),
    CONSTRAINT events_stream_version_positive CHECK (stream_version > 0)
);

CREATE INDEX events_commit_order ON events (transaction_id, position);

COMMENT ON TABLE events IS
    'The append-only log of interaction-store. Rows are only ever inserted.';

CREATE FUNCTION events_are_append_only() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'the event log is append-only: % on events is refused', TG_OP
        USING ERRCODE = 'ISA01';
END
$fn$;

CREATE TRIGGER events_no_update_or_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_append_only();

-- Refuses an append whose stream is not at the expected version: always raises SQLSTATE
-- ISC01 with a JSON DETAIL of stream_id, expected (-1: no stream) and actual. Its bigint
-- result type only lets it stand where a version is computed.
CREATE FUNCTION append_refused(stream_id text, expected bigint, actual bigint) RETURNS bigint
LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'stream % is at version %, expected %', stream_id, actual,
            CASE WHEN expected = -1 THEN 'no stream' ELSE expected::text END
        USING ERRCODE = 'ISC01',
              DETAIL = json_build_object('stream_id', stream_id, 'expected', expected,
                                         'actual', actual)::text;
END
$fn$;

-- The versions and hash chain of a batch, in batch order, from each stream's head.
--
-- Per stream k (1-based): head_versions[k], head_hashes[k], and expected[k] (NULL: any
-- version; -1: the stream must not exist; n: exactly n). Per event i: stream_index[i] and
-- its digests. A stream not at its expected version is refused (append_refused).
-- No SQL runs in here: it is arithmetic only.
CREATE FUNCTION append_chain(
    head_versions    bigint[],
    head_hashes      bytea[],
    expected         bigint[],
    streams          text[],
    stream_index     integer[],
    content_digests  bytea[],
    metadata_digests bytea[],
    recorded_us      bigint,
    OUT versions     bigint[],
    OUT prev_hashes  bytea[],
    OUT hashes       bytea[]
)
LANGUAGE plpgsql AS $fn$
DECLARE
    v        bigint[] := head_versions;
    h        bytea[] := head_hashes;
    touched  boolean[] := array_fill(false, ARRAY[cardinality(streams)]);
    k        integer;
BEGIN
    versions := '{}';
    prev_hashes := '{}';
    hashes := '{}';
    FOR i IN 1 .. coalesce(cardinality(stream_index), 0) LOOP
        k := stream_index[i];
        IF NOT touched[k] THEN
            touched[k] := true;
            IF expected[k] IS NOT NULL AND v[k] <> greatest(expected[k], 0) THEN
                PERFORM append_refused(streams[k], expected[k], v[k]);
            END IF;
        END IF;
        prev_hashes[i] := h[k];
        v[k] := v[k] + 1;
        h[k] := sha256(h[k] || content_digests[i] || metadata_digests[i]
                       || int8send(v[k]) || int8send(recorded_us));
        versions[i] := v[k];
        hashes[i] := h[k];
    END LOOP;
END
$fn$;
""")


def downgrade() -> None:
    op.execute("""
DROP FUNCTION append_chain(bigint[], bytea[], bigint[], text[], integer[], bytea[], bytea[], bigint);
DROP FUNCTION append_refused(text, bigint, bigint);
DROP TABLE events;
DROP FUNCTION events_are_append_only();
""")
