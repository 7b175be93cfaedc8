"""The event store: append to streams, read them back, follow the log without gaps.

    store = Store(pool)
    store.append("conversation-c-1", [event], expected_version=NO_STREAM)
    store.read_stream("conversation-c-1")
    store.read_all(after=Checkpoint.START)

An append is one SQL statement per batch: it reads each stream's head, extends the hash
chains and inserts the rows. Concurrency is optimistic: the unique key on
(stream_id, stream_version) lets only one of two racing appends write a version, and the
loser runs again against the new head; no lock is held beyond the rows written. A collision
on an event id is resolved here: the same content is an idempotent replay, other content an
``IdempotencyConflict``. Readers that follow the whole log use a ``Checkpoint`` of
(transaction id, position) and only read below the oldest running transaction, so a
transaction that commits late is never skipped.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, ClassVar, Final
from uuid import UUID

import orjson
import psycopg
from psycopg import errors as pg_errors
from psycopg import sql as pg_sql
from psycopg_pool import ConnectionPool

from interaction_store.audit.chain import (
    ChainReport,
    ChainRow,
    content_digest,
    metadata_digest,
    verify_chain,
)
from interaction_store.events import (
    CATALOGUE,
    NOT_BLANK_OR_CONTROL,
    EventBase,
    parse_events,
    stream_for,
    upcast,
    with_conversation,
)
from interaction_store.exceptions import (
    ConcurrencyError,
    DatabaseError,
    EventValidationError,
    FieldError,
    IdempotencyConflict,
)
from interaction_store.privacy import (
    FreshKeys,
    KeysShredded,
    KeysTaken,
    NewKey,
    Sealer,
    privacy_key_from_settings,
)
from interaction_store.settings import MIB, Settings
from interaction_store.sql import query

__all__ = [
    "ANY",
    "EVENT_COLUMNS",
    "NO_STREAM",
    "AppendResult",
    "AppendedEvent",
    "Checkpoint",
    "ExpectedVersion",
    "RecordedEvent",
    "Store",
    "StreamAppend",
    "StreamState",
    "Transaction",
    "recorded_events",
]

log = logging.getLogger(__name__)

_STREAM_ID_MAX = 250
_RETRIES: Final = 30
#: Events per statement when a large batch is sent while its next part is prepared.
_CHUNK: Final = 250


class StreamState(Enum):
    """Expectations about a stream that are not an exact version."""

    ANY = "any"
    NO_STREAM = "no_stream"


ANY: Final = StreamState.ANY
NO_STREAM: Final = StreamState.NO_STREAM
ExpectedVersion = StreamState | int


@dataclass(frozen=True, slots=True, order=True)
class Checkpoint:
    """Where a reader of the whole log stands: after this (transaction id, position)."""

    transaction_id: int
    position: int

    START: ClassVar[Checkpoint]

    def __str__(self) -> str:
        return f"{self.transaction_id}:{self.position}"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Read the ``transaction_id:position`` form that ``str()`` writes."""
        txid, sep, position = text.partition(":")
        if not (sep and _DIGITS.fullmatch(txid) and _DIGITS.fullmatch(position)):
            raise ValueError(f"{text!r} is not a checkpoint (transaction_id:position)")
        if int(txid) >= 2**64 or int(position) >= 2**63:
            raise ValueError(f"{text!r} is beyond any checkpoint of the log")
        return cls(int(txid), int(position))


Checkpoint.START = Checkpoint(0, 0)
_DIGITS = re.compile(r"[0-9]{1,20}")


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as stored, with ``data`` upcast to its type's current schema version."""

    position: int
    transaction_id: int
    event_id: UUID
    stream_id: str
    stream_version: int
    type: str
    schema_version: int
    occurred_at: datetime
    recorded_at: datetime
    data: dict[str, Any]
    metadata: dict[str, Any]
    hash: bytes
    prev_hash: bytes
    #: The keyed token of ``data["contact"]``, or of each of ``data["contacts"]``: what
    #: the views tell contacts apart by, readable or not (see ``privacy``).
    contact_tokens: tuple[str, ...] = ()

    @property
    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.transaction_id, self.position)

    def to_model(self) -> EventBase:
        """The event as its catalogue model (validated again)."""
        [model] = parse_events(
            [
                {
                    "id": self.event_id,
                    "type": self.type,
                    "occurred_at": self.occurred_at,
                    "data": self.data,
                    "metadata": self.metadata,
                }
            ]
        )
        return model


@dataclass(frozen=True, slots=True)
class AppendedEvent:
    event_id: UUID
    position: int
    stream_id: str
    stream_version: int
    already_present: bool


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Each event's place in the log, in the order given. Events that were already stored
    (an idempotent retry) carry their original position and ``already_present``."""

    events: tuple[AppendedEvent, ...]

    @property
    def position(self) -> int:
        """The highest position of the batch: wait for this one to read your writes."""
        return max((e.position for e in self.events), default=0)

    @property
    def appended(self) -> int:
        return sum(not e.already_present for e in self.events)

    @property
    def already_present(self) -> int:
        return sum(e.already_present for e in self.events)

    def stream_version(self, stream_id: str | None = None) -> int:
        """The stream's version after this batch (of the only stream, when not named)."""
        streams = {e.stream_id for e in self.events}
        if stream_id is None:
            if len(streams) != 1:
                raise ValueError("the batch spans several streams: name one")
            (stream_id,) = streams
        return max(e.stream_version for e in self.events if e.stream_id == stream_id)


