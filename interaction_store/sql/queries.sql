-- Named queries of the store, loaded once by interaction_store.sql.load_queries().
-- Each query starts with a "-- name: <name> --" line.

-- name: append_events --
-- A whole batch, across streams, in one statement: read each stream's head (its newest
-- event), extend the hash chains (append_chain), insert. A concurrent append that wrote
-- the same stream version or event id first makes this fail with a unique violation;
-- the store then resolves the idempotent case or retries against the new head. An
-- erasure that shredded one of the batch's data keys first makes it fail (ISC02).
-- The events come as one JSON array of rows, [id, stream index, type, schema version,
-- occurred_at, content digest (hex), metadata digest (hex), data, metadata]: one
-- parameter the client writes in C, where a dozen arrays cost a Python call per element.
WITH batch AS MATERIALIZED (
    SELECT b.ord, (b.r->>0)::uuid AS event_id, (b.r->>1)::integer AS stream_index,
           b.r->>2 AS type, (b.r->>3)::integer AS schema_version,
           (b.r->>4)::timestamptz AS occurred_at, decode(b.r->>5, 'hex') AS content_digest,
           decode(b.r->>6, 'hex') AS metadata_digest, b.r->7 AS payload, b.r->8 AS metadata
      FROM jsonb_array_elements(%(events)s::jsonb) WITH ORDINALITY AS b(r, ord)
),
heads AS (
    SELECT array_agg(coalesce(h.stream_version, 0) ORDER BY s.ord) AS versions,
           array_agg(coalesce(h.hash, decode(repeat('00', 32), 'hex')) ORDER BY s.ord) AS hashes
      FROM unnest(%(streams)s::text[]) WITH ORDINALITY AS s(stream_id, ord)
      LEFT JOIN LATERAL (
          SELECT e.stream_version, e.hash
            FROM events AS e
           WHERE e.stream_id = s.stream_id
           ORDER BY e.stream_version DESC
           LIMIT 1
      ) AS h ON true
),
chain AS (
    SELECT c.versions, c.prev_hashes, c.hashes
      FROM heads,
           (SELECT data_keys_live(%(keys)s::bigint[])) AS live,
           append_chain(heads.versions, heads.hashes, %(expected)s::bigint[],
                        %(streams)s::text[],
                        (SELECT array_agg(stream_index ORDER BY ord) FROM batch),
                        (SELECT array_agg(content_digest ORDER BY ord) FROM batch),
                        (SELECT array_agg(metadata_digest ORDER BY ord) FROM batch),
                        (extract(epoch FROM now()) * 1000000)::bigint) AS c
)
INSERT INTO events (transaction_id, event_id, stream_id, stream_version, type, schema_version,
                    occurred_at, recorded_at, payload, metadata, content_digest, hash, prev_hash)
SELECT pg_current_xact_id(), b.event_id, (%(streams)s::text[])[b.stream_index], l.version,
       b.type, b.schema_version, b.occurred_at, now(), b.payload, b.metadata,
       b.content_digest, l.hash, l.prev
  FROM chain,
       unnest(chain.versions, chain.prev_hashes, chain.hashes)
           WITH ORDINALITY AS l(version, prev, hash, ord)
  JOIN batch AS b ON b.ord = l.ord
 ORDER BY b.ord
RETURNING event_id, position, stream_version

-- name: append_event --
-- append_events for a single event, with plain parameters (cheaper to send than arrays):
-- the chain link is one expression, with no function call on the way but the check
-- that the data keys its personal fields are sealed under still exist (data_keys_live).
INSERT INTO events (transaction_id, event_id, stream_id, stream_version, type, schema_version,
                    occurred_at, recorded_at, payload, metadata, content_digest, hash, prev_hash)
SELECT pg_current_xact_id(), %(event_id)s, %(stream_id)s,
       CASE WHEN %(expected)s::bigint IS NOT NULL
                 AND coalesce(h.stream_version, 0) <> greatest(%(expected)s::bigint, 0)
            THEN append_refused(%(stream_id)s, %(expected)s::bigint, coalesce(h.stream_version, 0))
            ELSE coalesce(h.stream_version, 0) + 1 END,
       %(type)s, %(schema_version)s, %(occurred_at)s, now(), %(payload)s::jsonb,
       %(metadata)s::jsonb, %(content_digest)s,
       sha256(coalesce(h.hash, decode(repeat('00', 32), 'hex')) || %(content_digest)s
              || %(metadata_digest)s || int8send(coalesce(h.stream_version, 0) + 1)
              || int8send((extract(epoch FROM now()) * 1000000)::bigint)),
       coalesce(h.hash, decode(repeat('00', 32), 'hex'))
  FROM (SELECT data_keys_live(%(keys)s::bigint[])) AS live
  LEFT JOIN LATERAL (
      SELECT e.stream_version, e.hash
        FROM events AS e
       WHERE e.stream_id = %(stream_id)s
       ORDER BY e.stream_version DESC
       LIMIT 1
  ) AS h ON true
