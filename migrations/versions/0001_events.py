"""The event log: streams, events, the append function and the append-only guard.

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
CREATE TABLE streams (
    stream_id  text   PRIMARY KEY,
    version    bigint NOT NULL DEFAULT 0,
    -- the hash of the stream's newest event; 32 zero bytes before the first
    last_hash  bytea  NOT NULL DEFAULT decode(repeat('00', 32), 'hex')
);

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
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version),
    CONSTRAINT events_stream_version_positive CHECK (stream_version > 0)
);

CREATE INDEX events_commit_order ON events (transaction_id, position);

COMMENT ON TABLE events IS
    'The append-only log of interaction-store. Rows are only ever inserted by append_events().';

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

-- Appends a batch of events to one or more streams, atomically.
--
-- Per stream (p_streams, sorted by the caller and again here for the lock order):
--   p_expected: NULL for any version, -1 for "the stream must not exist", n for exactly n.
-- Per event: p_stream_index (1-based into p_streams), p_event_streams, and the columns.
--
-- An event whose id is already stored with the same content digest is reported with its
-- original position and written again nowhere; with a different digest the whole call
-- fails with SQLSTATE ISI01. A stream whose version is not the expected one fails the call
-- with ISC01 (DETAIL is a JSON object with stream_id, expected and actual).
CREATE FUNCTION append_events(
    p_streams          text[],
    p_expected         bigint[],
    p_stream_index     integer[],
    p_event_streams    text[],
    p_event_ids        uuid[],
    p_types            text[],
    p_schema_versions  integer[],
    p_occurred_at      timestamptz[],
    p_payloads         text[],
    p_metadata         text[],
    p_content_digests  bytea[],
    p_metadata_digests bytea[]
) RETURNS TABLE (event_id uuid, "position" bigint, stream_version bigint, already_present boolean)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    recorded       timestamptz := now();
    recorded_us    bigint := (extract(epoch FROM now()) * 1000000)::bigint;
    versions       bigint[];
    hashes         bytea[];
    touched        boolean[] := array_fill(false, ARRAY[cardinality(p_streams)]);
    old_positions  bigint[];
    old_versions   bigint[];
    conflicting    uuid;
    new_versions   bigint[] := '{}';
    new_hashes     bytea[] := '{}';
    new_prev       bytea[] := '{}';
    r              record;
    k              integer;
BEGIN
    -- 1. Lock the batch's streams in sorted order, creating the missing ones. The lock is
    --    per stream, so appenders to other streams never wait for this one.
    WITH locked AS (
        INSERT INTO streams AS s (stream_id)
        SELECT u.stream_id FROM unnest(p_streams) AS u(stream_id) ORDER BY u.stream_id
        ON CONFLICT (stream_id) DO UPDATE SET version = s.version
        RETURNING s.stream_id, s.version, s.last_hash
    )
    SELECT array_agg(l.version ORDER BY u.ord), array_agg(l.last_hash ORDER BY u.ord)
      INTO versions, hashes
      FROM unnest(p_streams) WITH ORDINALITY AS u(stream_id, ord)
      JOIN locked AS l ON l.stream_id = u.stream_id;

    -- 2. Idempotency: the events already stored. Under the stream locks, a concurrent
    --    append of the same events to the same stream has committed and is visible here.
    SELECT array_agg(e.position ORDER BY u.ord),
           array_agg(e.stream_version ORDER BY u.ord),
           (array_agg(u.id ORDER BY u.ord)
               FILTER (WHERE e.content_digest IS DISTINCT FROM u.digest AND e.event_id IS NOT NULL))[1]
      INTO old_positions, old_versions, conflicting
      FROM unnest(p_event_ids, p_content_digests) WITH ORDINALITY AS u(id, digest, ord)
      LEFT JOIN events AS e ON e.event_id = u.id;
    IF conflicting IS NOT NULL THEN
        RAISE EXCEPTION 'event % is already stored with different content', conflicting
            USING ERRCODE = 'ISI01', DETAIL = conflicting::text;
    END IF;

    -- 3. Versions and the hash chain, in batch order; the expectation is checked once per
    --    stream that receives a new event.
    FOR r IN
        SELECT u.k, u.content_digest, u.metadata_digest, u.old_position
          FROM unnest(p_stream_index, p_content_digests, p_metadata_digests, old_positions)
               WITH ORDINALITY AS u(k, content_digest, metadata_digest, old_position, ord)
         ORDER BY u.ord
    LOOP
        IF r.old_position IS NOT NULL THEN
            new_versions := new_versions || NULL::bigint;
            new_hashes := new_hashes || NULL::bytea;
            new_prev := new_prev || NULL::bytea;
            CONTINUE;
        END IF;
        k := r.k;
        IF NOT touched[k] THEN
            touched[k] := true;
            IF p_expected[k] IS NOT NULL
               AND versions[k] IS DISTINCT FROM greatest(p_expected[k], 0) THEN
                RAISE EXCEPTION 'stream % is at version %, expected %',
                        p_streams[k], versions[k],
                        CASE WHEN p_expected[k] = -1 THEN 'no stream' ELSE p_expected[k]::text END
                    USING ERRCODE = 'ISC01',
                          DETAIL = json_build_object('stream_id', p_streams[k],
                                                     'expected', p_expected[k],
                                                     'actual', versions[k])::text;
            END IF;
        END IF;
        new_prev := new_prev || hashes[k];
        versions[k] := versions[k] + 1;
        hashes[k] := sha256(hashes[k] || r.content_digest || r.metadata_digest
                            || int8send(versions[k]) || int8send(recorded_us));
        new_versions := new_versions || versions[k];
        new_hashes := new_hashes || hashes[k];
    END LOOP;

    -- 4. One set-based insert of the new events, then the streams' new heads.
    RETURN QUERY
    INSERT INTO events AS e (transaction_id, event_id, stream_id, stream_version, type,
                             schema_version, occurred_at, recorded_at, payload, metadata,
                             content_digest, hash, prev_hash)
    SELECT pg_current_xact_id(), u.id, u.stream_id, u.version, u.type, u.schema_version,
           u.occurred_at, recorded, u.payload::jsonb, u.metadata::jsonb,
           u.content_digest, u.hash, u.prev
      FROM unnest(p_event_ids, p_event_streams, p_types, p_schema_versions, p_occurred_at,
                  p_payloads, p_metadata, p_content_digests, new_versions, new_hashes, new_prev)
           WITH ORDINALITY AS u(id, stream_id, type, schema_version, occurred_at, payload,
                                metadata, content_digest, version, hash, prev, ord)
     WHERE u.version IS NOT NULL
     ORDER BY u.ord
    RETURNING e.event_id, e.position, e.stream_version, false;

    UPDATE streams AS s SET version = u.version, last_hash = u.hash
      FROM unnest(p_streams, versions, hashes, touched) AS u(stream_id, version, hash, touched)
     WHERE s.stream_id = u.stream_id AND u.touched;

    RETURN QUERY
    SELECT u.id, u.position, u.version, true
      FROM unnest(p_event_ids, old_positions, old_versions) AS u(id, position, version)
     WHERE u.position IS NOT NULL;
END
$fn$;
""")


def downgrade() -> None:
    op.execute("""
DROP FUNCTION append_events(text[], bigint[], integer[], text[], uuid[], text[], integer[],
                            timestamptz[], text[], text[], bytea[], bytea[]);
DROP TABLE events;
DROP FUNCTION events_are_append_only();
DROP TABLE streams;
""")