@dataclass(frozen=True, slots=True)
class StreamAppend:
    """Part of a multi-stream append: events for one stream and what is expected of it."""

    stream_id: str
    events: Sequence[EventBase | Mapping[str, Any]]
    expected_version: ExpectedVersion = ANY


#: An event to append and its stream (``None``: the stream its data names).
_Item = tuple[str | None, EventBase | Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class _Expectations:
    """What an append expects of its streams' versions (``None``: any, -1: no stream)."""

    versions: dict[str, int | None] = field(default_factory=dict)
    idle: dict[str, int | None] = field(default_factory=dict)  # of streams given no events
    errors: tuple[FieldError, ...] = ()

    @classmethod
    def of(cls, appends: Sequence[StreamAppend]) -> _Expectations:
        versions: dict[str, int | None] = {}
        errors: list[FieldError] = []
        for part in appends:
            if not _valid_stream_id(part.stream_id):
                errors.append(
                    FieldError(None, "stream_id", f"{part.stream_id!r} is not a stream id")
                )
            wanted = _encode_expected(part.expected_version)
            if part.stream_id in versions and (
                wanted is not None or versions[part.stream_id] is not None
            ):
                errors.append(
                    FieldError(
                        None,
                        "stream_id",
                        f"{part.stream_id!r} appears twice with an expected version",
                    )
                )
            versions[part.stream_id] = (
                wanted if wanted is not None else versions.get(part.stream_id)
            )
        idle = {
            part.stream_id: versions[part.stream_id]
            for part in appends
            if not part.events and versions[part.stream_id] is not None
        }
        return cls(versions, idle, tuple(errors))


@dataclass(frozen=True, slots=True)
class _Prepared:
    stream_id: str
    event: EventBase
    payload: bytes  # canonical JSON, as it reads back from JSONB
    metadata: bytes
    content_digest: bytes
    metadata_digest: bytes
    key_ids: tuple[int, ...] = ()  # the data keys its personal fields are sealed under
    new_keys: tuple[NewKey, ...] = ()  # those of them the append makes (FreshKeys)


class Store:
    """Appends to and reads from the event log over a psycopg connection pool.

    The pool's connections must be in autocommit mode (``db.open_pool`` makes them so);
    the store opens its own transactions. The store never closes the pool.
    """

    def __init__(
        self,
        pool: ConnectionPool[Any],
        *,
        max_event_bytes: int = MIB,
        max_batch_events: int = 1000,
        phone_region: str = "US",
        notify_channel: str = "interaction_store_events",
        catalogue: Mapping[str, type[EventBase]] = CATALOGUE,
        privacy_key: bytes | None = None,
        seal_personal_data: bool = True,
    ) -> None:
        self.pool = pool
        self.max_event_bytes = max_event_bytes
        self.max_batch_events = max_batch_events
        self.phone_region = phone_region
        self.notify_channel = notify_channel
        self.catalogue = catalogue
        #: Seals personal fields on append (see ``interaction_store.privacy``) and opens
        #: them on read; with ``seal_personal_data=False`` they are stored as given.
        self.sealer = Sealer(_conninfo(pool), privacy_key=privacy_key)
        self.seal_personal_data = seal_personal_data
        self._notifier = _Notifier(pool, notify_channel)

    @classmethod
    def from_settings(cls, pool: ConnectionPool[Any], settings: Settings) -> Store:
        return cls(
            pool,
            max_event_bytes=settings.max_event_bytes,
            max_batch_events=settings.max_batch_events,
            phone_region=settings.default_phone_region,
            notify_channel=settings.notify_channel,
            privacy_key=privacy_key_from_settings(settings),
        )

    @property
    def conninfo(self) -> str:
        """The connection string of the store's pool (for connections of other kinds)."""
        return _conninfo(self.pool)

    def close(self) -> None:
        """Send the last pending wake-up and stop the notifier (the pool stays open)."""
        self._notifier.close()
        self.sealer.close()

    # Appending --------------------------------------------------------------------

    def append(
        self,
        stream_id: str,
        events: Sequence[EventBase | Mapping[str, Any]],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        """Append events to one stream, atomically.

        ``expected_version`` is ``ANY``, ``NO_STREAM`` or the exact current version; a
        mismatch raises ``ConcurrencyError``. Events already stored under the same id and
        content are reported with their original positions and not written again.
        """
        return self.append_many([StreamAppend(stream_id, events, expected_version)])

    def append_batch(self, events: Sequence[EventBase | Mapping[str, Any]]) -> AppendResult:
        """Append events to the streams their data names (conversation or customer), atomically.

        Results and errors keep the caller's order.
        """
        return self._write([(None, event) for event in events], _Expectations())

    def append_many(self, appends: Sequence[StreamAppend]) -> AppendResult:
        """Append to several streams in one atomic step.

        A stream may appear in several parts only when none of them expects a version.
        A stream whose events are all stored already (a replay) is not held to its
        expectation; the others still are.
        """
        items: list[_Item] = [(part.stream_id, event) for part in appends for event in part.events]
        return self._write(items, _Expectations.of(appends))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A transaction for several appends that commit together (or not at all)."""
        with self.pool.connection() as conn, conn.transaction():
            tx = Transaction(self, conn)
            yield tx
        if tx.position:
            self._notifier.poke(tx.position)

    def _write(self, items: list[_Item], expected: _Expectations) -> AppendResult:
        if len(items) > self.max_batch_events:
            reason = f"{len(items)} events; the limit is {self.max_batch_events}"
            raise EventValidationError([FieldError(None, "events", reason)])
        make_keys = True  # new data keys go in the append's own statement (FreshKeys)
        for attempt in range(1, _RETRIES + 1):
            fresh = FreshKeys() if make_keys else None
            try:
                with self.pool.connection() as conn:
                    if len(items) > _CHUNK and not expected.errors:
                        result = self._append_overlapped(conn, items, expected, fresh)
                    else:
                        prepared = self._prepare(items, expected, conn, fresh)
                        result = _append_prepared(conn, prepared, expected)
                break
            except KeysShredded as exc:  # an erasure got in first: seal with new keys
                self.sealer.forget(exc.key_ids)
                if attempt == _RETRIES:
                    raise
            except KeysTaken:  # another append made some of the keys first: use its own
                make_keys = False
                if attempt == _RETRIES:
                    raise
        if fresh:
            self.sealer.adopt(fresh, (e.event_id for e in result.events if not e.already_present))
        if result.events:
            self._notifier.poke(result.position)
        return result

    def _append_overlapped(
        self,
        conn: psycopg.Connection[Any],
        items: list[_Item],
        expected: _Expectations,
        fresh: FreshKeys | None = None,
    ) -> AppendResult:
        """Append a large batch in chunks, each sent while the next one is prepared.

        Validating and serialising in Python costs about as much as the database's work,
        and the two can run on different cores: in pipeline mode a chunk's statement goes
        to the server without waiting for its result, and Python prepares the next chunk
        meanwhile. The chunks are statements of one transaction, so the batch stays
        atomic, in the caller's order. Any refusal (a collision, a failed expectation)
        rolls it all back and the whole batch runs again through ``_append``, which
        resolves replays, conflicts and races. Only the pipeline's exit syncs: an explicit
        sync after a message of a megabyte or more can deadlock psycopg 3.3.9 over a Unix
        socket (``test_a_large_batch_of_large_events_does_not_stall_the_pipeline``).

        Each chunk inserts the new data keys its events are the first to use (FreshKeys),
        and holds them uncommitted while the chunks after it run. A transaction of
        ``Store.transaction()`` that needs one of them meanwhile makes it on the sealer's
        connection and waits for the batch; if the batch waits for that transaction too,
        PostgreSQL cannot see the deadlock (one side waits in the client), so the
        sealer's connection gives up after a few seconds (``privacy._KEY_WAIT``) and the
        transaction is refused with ``ConcurrencyError``.
        """
        errors: list[FieldError] = []
        seen: dict[UUID, int] = {}
        prepared: list[_Prepared] = []
        placed: dict[UUID, tuple[int, int]] = {}
        refused: psycopg.Error | None = None
        claimed: set[str] = set()  # streams whose expectation a sent chunk carries
        inserted: set[int] = set()  # new data keys a sent chunk inserts
        with conn.transaction():
            _check_expectations(conn, expected.idle)
            try:
                with conn.pipeline():
                    sent: list[psycopg.Cursor[Any]] = []
                    for start in range(0, len(items), _CHUNK):
                        chunk = self._prepare_chunk(
                            items[start : start + _CHUNK], start, seen, errors, fresh=fresh
                        )
                        prepared.extend(chunk)
                        if errors or refused:
                            continue  # nothing more is sent, but every event is checked
                        wanted: dict[str, int | None] = {}
                        for p in chunk:
                            if p.stream_id not in claimed:
                                claimed.add(p.stream_id)
                                wanted[p.stream_id] = expected.versions.get(p.stream_id)
                        try:
                            statement = _insert_statement(chunk, wanted, True, inserted)
                            sent.append(conn.execute(*statement))
                        except psycopg.Error as exc:  # an earlier chunk's result, refused
                            refused = exc
                # Leaving the pipeline waited for every result.
                if not (errors or refused):
                    for cursor in sent:
                        placed.update(_placed(cursor))
            except psycopg.Error as exc:
                refused = refused or exc
            if errors or refused:
                raise psycopg.Rollback()
        if errors:
            raise EventValidationError(errors)
        if refused is not None and refused.diag.table_name == "data_keys":
            raise KeysTaken() from refused  # sealed again, whole, with the keys stored
        if refused is not None:
            log.debug("chunked append refused, running it whole: %s", refused)
            return _append_prepared(conn, prepared, expected)
        return _result(prepared, placed, {})

    def _prepare(
        self,
        items: list[_Item],
        expected: _Expectations,
        conn: psycopg.Connection[Any] | None = None,
        fresh: FreshKeys | None = None,
    ) -> list[_Prepared]:
        """Validate and serialise a batch; every error of the batch is reported at once."""
        errors = list(expected.errors)
        prepared = self._prepare_chunk(items, 0, {}, errors, conn, fresh)
        if errors:
            raise EventValidationError(errors)
        return prepared

    def _prepare_chunk(
        self,
        items: list[_Item],
        offset: int,
        seen: dict[UUID, int],
        errors: list[FieldError],
        conn: psycopg.Connection[Any] | None = None,
        fresh: FreshKeys | None = None,
    ) -> list[_Prepared]:
        """Validate and serialise ``items``, found at ``offset`` in their batch.

        Adds each problem to ``errors``; ``seen`` holds the event ids met so far in the
        batch. An item without a stream goes to the one its data names. New data keys are
        made into ``fresh`` if given, for the append to insert; else on ``conn`` if given
        (idle, in autocommit), else on the sealer's connection.
        """
        try:
            models = parse_events([event for _, event in items], phone_region=self.phone_region)
        except EventValidationError as exc:
            errors.extend(
                e if e.index is None else FieldError(e.index + offset, e.field, e.reason)
                for e in exc.errors
            )
            return []
        valid: list[tuple[str, EventBase, dict[str, Any], bytes, bytes]] = []
        for index, ((stream_id, _), model) in enumerate(zip(items, models, strict=True), offset):
            if stream_id is None:
                model = with_conversation(model)
                stream_id = stream_for(model)
            if model.id in seen:
                errors.append(
                    FieldError(index, "id", f"repeats the id of events[{seen[model.id]}]")
                )
            seen.setdefault(model.id, index)
            try:
                data = model.data.model_dump(mode="json", exclude_none=True)
                payload = _stored_json(data)
            except (TypeError, ValueError) as exc:  # PydanticSerializationError is a ValueError
                errors.append(FieldError(index, "data", f"is not JSON: {exc}"))
                continue
            if len(payload) > self.max_event_bytes:
                errors.append(
                    FieldError(
                        index,
                        "data",
                        f"is {len(payload):,} bytes; the limit is {self.max_event_bytes:,}",
                    )
                )
                continue
            if b"\\u0000" in payload and _NUL.search(payload):
                errors.append(
                    FieldError(index, f"data.{_nul_path(data)}", "contains a NUL character")
                )
                continue
            meta = model.metadata.model_dump(mode="json", exclude_none=True)
            try:
                metadata = _stored_json(meta)
            except (TypeError, ValueError) as exc:  # an integer beyond 64 bits, say
                errors.append(FieldError(index, "metadata", f"is not JSON: {exc}"))
                continue
            if b"\\u0000" in metadata and _NUL.search(metadata):  # jsonb cannot hold one
                errors.append(
                    FieldError(index, f"metadata.{_nul_path(meta)}", "contains a NUL character")
                )
                continue
            valid.append((stream_id, model, data, payload, metadata))
        if errors or not valid:
            return []
        sealed: list[tuple[bytes | None, tuple[int, ...]]] = [(None, ())] * len(valid)
        if self.seal_personal_data:
            unstable = any(b"e+" in p or b"-0.0" in p for _, _, _, p, _ in valid)
            sealed = self.sealer.seal(
                [(m.id, m.type, m.occurred_at, d) for _, m, d, _, _ in valid],
                _sealed_json if unstable else _sorted_json,
                conn,
                fresh,
            )
        prepared: list[_Prepared] = []
        for (stream_id, model, _, plain, metadata), (stored, key_ids) in zip(
            valid, sealed, strict=True
        ):
            payload = plain if stored is None else stored
            prepared.append(
                _Prepared(
                    stream_id=stream_id,
                    event=model,
                    payload=payload,
                    metadata=metadata,
                    content_digest=content_digest(
                        event_id=model.id,
                        stream_id=stream_id,
                        type=model.type,
                        schema_version=model.schema_version,
                        occurred_at=model.occurred_at,
                        data=orjson.Fragment(payload),
                    ),
                    metadata_digest=metadata_digest(orjson.Fragment(metadata)),
                    key_ids=key_ids,
                    new_keys=() if fresh is None else fresh.use(model.id, key_ids),
                )
            )
        return prepared

    # Reading ----------------------------------------------------------------------

    def read_stream(
        self, stream_id: str, from_version: int = 0, limit: int = 1000
    ) -> list[RecordedEvent]:
        """A stream's events in version order, from ``from_version`` (inclusive)."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                query("read_stream"),
                {"stream_id": stream_id, "from_version": from_version, "limit": limit},
            ).fetchall()
            return self.recorded(conn, rows)

    def read_all(
        self,
        after: Checkpoint = Checkpoint.START,
        limit: int = 1000,
        types: Sequence[str] | None = None,
    ) -> list[RecordedEvent]:
        """The next events of the whole log after ``after``, gap-safe.

        Continue from the last event's ``checkpoint``. Events are in commit-safe order:
        by transaction, then position, so positions may not be strictly increasing.
        """
        with self.pool.connection() as conn:
            rows = conn.execute(
                query("read_all"),
                {
                    "transaction_id": str(after.transaction_id),
                    "position": after.position,
                    "types": list(types) if types else None,
                    "limit": limit,
                },
            ).fetchall()
            return self.recorded(conn, rows)

    def follow(
        self,
        after: Checkpoint = Checkpoint.START,
        *,
        types: Sequence[str] | None = None,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        stop: threading.Event | None = None,
    ) -> Iterator[RecordedEvent]:
        """Yield every event after ``after``, then wait for new ones until ``stop`` is set.

        Woken by NOTIFY after appends, and polling every ``poll_interval`` seconds anyway:
        a lost notification costs latency, never an event.
        """
        stop = stop or threading.Event()
        with self._listener() as listener:
            while not stop.is_set():
                events = self.read_all(after, limit=batch_size, types=types)
                yield from events
                if events:
                    after = events[-1].checkpoint
                if len(events) < batch_size:
                    listener.wait(poll_interval)

    def read_event(self, position: int) -> RecordedEvent | None:
        """The event at ``position``, if it is committed."""
        with self.pool.connection() as conn:
            row = conn.execute(query("read_event"), {"position": position}).fetchone()
            return self.recorded(conn, [row])[0] if row else None

    def head(self) -> int:
        """The highest committed position (0 for an empty log)."""
        with self.pool.connection() as conn:
            row = conn.execute(query("head")).fetchone()
        return int(row[0]) if row else 0

    def checkpoint_at(self, position: int) -> Checkpoint | None:
        """The checkpoint just after the event at ``position``, once gap-safe readers can
        reach it (None before: a checkpoint past a still-running transaction would skip
        that transaction's events)."""
        with self.pool.connection() as conn:
            row = conn.execute(query("checkpoint_at"), {"position": position}).fetchone()
        return Checkpoint(int(row[0]), int(row[1])) if row else None

    def stream_version(self, stream_id: str) -> int:
        """The stream's current version; 0 when it has no events."""
        with self.pool.connection() as conn:
            return _stream_version(conn, stream_id)

    def wait_for(
        self, position: int, timeout: float = 5.0, *, cancel: threading.Event | None = None
    ) -> bool:
        """Wait until the event at ``position`` can be read by gap-safe readers.

        True once it can; False if ``timeout`` seconds passed first, or ``cancel`` was set
        (noticed within a quarter of a second). For read-your-writes: wait for the
        ``position`` an append returned.
        """
        deadline = time.monotonic() + timeout
        if self._readable(position):
            return True
        with self._listener() as listener:
            delay = 0.005
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (cancel is not None and cancel.is_set()):
                    return False
                listener.wait(min(delay, remaining))
                delay = min(delay * 2, 0.25)
                if self._readable(position):
                    return True

    def _readable(self, position: int) -> bool:
        with self.pool.connection() as conn:
            row = conn.execute(query("readable"), {"position": position}).fetchone()
        return row is not None and bool(row[0])

    def verify_stream(self, stream_id: str) -> ChainReport:
        """Recompute a stream's hash chain from its stored rows.

        A stream on its own cannot show that its newest events were deleted; the log's
        signed checkpoints cover that.
        """
        with self.pool.connection() as conn:
            rows = conn.execute(
                query("read_stream"), {"stream_id": stream_id, "from_version": 0, "limit": None}
            ).fetchall()
        return verify_chain(
            stream_id,
            (
                ChainRow(
                    position=r[0],
                    event_id=r[2],
                    stream_id=r[3],
                    stream_version=r[4],
                    type=r[5],
                    schema_version=r[6],
                    occurred_at=r[7],
                    recorded_at=r[8],
                    data=r[9],
                    metadata=r[10],
                    content_digest=r[11],
                    hash=r[12],
                    prev_hash=r[13],
                )
                for r in rows
            ),
        )

    def recorded(
        self, conn: psycopg.Connection[Any], rows: Sequence[Sequence[Any]]
    ) -> list[RecordedEvent]:
        """Rows of ``EVENT_COLUMNS`` as events, personal fields opened (on ``conn``)."""
        return recorded_events(conn, rows, self.sealer, self.catalogue)

    @contextlib.contextmanager
    def _listener(self) -> Iterator[_Listener]:
        listener = _Listener(_conninfo(self.pool), self.notify_channel)
        try:
            yield listener
        finally:
            listener.close()


def recorded_events(
    conn: psycopg.Connection[Any],
    rows: Sequence[Sequence[Any]],
    sealer: Sealer,
    catalogue: Mapping[str, type[EventBase]] = CATALOGUE,
) -> list[RecordedEvent]:
    """Rows of ``EVENT_COLUMNS`` as ``RecordedEvent``s: sealed personal fields opened
    (placeholders where their keys were shredded), data upcast."""
    opened = sealer.open_all(conn, [(row[2], row[9]) for row in rows])
    return [
        _recorded_event(row, data, tokens, catalogue)
        for row, (data, tokens) in zip(rows, opened, strict=True)
    ]


def _recorded_event(
    row: Sequence[Any],
    data: dict[str, Any],
    contact_tokens: tuple[str, ...],
    catalogue: Mapping[str, type[EventBase]],
) -> RecordedEvent:
    """A row of ``EVENT_COLUMNS`` as a ``RecordedEvent``, with its payload opened
    (``data``) and upcast, and its contacts' tokens."""
    schema_version, data = upcast(row[5], row[6], data, catalogue)
    return RecordedEvent(
        position=row[0],
        transaction_id=int(row[1]),
        event_id=row[2],
        stream_id=row[3],
        stream_version=row[4],
        type=row[5],
        schema_version=schema_version,
        occurred_at=row[7],
        recorded_at=row[8],
        data=data,
        metadata=row[10],
        hash=row[12],
        prev_hash=row[13],
        contact_tokens=contact_tokens,
    )


#: The columns, in order, that ``recorded_events`` reads.
EVENT_COLUMNS = (
    "position, transaction_id::text AS txid, event_id, stream_id, stream_version, type,"
    " schema_version, occurred_at, recorded_at, payload, metadata, content_digest, hash,"
    " prev_hash"
)


class Transaction:
    """Appends made through ``Store.transaction()``; they commit when the block ends."""

    def __init__(self, store: Store, conn: psycopg.Connection[Any]) -> None:
        self._store = store
        self._conn = conn
        self.position = 0

    @property
    def connection(self) -> psycopg.Connection[Any]:
        """The transaction's connection, for reads and writes that commit with it."""
        return self._conn

    def append(
        self,
        stream_id: str,
        events: Sequence[EventBase | Mapping[str, Any]],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        expected = _Expectations.of([StreamAppend(stream_id, events, expected_version)])
        items: list[_Item] = [(stream_id, event) for event in events]
        prepared = self._store._prepare(items, expected)
        if not prepared:
            _check_expectations(self._conn, expected.versions)
            return AppendResult(())
        try:
            result = _append(self._conn, prepared, expected.versions, in_transaction=True)
        except KeysShredded as exc:  # the caller's transaction must run again
            self._store.sealer.forget(exc.key_ids)
            raise
        self.position = max(self.position, result.position)
        return result


def _append(
    conn: psycopg.Connection[Any],
    prepared: list[_Prepared],
    expected: dict[str, int | None],
    *,
    in_transaction: bool,
) -> AppendResult:
    """Append a prepared batch, resolving collisions with concurrent appends.

    After a unique violation, or a failed expectation, the events already stored are
    looked up first: with the same content they are reported as ``already_present`` (a
    replay), with other content they raise ``IdempotencyConflict``. The rest run again.
    A violation with nothing stored means another append wrote the stream version first:
    run again against the new head (each attempt is a new statement and sees what has
    committed since). Inside the caller's transaction each attempt runs in a savepoint.
    A data key the append made that another append had made first (``KeysTaken``) needs
    the events sealed again, under the other's key.
    """
    present: dict[UUID, AppendedEvent] = {}
    pending = prepared
    for attempt in range(1, _RETRIES + 1):
        try:
            if in_transaction:
                with conn.transaction():  # a savepoint: a collision keeps the caller's work
                    placed = _insert(conn, pending, expected, locked=True)
            else:
                placed = _insert(conn, pending, expected)
            return _result(prepared, placed, present)
        except psycopg.Error as exc:
            if exc.sqlstate == "ISC02":  # a data key was shredded: seal again, new keys
                detail = exc.diag.message_detail or ""
                raise KeysShredded([int(k) for k in detail.split(",") if k]) from exc
            if exc.diag.table_name == "data_keys":  # another append made a new key first
                raise KeysTaken() from exc
            collided = isinstance(exc, pg_errors.UniqueViolation | pg_errors.DeadlockDetected)
            if not collided and exc.sqlstate != "ISC01":
                raise _translate(exc) from exc
            # Another append wrote these ids or stream versions first, or an expectation
            # failed. Whatever is stored already is a replay, not an error.
            stored = _already_stored(conn, pending)
            present.update(stored)
            pending = [p for p in pending if p.event.id not in present]
            if not pending:
                return _result(prepared, {}, present)
            if stored:
                continue
            if exc.sqlstate == "ISC01":
                raise _translate(exc) from exc
            if in_transaction and isinstance(exc, pg_errors.DeadlockDetected):
                # The other lock is held by the caller's own earlier work: a retry would
                # deadlock again. The caller's transaction has to give way.
                raise ConcurrencyError.deadlock() from exc
            log.debug("append collided, retrying: %s", exc.diag.message_primary)
        time.sleep(random.uniform(0, min(0.002 * 2**attempt, 0.1)))
    raise DatabaseError(f"append lost the race for its stream versions {_RETRIES} times; try again")


def _append_prepared(
    conn: psycopg.Connection[Any], prepared: list[_Prepared], expected: _Expectations
) -> AppendResult:
    """Append a prepared batch in one statement, checking streams given no events too."""
    if not prepared:
        _check_expectations(conn, expected.versions)
        return AppendResult(())
    if expected.idle:
        with conn.transaction():
            _check_expectations(conn, expected.idle)
            return _append(conn, prepared, expected.versions, in_transaction=True)
    return _append(conn, prepared, expected.versions, in_transaction=False)


def _stream_version(conn: psycopg.Connection[Any], stream_id: str) -> int:
    row = conn.execute(query("stream_version"), {"stream_id": stream_id}).fetchone()
    return int(row[0]) if row else 0


def _check_expectations(conn: psycopg.Connection[Any], expected: dict[str, int | None]) -> None:
    """An empty append still checks what it expects of its streams."""
    for stream_id, version in expected.items():
        if version is None:
            continue
        actual = _stream_version(conn, stream_id)
        if actual != max(version, 0):
            raise ConcurrencyError.version_mismatch(
                stream_id, "no stream" if version == -1 else version, actual
            )


def _already_stored(
    conn: psycopg.Connection[Any], pending: list[_Prepared]
) -> dict[UUID, AppendedEvent]:
    """The pending events stored already with the same content; a conflict if any differs.

    An event whose personal fields were shredded (erased, or past retention) cannot be
    compared any more, and its id is its source's natural key: it counts as present, so
    that a redelivery neither conflicts nor brings the content back.
    """
    by_id = {p.event.id: p for p in pending}
    rows = conn.execute(query("stored_events"), {"event_ids": list(by_id)}).fetchall()
    found = {}
    for event_id, position, stream_id, stream_version, digest, shredded, sealed in rows:
        p = by_id[event_id]
        if digest != p.content_digest and p.new_keys and sealed and not shredded:
            # Sealed under keys made for this append, it cannot match an event sealed
            # under the keys stored: it is compared again sealed under those.
            raise KeysTaken()
        # An event stored as given (before sealing existed, or by a store that does not
        # seal) and sealed now is told by the digest of its data as given.
        if (
            digest != p.content_digest
            and not shredded
            and (sealed or not p.key_ids or digest != _digest_as_given(p))
        ):
            raise IdempotencyConflict(event_id)
        found[event_id] = AppendedEvent(event_id, position, stream_id, stream_version, True)
    return found


def _digest_as_given(p: _Prepared) -> bytes:
    """The content digest ``p`` would have with its personal fields unsealed."""
    data = p.event.data.model_dump(mode="json", exclude_none=True)
    return content_digest(
        event_id=p.event.id,
        stream_id=p.stream_id,
        type=p.event.type,
        schema_version=p.event.schema_version,
        occurred_at=p.event.occurred_at,
        data=orjson.Fragment(_stored_json(data)),
    )


def _result(
    prepared: list[_Prepared],
    placed: dict[UUID, tuple[int, int]],
    present: dict[UUID, AppendedEvent],
) -> AppendResult:
    def one(p: _Prepared) -> AppendedEvent:
        if p.event.id in present:
            return present[p.event.id]
        position, version = placed[p.event.id]
        return AppendedEvent(p.event.id, position, p.stream_id, version, False)

    return AppendResult(tuple(one(p) for p in prepared))


def _insert(
    conn: psycopg.Connection[Any],
    prepared: list[_Prepared],
    expected: dict[str, int | None],
    *,
    locked: bool = False,
) -> dict[UUID, tuple[int, int]]:
    """Run the append statement once; the new events' (position, version) by id."""
    return _placed(conn.execute(*_insert_statement(prepared, expected, locked)))


def _placed(cursor: psycopg.Cursor[Any]) -> dict[UUID, tuple[int, int]]:
    return {row[0]: (row[1], row[2]) for row in cursor.fetchall()}


def _insert_statement(
    prepared: list[_Prepared],
    expected: dict[str, int | None],
    locked: bool = False,
    inserted: set[int] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The append statement for ``prepared`` and its parameters.

    It inserts the data keys made for the events (``FreshKeys``), but for those in
    ``inserted`` (by an earlier statement of the transaction), which it adds its own to.
    """
    fresh = {key.key_id: key for p in prepared for key in p.new_keys}
    new_keys = sorted(
        (key for key_id, key in fresh.items() if inserted is None or key_id not in inserted),
        key=lambda key: (key.owner, key.scope),
    )
    if inserted is not None:
        inserted.update(fresh)
    if len(prepared) == 1:
        [p] = prepared
        params = {
            "event_id": p.event.id,
            "stream_id": p.stream_id,
            "expected": expected.get(p.stream_id),
            "type": p.event.type,
            "schema_version": p.event.schema_version,
            "occurred_at": p.event.occurred_at,
            "payload": p.payload.decode(),
            "metadata": p.metadata.decode(),
            "content_digest": p.content_digest,
            "metadata_digest": p.metadata_digest,
            "keys": _keys_param([p], locked, fresh),
        }
        statement = "append_event"
    else:
        streams = sorted({p.stream_id for p in prepared})
        index = {stream: i for i, stream in enumerate(streams, start=1)}
        rows = [
            (
                p.event.id,
                index[p.stream_id],
                p.event.type,
                p.event.schema_version,
                p.event.occurred_at,
                p.content_digest.hex(),
                p.metadata_digest.hex(),
                orjson.Fragment(p.payload),
                orjson.Fragment(p.metadata),
            )
            for p in prepared
        ]
        params = {
            "keys": _keys_param(prepared, locked, fresh),
            "streams": streams,
            "expected": [expected.get(s) for s in streams],
            "events": orjson.dumps(rows).decode(),
        }
        statement = "append_events"
    if not new_keys:
        return query(statement), params
    params["new_keys"] = orjson.dumps([key.row() for key in new_keys]).decode()
    return _with_new_keys(statement), params


@functools.cache
def _with_new_keys(name: str) -> str:
    """The named append statement, inserting the append's new data keys first."""
    lines = query(name).splitlines()
    statement = "\n".join(line for line in lines if not line.startswith("--"))
    if statement.startswith("WITH "):
        return f"WITH {query('new_keys')},\n{statement.removeprefix('WITH ')}"
    return f"WITH {query('new_keys')}\n{statement}"


def _keys_param(
    prepared: Sequence[_Prepared], locked: bool = False, fresh: Mapping[int, NewKey] | None = None
) -> str | None:
    """What the append passes data_keys_live: the keys its events are sealed under (as an
    array literal, which costs a tenth of a list's adaptation), or
    nothing (no lock) when none is sealed and none is a customer event (whose links and
    merges decide whom an erasure erases). A statement that is one of several in its
    transaction (``locked``) takes the lock all the same: an erasure must not come between
    it and a later one that seals under a key made after the erasure's. Keys the append
    makes itself (``fresh``) are not checked: no erasure can have seen them yet. They
    take the lock all the same, so that an erasure comes before the append or after it."""
    fresh = fresh or {}
    keys = sorted({key_id for p in prepared for key_id in p.key_ids} - fresh.keys())
    if keys or fresh or locked or any(p.event.type.startswith("customer.") for p in prepared):
        return "{" + ",".join(map(str, keys)) + "}"
    return None


def _translate(exc: psycopg.Error) -> Exception:
    """Map a database refusal to the store's own errors."""
    if exc.sqlstate == "ISC01":
        detail = orjson.loads(exc.diag.message_detail or "{}")
        expected = detail.get("expected")
        return ConcurrencyError.version_mismatch(
            detail.get("stream_id", "?"),
            "no stream" if expected == -1 else expected,
            int(detail.get("actual", 0)),
        )
    return DatabaseError(f"append failed: {exc.diag.message_primary or exc}")


def _encode_expected(expected: ExpectedVersion) -> int | None:
    if expected is ANY:
        return None
    if expected is NO_STREAM:
        return -1
    if isinstance(expected, int) and not isinstance(expected, bool) and 0 <= expected < 2**63:
        return expected
    raise ValueError(
        "expected_version must be ANY, NO_STREAM or a version from 0 to 2**63 - 1,"
        f" not {expected!r}"
    )


_STREAM_ID = re.compile(rf"{NOT_BLANK_OR_CONTROL}{{1,{_STREAM_ID_MAX}}}")


def _valid_stream_id(stream_id: str) -> bool:
    """No white space, no control character, as an id in an event (so every customer and
    conversation names a stream it can have)."""
    return _STREAM_ID.fullmatch(stream_id) is not None


# How orjson writes the only numbers that JSONB gives back as other JSON: integral floats
# of 1e16 and more, in exponent form ("1e+16" reads back as 10000000000000000), and -0.0
# (numeric has no negative zero). Both are rare, so a quick look for "e+" and "-0.0"
# comes first. A number follows ":", "," or "["; a string that looks
# the same (": 1e5") costs a second look, never a wrong digest.
_UNSTABLE_NUMBER = re.compile(rb"[:,\[]-?[0-9]+(?:\.[0-9]+)?e|[:,\[]-0\.0[,\]}]")


#: An escaped NUL in JSON text: \u0000 after an even number of backslashes (after an odd
#: number, it is the text "\u0000" written out, which PostgreSQL stores as any other).
_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _stored_json(value: Any) -> bytes:
    """Canonical JSON of ``value`` as it reads back from JSONB, so the digest of what was
    appended is the digest of what is stored."""
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    if (b"e+" in text or b"-0.0" in text) and _UNSTABLE_NUMBER.search(text):
        text = orjson.dumps(_as_stored(value), option=orjson.OPT_SORT_KEYS)
    return text


def _sorted_json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _sealed_json(value: Any) -> bytes:
    """``_stored_json`` of a sealed payload: its boxes are base64, where "e+" is common
    and never a number, so the numbers left in the clear are checked on their own."""
    boxes = value.pop("sealed")
    clear = orjson.dumps(value)
    value["sealed"] = boxes
    if (b"e+" in clear or b"-0.0" in clear) and _UNSTABLE_NUMBER.search(clear):
        value = _as_stored(value)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _as_stored(value: Any) -> Any:
    """``value`` with the floats JSONB rewrites (see ``_UNSTABLE_NUMBER``) as integers."""
    if isinstance(value, float):
        if value.is_integer() and (
            abs(value) >= 1e16 or (value == 0 and math.copysign(1, value) < 0)
        ):
            # as orjson reads the digits back: an integer from -2**63 up to 2**64
            return int(value) if -(2**63) <= value < 2**64 else value
        return value
    if isinstance(value, dict):
        return {key: _as_stored(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_stored(item) for item in value]
    return value


def _conninfo(pool: ConnectionPool[Any]) -> str:
    return pool.conninfo if isinstance(pool.conninfo, str) else pool.conninfo()


def _nul_path(value: Any, path: str = "") -> str:
    """The dotted path of the first string holding a NUL character."""
    if isinstance(value, str):
        return path if "\x00" in value else ""
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        here = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and "\x00" in key:
            return here.replace("\x00", "\\u0000")  # a key holding one: name it printably
        found = _nul_path(item, here)
        if found:
            return found
    return ""


class _Listener:
    """A dedicated LISTEN connection that wakes a waiting reader. Lost (the server
    restarted), it is opened again at most every ``retry_seconds``, polling meanwhile."""

    retry_seconds = 5.0

    def __init__(self, conninfo: str, channel: str) -> None:
        self._conn: psycopg.Connection[Any] | None = None
        self._conninfo, self._channel = conninfo, channel
        self._next_try = 0.0
        self._listen()

    def _listen(self) -> None:
        self._next_try = time.monotonic() + self.retry_seconds
        try:
            self._conn = psycopg.connect(self._conninfo, autocommit=True)
            self._conn.execute(pg_sql.SQL("LISTEN {}").format(pg_sql.Identifier(self._channel)))
        except psycopg.Error as exc:  # polling alone still works
            log.warning("cannot LISTEN for wake-ups, polling until it can: %s", exc)
            self.close()

    def wait(self, timeout: float) -> bool:
        """Block until a wake-up arrives or ``timeout`` seconds pass; True if woken."""
        if self._conn is None and time.monotonic() >= self._next_try:
            self._listen()
        if self._conn is None:
            time.sleep(timeout)
            return False
        woken = False
        try:
            for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                woken = True
        except psycopg.Error as exc:
            log.warning("lost the LISTEN connection, polling until it is back: %s", exc)
            self.close()
        return woken

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _Notifier:
    """Coalesced wake-ups: appenders poke after commit; one thread sends NOTIFY for many.

    NOTIFY is sent outside the append transactions (a NOTIFY inside them would take a
    global lock at every commit). The first append after a quiet spell is announced at
    once; during a stream of appends, at most one wake-up per ``interval`` seconds is sent,
    carrying the newest position, so the wake-ups cost nothing like one per append.
    """

    def __init__(self, pool: ConnectionPool[Any], channel: str, interval: float = 0.01) -> None:
        self._pool = pool
        self._channel = channel
        self._interval = interval
        self._pending = threading.Event()
        self._lock = threading.Lock()
        self._latest = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None

    def poke(self, position: int) -> None:
        with self._lock:
            if self._closed:
                return
            self._latest = max(self._latest, position)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="interaction-store-notifier", daemon=True
                )
                self._thread.start()
        self._pending.set()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        self._pending.set()
        if thread is not None:
            thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            self._pending.wait()
            self._pending.clear()
            with self._lock:
                position, closed = self._latest, self._closed
            self._send(position)
            if closed:
                break
            time.sleep(self._interval)  # pokes meanwhile are coalesced into the next one
        if self._conn is not None:
            self._conn.close()

    def _send(self, position: int) -> None:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(_conninfo(self._pool), autocommit=True)
            self._conn.execute(
                query("notify"), {"channel": self._channel, "payload": str(position)}
            )
        except psycopg.Error as exc:  # readers poll too: a lost wake-up costs latency only
            log.warning("wake-up NOTIFY failed: %s", exc)
            if self._conn is not None:
                self._conn.close()
            self._conn = None