RETURNING event_id, position, stream_version

-- name: new_keys --
-- A common table expression that append_events and append_event take first when the
-- append made data keys of its own (privacy.FreshKeys): it inserts them, ids and all, in
-- the append's statement, so they commit with the events sealed under them. Another
-- append's live key for the same owner and scope makes it fail with a unique violation.
-- The rows come sorted by owner and scope, so two appends that make some of the same keys
-- take them in one order.
new_keys AS (
    INSERT INTO data_keys (key_id, owner, scope, channel, period, key)
    OVERRIDING SYSTEM VALUE
    SELECT k.key_id, decode(k.owner, 'hex'), k.scope, k.channel, k.period, decode(k.key, 'hex')
      FROM jsonb_to_recordset(%(new_keys)s::jsonb)
           AS k(key_id bigint, owner text, scope text, channel text, period date, key text)
     -- the shredding lock first, whatever order PostgreSQL runs the statement's parts in
     WHERE (SELECT data_keys_live('{}'))
)

-- name: stored_events --
-- The events of a batch that are already stored: the idempotency check after a collision.
-- shredded: whether a key its personal fields were sealed under is gone (erasure or
-- retention), so that its content can no longer be compared; sealed: whether it was
-- stored sealed at all.
SELECT e.event_id, e.position, e.stream_id, e.stream_version, e.content_digest,
       EXISTS (SELECT FROM data_keys AS k
                WHERE k.key IS NULL
                  AND k.key_id IN ((e.payload->'sealed'->'identity'->>'key')::bigint,
                                   (e.payload->'sealed'->'content'->>'period_key')::bigint))
           AS shredded,
       e.payload ? 'sealed' AS sealed
  FROM events AS e
 WHERE e.event_id = ANY (%(event_ids)b::uuid[])

-- name: read_stream --
SELECT position, transaction_id::text AS txid, event_id, stream_id, stream_version, type,
       schema_version, occurred_at, recorded_at, payload, metadata, content_digest,
       hash, prev_hash
  FROM events
 WHERE stream_id = %(stream_id)s AND stream_version >= %(from_version)s
 ORDER BY stream_version
 LIMIT %(limit)s

-- name: read_all --
-- Gap-safe: only transactions older than every running one of this database are read
-- (events_horizon, migration 0014), in commit-safe
-- (transaction_id, position) order, so an event whose transaction commits late is never
-- passed over.
SELECT position, transaction_id::text AS txid, event_id, stream_id, stream_version, type,
       schema_version, occurred_at, recorded_at, payload, metadata, content_digest,
       hash, prev_hash
  FROM events
 WHERE (transaction_id, position) > (%(transaction_id)s::text::xid8, %(position)s::bigint)
   AND transaction_id < (SELECT events_horizon(pg_current_snapshot()))
   AND (%(types)s::text[] IS NULL OR type = ANY (%(types)s::text[]))
 -- qualified: the xid8 column's own order, never that of a text rendering of it
 ORDER BY events.transaction_id, events.position
 LIMIT %(limit)s

-- name: head --
SELECT coalesce(max(position), 0) FROM events

-- name: checkpoint_at --
-- Only once gap-safe readers can reach it: a checkpoint past a still-running transaction
-- would skip that transaction's events when it commits.
SELECT transaction_id::text AS txid, position
  FROM events
 WHERE position = %(position)s
   AND transaction_id < (SELECT events_horizon(pg_current_snapshot()))

-- name: readable --
-- Is the event at this position visible to gap-safe readers yet?
SELECT transaction_id < events_horizon(pg_current_snapshot())
  FROM events WHERE position = %(position)s

-- name: stream_version --
SELECT coalesce(max(stream_version), 0) FROM events WHERE stream_id = %(stream_id)s

-- name: notify --
SELECT pg_notify(%(channel)s, %(payload)s)

-- name: read_event --
SELECT position, transaction_id::text AS txid, event_id, stream_id, stream_version, type,
       schema_version, occurred_at, recorded_at, payload, metadata, content_digest,
       hash, prev_hash
  FROM events
 WHERE position = %(position)s
