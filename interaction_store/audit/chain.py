"""The per-stream hash chain: what each event's hash covers, and how to check it.

Every event stores two digests of what was appended:

    content_digest = SHA-256(canonical JSON of {id, stream_id, type, schema_version,
                                                occurred_at, data})
    hash           = SHA-256(prev_hash ‖ content_digest ‖ SHA-256(canonical JSON of metadata)
                             ‖ int64be(stream_version) ‖ int64be(recorded_at in µs since 1970))

where canonical JSON is UTF-8 with sorted keys and no spaces (orjson ``OPT_SORT_KEYS``),
``occurred_at`` is written ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC, and the first event of a
stream has 32 zero bytes as ``prev_hash``. The content digest, computed by the appender, is
also the idempotency fingerprint: metadata (a retry's correlation id, say) may differ
between two deliveries of the same event without a conflict. The chain link is computed by
the append statement in the append transaction (``sql/queries.sql``), where the stream's
head is read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import orjson

__all__ = [
    "ZERO_HASH",
    "ChainBreak",
    "ChainReport",
    "ChainRow",
    "canonical_json",
    "content_digest",
    "content_digest_of",
    "format_time",
    "link_hash",
    "link_hash_of",
    "metadata_digest",
    "verify_chain",
]

ZERO_HASH = bytes(32)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def canonical_json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def format_time(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC (years 1000-9999, which timestamps here are)."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def content_digest(
    *,
    event_id: UUID,
    stream_id: str,
    type: str,
    schema_version: int,
    occurred_at: datetime,
    data: Mapping[str, Any] | orjson.Fragment,
) -> bytes:
    """The digest of an event's content. ``data`` may come already serialised as canonical
    JSON (an ``orjson.Fragment``), which spares serialising a large payload twice."""
    return content_digest_of(
        str(event_id), stream_id, type, schema_version, format_time(occurred_at), data
    )


def content_digest_of(
    event_id: str,
    stream_id: str,
    type: str,
    schema_version: int,
    occurred_at: str,
    data: Mapping[str, Any] | orjson.Fragment,
) -> bytes:
    """``content_digest`` from the id and the time already written as text (as a
    verifier reads them from the database, ``occurred_at`` as ``format_time`` writes it)."""
    document = {
        "data": data,
        "id": event_id,
        "occurred_at": occurred_at,
        "schema_version": schema_version,
        "stream_id": stream_id,
        "type": type,
    }
    return hashlib.sha256(canonical_json(document)).digest()


def metadata_digest(metadata: Mapping[str, Any] | orjson.Fragment) -> bytes:
    return hashlib.sha256(canonical_json(metadata)).digest()


def link_hash(
    prev_hash: bytes,
    content: bytes,
    metadata: bytes,
    stream_version: int,
    recorded_at: datetime,
) -> bytes:
    return link_hash_of(
        prev_hash,
        content,
        metadata,
        stream_version,
        (recorded_at - _EPOCH) // timedelta(microseconds=1),
    )


def link_hash_of(
    prev_hash: bytes, content: bytes, metadata: bytes, stream_version: int, micros: int
) -> bytes:
    """``link_hash`` with ``recorded_at`` given as microseconds since 1970 (UTC)."""
    return hashlib.sha256(
        prev_hash
        + content
        + metadata
        + stream_version.to_bytes(8, "big", signed=True)
        + micros.to_bytes(8, "big", signed=True)
    ).digest()


@dataclass(frozen=True, slots=True)
class ChainRow:
    """One stored event as the chain sees it: the columns, exactly as stored."""

    position: int
    event_id: UUID
    stream_id: str
    stream_version: int
    type: str
    schema_version: int
    occurred_at: datetime
    recorded_at: datetime
    data: Mapping[str, Any]
    metadata: Mapping[str, Any]
    content_digest: bytes
    hash: bytes
    prev_hash: bytes


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first place a stream's chain does not hold, and what differs there."""

    stream_id: str
    stream_version: int
    position: int
    reason: str


@dataclass(frozen=True, slots=True)
class ChainReport:
    stream_id: str
    checked: int
    head_hash: bytes
    broken: ChainBreak | None

    @property
    def ok(self) -> bool:
        return self.broken is None


def verify_chain(stream_id: str, rows: Iterable[ChainRow]) -> ChainReport:
    """Recompute a stream's chain from its rows (in stream order) and report the first break.

    A removed tail cannot show here: the rows that remain still chain. The log-wide
    checkpoints are what cover the newest events.
    """
    prev = ZERO_HASH
    expected_version = 1
    checked = 0

    def broken(row: ChainRow, version: int, reason: str) -> ChainReport:
        return ChainReport(
            stream_id, checked, prev, ChainBreak(stream_id, version, row.position, reason)
        )

    for row in rows:
        if row.stream_version != expected_version:
            return broken(row, expected_version, f"version {expected_version} is missing")
        if row.prev_hash != prev:
            return broken(row, row.stream_version, "prev_hash is not the previous event's hash")
        digest = content_digest(
            event_id=row.event_id,
            stream_id=row.stream_id,
            type=row.type,
            schema_version=row.schema_version,
            occurred_at=row.occurred_at,
            data=row.data,
        )
        if digest != row.content_digest:
            return broken(row, row.stream_version, "content differs from its digest")
        link = link_hash(
            prev, digest, metadata_digest(row.metadata), row.stream_version, row.recorded_at
        )
        if link != row.hash:
            return broken(
                row, row.stream_version, "hash does not match the event and its predecessor"
            )
        prev = link
        expected_version += 1
        checked += 1
    return ChainReport(stream_id, checked, prev, None)
