-- Named queries of the store, loaded once by interaction_store.sql.load_queries().
-- Each query starts with a "-- name: <name> --" line.

-- name: append_events --
-- One call appends a whole batch, across streams, atomically (see migrations/0001_events).
SELECT event_id, position, stream_version, already_present
  FROM append_events(%(streams)s::text[], %(expected)s::bigint[], %(stream_index)s::integer[],
                     %(event_streams)s::text[], %(event_ids)s::uuid[], %(types)s::text[],
                     %(schema_versions)s::integer[], %(occurred_at)s::timestamptz[],
                     %(payloads)s::text[], %(metadata)s::text[],
                     %(content_digests)s::bytea[], %(metadata_digests)s::bytea[])

-- name: read_stream --
SELECT position, transaction_id::text AS txid, event_id, stream_id, stream_version, type,
       schema_version, occurred_at, recorded_at, payload, metadata, content_digest,
       hash, prev_hash
  FROM events
 WHERE stream_id = %(stream_id)s AND stream_version >= %(from_version)s
 ORDER BY stream_version
 LIMIT %(limit)s

-- name: read_all --
-- Gap-safe: only transactions older than every running one are read, in commit-safe
-- (transaction_id, position) order, so an event whose transaction commits late is never
-- passed over.
SELECT position, transaction_id::text AS txid, event_id, stream_id, stream_version, type,
       schema_version, occurred_at, recorded_at, payload, metadata, content_digest,
       hash, prev_hash
  FROM events
 WHERE (transaction_id, position) > (%(transaction_id)s::text::xid8, %(position)s::bigint)
   AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
   AND (%(types)s::text[] IS NULL OR type = ANY (%(types)s::text[]))
 -- qualified, so rows sort by the xid8 column itself and never by a text rendering of it
 ORDER BY events.transaction_id, events.position
 LIMIT %(limit)s

-- name: head --
SELECT coalesce(max(position), 0) FROM events

-- name: checkpoint_at --
SELECT transaction_id::text AS txid, position FROM events WHERE position = %(position)s

-- name: readable --
-- Is the event at this position visible to gap-safe readers yet?
SELECT transaction_id < pg_snapshot_xmin(pg_current_snapshot())
  FROM events WHERE position = %(position)s

-- name: stream_version --
SELECT version FROM streams WHERE stream_id = %(stream_id)s

-- name: stream_head --
SELECT version, last_hash FROM streams WHERE stream_id = %(stream_id)s

-- name: notify --
SELECT pg_notify(%(channel)s, %(payload)s)
