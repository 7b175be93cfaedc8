"""Personal data in the log: sealed under per-identity data keys, so it can be shredded.

An event's personal fields leave its stored payload for one or two sealed boxes:

- the **identity** box (the contact's address, a handle, a customer's name and contacts),
  under the owner's ``identity`` key, destroyed only by erasure;
- the **content** box (subjects, bodies, texts, transcripts, recipients, attachments,
  recording and media links, attributes), under a key derived from two: the owner's
  identity key and the key of the interaction's channel and month. Erasure destroys the
  first, retention the second (once the month is older than the channel's period);
  either makes the content unreadable.

The owner is the customer the event names, else the interaction's contact. In the stored
payload a contact keeps its kind and gains a *token*, a keyed hash of ``kind:value``:
attribution, lookups and replays still tell contacts apart when their keys are gone, and
the token says nothing to whoever lacks the secret. A box is AES-256-GCM-SIV (RFC 8452),
deterministic, so the same event sealed again is the same bytes and a retried append is
still recognised as the one stored; unlike plain GCM it stays safe when a nonce repeats,
revealing only that two plaintexts are equal. A content box takes the event's id as its
nonce and associated data; an identity box takes none, so an owner's address seals to
the same bytes in each of its events (which the contact's token shows anyway). The hash
chain covers the stored, sealed bytes, so shredding a key breaks no verification.

Data keys live in ``data_keys``, wrapped (AES-GCM) with a key derived from the privacy
secret; the secret is ``INTERACTION_STORE_PRIVACY_KEY`` or, when that is unset, one kept
in the database (``privacy_secret``), made on first use. Reading a box whose key was
shredded gives placeholders: ``[erased]`` for text, empty lists and objects, and
``erased-<token>`` for a contact's address.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, NamedTuple
from uuid import UUID

import orjson
import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV

from interaction_store.exceptions import ConcurrencyError, ConfigurationError, DatabaseError
from interaction_store.settings import Settings

__all__ = [
    "CONTENT_FIELDS",
    "PERIOD_OWNER",
    "PLACEHOLDER",
    "PLACEHOLDER_PREFIX",
    "RETENTION_LOCK",
    "SHREDDING_LOCK",
    "FreshKeys",
    "Keyring",
    "KeysShredded",
    "KeysTaken",
    "NewKey",
    "Sealer",
    "contact_placeholder",
    "contact_tokens",
    "is_sealed",
    "key_ids_of",
    "parse_privacy_key",
    "privacy_key_from_settings",
]

#: What a shredded text reads as.
PLACEHOLDER: Final = "[erased]"
#: An interaction's fields that go into its content box.
CONTENT_FIELDS: Final = (
    "subject",
    "body",
    "to",
    "cc",
    "attachments",
    "text",
    "transcript",
    "recording_url",
    "media_urls",
    "reason",
    "attributes",
)
_CONTENT: Final = frozenset(CONTENT_FIELDS)
_LISTS: Final = frozenset({"to", "cc", "attachments", "media_urls", "contacts"})
_OBJECTS: Final = frozenset({"attributes"})
#: Customer events whose data holds an address or a name.
_CUSTOMER_TYPES: Final = frozenset(
    {
        "customer.registered",
        "customer.profile_updated",
        "customer.identity_linked",
        "customer.identity_unlinked",
    }
)
_TOKEN_BYTES: Final = 16
#: The advisory lock appends that seal take shared and shredding takes exclusively.
SHREDDING_LOCK: Final = 4936157270312945623
#: The advisory lock retention takes exclusively, and rebuilds and replays hold shared
#: while they copy the views from the log: a copy made from content read before its keys
#: went would bring the content back when swapped in, and retention leaves no event in the
#: log for the copy's catch-up to redact it by.
RETENTION_LOCK: Final = 4936157270312945624
#: The owner of the channel-and-month keys, which belong to no one identity.
PERIOD_OWNER: Final = bytes(_TOKEN_BYTES)
_IDENTITY_NONCE: Final = bytes(12)


def privacy_key_from_settings(settings: Settings) -> bytes | None:
    key = settings.privacy_key
    return None if key is None else parse_privacy_key(key.get_secret_value())


def parse_privacy_key(text: str) -> bytes:
    """The 32 bytes of ``INTERACTION_STORE_PRIVACY_KEY`` (base64)."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError("INTERACTION_STORE_PRIVACY_KEY is not base64") from None
    if len(raw) != 32:
        raise ConfigurationError(
            f"INTERACTION_STORE_PRIVACY_KEY is {len(raw)} bytes; it must be 32"
        )
    return raw


class KeysShredded(DatabaseError):
    """Data keys an append encrypted with were shredded before it committed."""

    def __init__(self, key_ids: Sequence[int]) -> None:
        self.key_ids = tuple(key_ids)
        super().__init__(
            f"data keys {', '.join(map(str, key_ids))} were shredded while the append ran;"
            " nothing was written: run it again"
        )


class KeysTaken(DatabaseError):
    """Another append made a live data key for an owner and scope this append made one
    for too; nothing was written. Sealing again with the keys stored finds the other's."""

    def __init__(self) -> None:
        super().__init__(
            "another append made the same data keys first; nothing was written: run it again"
        )


class Keyring:
    """The privacy secret's two uses: tokens for identities, and wrapping data keys."""

    def __init__(self, secret: bytes) -> None:
        self._index = hmac.digest(secret, b"interaction-store identity tokens v1", "sha256")
        self._wrap = AESGCM(hmac.digest(secret, b"interaction-store key wrapping v1", "sha256"))
        self._tokens: dict[str, tuple[bytes, str]] = {}

    @staticmethod
    def fingerprint(secret: bytes) -> bytes:
        return hmac.digest(secret, b"interaction-store privacy fingerprint v1", "sha256")

    @classmethod
    def load(cls, conn: psycopg.Connection[Any], configured: bytes | None = None) -> Keyring:
        """The database's keyring: from the configured secret (checked against the
        fingerprint the database keeps), or the secret it keeps itself (made on first
        use)."""
        row = conn.execute("SELECT secret, fingerprint FROM privacy_secret").fetchone()
        if row is None:
            secret = configured or os.urandom(32)
            conn.execute(
                "INSERT INTO privacy_secret (secret, fingerprint) VALUES (%s, %s)"
                " ON CONFLICT DO NOTHING",
                (None if configured else secret, cls.fingerprint(secret)),
            )
            row = conn.execute("SELECT secret, fingerprint FROM privacy_secret").fetchone()
            assert row is not None
        kept, fingerprint = row
        if configured is not None:
            if not hmac.compare_digest(cls.fingerprint(configured), bytes(fingerprint)):
                raise ConfigurationError(
                    "INTERACTION_STORE_PRIVACY_KEY is not the key this database's personal"
                    " data was sealed with"
                )
            return cls(configured)
        if kept is None:
            raise ConfigurationError(
                "this database's personal data is sealed with a key kept outside it:"
                " set INTERACTION_STORE_PRIVACY_KEY"
            )
        return cls(bytes(kept))

    def token(self, identity: str) -> bytes:
        """The keyed token of an identity (``kind:value`` or ``customer:<id>``)."""
        return self.token_and_hex(identity)[0]

    def contact_token(self, kind: str, value: str) -> str:
        """A contact's token as stored and as the views key it (hex)."""
        return self.token_and_hex(f"{kind}:{value}")[1]

    def token_and_hex(self, identity: str) -> tuple[bytes, str]:
        found = self._tokens.get(identity)
        if found is None:
            token = hmac.digest(self._index, identity.encode(), "sha256")[:_TOKEN_BYTES]
            if len(self._tokens) > 200_000:
                self._tokens.clear()
            found = self._tokens[identity] = (token, token.hex())
        return found

    def wrap(self, owner: bytes, scope: str, key: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._wrap.encrypt(nonce, key, owner + scope.encode())

    def unwrap(self, owner: bytes, scope: str, wrapped: bytes) -> bytes:
        try:
            return self._wrap.decrypt(wrapped[:12], wrapped[12:], owner + scope.encode())
        except InvalidTag:
            raise ConfigurationError(
                f"data key of scope {scope!r} does not unwrap: the privacy secret differs"
                " from the one it was made with"
            ) from None


class _Request(NamedTuple):
    """A data key wanted for sealing: an identity's, or a channel's month's."""

    owner: bytes
    scope: str
    channel: str | None = None
    period: str | None = None  # the month's first day, ISO


def _make_keys(
    conn: psycopg.Connection[Any], keyring: Keyring, missing: Sequence[_Request]
) -> list[tuple[int, bytes, str, bytes]]:
    """Make a key for each request, or take the one stored already: (key id, owner, scope,
    raw key) of each, in one round trip but when another appender is making the same key
    at the same moment. Committed at once, without waiting for the flush to disk: the
    append that uses a key commits later, synchronously, and its flush takes the key's
    commit along."""
    made = {(r.owner, r.scope): os.urandom(32) for r in missing}
    rows = [
        {
            "owner": r.owner.hex(),
            "scope": r.scope,
            "channel": r.channel,
            "period": r.period,
            "key": keyring.wrap(r.owner, r.scope, made[(r.owner, r.scope)]).hex(),
        }
        for r in missing
    ]
    # The second part reads the statement's snapshot: the keys stored before it, not the
    # ones it inserts (which the first part returns without their key, known here). For a
    # pair it inserted, the key it found may be one an erasure has shredded since: left out.
    keys = []
    for key_id, owner, scope, wrapped in conn.execute(
        """
        WITH quick AS (SELECT set_config('synchronous_commit', 'off', true)),
        wanted AS (
            SELECT decode(r.owner, 'hex') AS owner, r.scope, r.channel, r.period,
                   decode(r.key, 'hex') AS key
              FROM jsonb_to_recordset(%s::jsonb)
                   AS r(owner text, scope text, channel text, period date, key text)
        ),
        inserted AS (
            INSERT INTO data_keys (owner, scope, channel, period, key)
            SELECT w.owner, w.scope, w.channel, w.period, w.key FROM wanted AS w, quick
            ON CONFLICT (owner, scope) WHERE shredded_at IS NULL DO NOTHING
            RETURNING key_id, owner, scope
        )
        SELECT key_id, owner, scope, NULL::bytea FROM inserted
        UNION ALL
        SELECT k.key_id, k.owner, k.scope, k.key
          FROM wanted AS w
          JOIN data_keys AS k
            ON k.owner = w.owner AND k.scope = w.scope AND k.shredded_at IS NULL
         WHERE NOT EXISTS (SELECT FROM inserted AS i
                            WHERE i.owner = w.owner AND i.scope = w.scope)
        """,
        (orjson.dumps(rows).decode(),),
    ).fetchall():
        owner = bytes(owner)
        if wrapped is None:
            keys.append((key_id, owner, scope, made[(owner, scope)]))
        else:
            keys.append((key_id, owner, scope, keyring.unwrap(owner, scope, bytes(wrapped))))
    taken = {(owner, scope) for _, owner, scope, _ in keys}
    if len(taken) < len(missing):  # made meanwhile by another appender, still committing
        others = [
            row for row, r in zip(rows, missing, strict=True) if (r.owner, r.scope) not in taken
        ]
        for key_id, owner, scope, wrapped in conn.execute(
            """
            SELECT k.key_id, k.owner, k.scope, k.key
              FROM jsonb_to_recordset(%s::jsonb) AS r(owner text, scope text)
              JOIN data_keys AS k
                ON k.owner = decode(r.owner, 'hex') AND k.scope = r.scope
               AND k.shredded_at IS NULL
            """,
            (orjson.dumps(others).decode(),),
        ).fetchall():
            raw = keyring.unwrap(bytes(owner), scope, bytes(wrapped))
            keys.append((key_id, bytes(owner), scope, raw))
    return keys


class NewKey(NamedTuple):
    """A data key made for an append and inserted by the append's own statement (see
    ``FreshKeys``): its id is reserved from the table's sequence beforehand."""

    key_id: int
    owner: bytes
    scope: str
    channel: str | None
    period: str | None
    wrapped: bytes

    def row(self) -> dict[str, Any]:
        """As the append statement's ``new_keys`` parameter lists it."""
        return {
            "key_id": self.key_id,
            "owner": self.owner.hex(),
            "scope": self.scope,
            "channel": self.channel,
            "period": self.period,
            "key": self.wrapped.hex(),
        }


class FreshKeys:
    """The data keys made for one append, written by the append itself.

    A key made on its own costs a round trip before the append can seal anything. Made
    here instead, it is inserted by the append's statement, in its transaction, and the
    sealer takes it into its caches only once that has committed (``Sealer.adopt``), so
    no other append seals under a key that might yet roll back. If another append made a
    live key for the same owner and scope first, the insert fails (``KeysTaken``) and the
    append runs again with the keys made or found on their own, as before.
    """

    def __init__(self) -> None:
        self.by_request: dict[tuple[bytes, str], tuple[_Key, NewKey]] = {}
        self.by_id: dict[int, NewKey] = {}
        self.uses: dict[UUID, tuple[int, ...]] = {}  # by event: the ids of those it uses

    def add(self, key: _Key, new: NewKey) -> None:
        self.by_request[(new.owner, new.scope)] = (key, new)
        self.by_id[new.key_id] = new

    def use(self, event_id: UUID, key_ids: Sequence[int]) -> tuple[NewKey, ...]:
        """Of the keys an event is sealed under, those made here, for its statement to
        insert."""
        new = tuple(self.by_id[key_id] for key_id in key_ids if key_id in self.by_id)
        if new:
            self.uses[event_id] = tuple(key.key_id for key in new)
        return new

    def __bool__(self) -> bool:
        return bool(self.by_id)


#: Key ids reserved from the sequence at a time, for keys an append makes itself.
_RESERVE: Final = 256
#: How long the sealer's own connection waits for a key another append is inserting.
#: A batch sent in parts holds the keys its early parts made until it commits, and may
#: itself wait for a transaction of ``Store.transaction()`` meanwhile; if that one waits
#: for such a key, PostgreSQL cannot see the deadlock (one side waits in the client), so
#: the wait ends here and the transaction is told to run again.
_KEY_WAIT: Final = "5s"


@functools.lru_cache(maxsize=4096)
def _period(channel: str, year: int, month: int) -> _Request:
    yyyy_mm = f"{year:04d}-{month:02d}"  # not strftime, which does not pad years < 1000
    return _Request(PERIOD_OWNER, f"{channel}/{yyyy_mm}", channel, f"{yyyy_mm}-01")


@dataclass(frozen=True, slots=True)
class _Key:
    key_id: int
    raw: bytes
    cipher: AESGCMSIV


def is_sealed(data: Mapping[str, Any]) -> bool:
    return "sealed" in data


def key_ids_of(data: Mapping[str, Any]) -> list[int]:
    """The data keys a stored payload's boxes are sealed under."""
    sealed = data.get("sealed")
    if not isinstance(sealed, dict):
        return []
    ids = [box["key"] for box in sealed.values()]
    content = sealed.get("content")
    if content is not None:
        ids.append(content["period_key"])
    return ids


def contact_tokens(data: Mapping[str, Any], keyring: Keyring | None = None) -> tuple[str, ...]:
    """The tokens of a payload's ``contact``, or else of each of its ``contacts``: from the
    payload when sealed, else made with ``keyring`` from the addresses."""
    contacts = [data["contact"]] if "contact" in data else data.get("contacts") or []
    if keyring is None:
        return tuple(c["token"] for c in contacts)
    return tuple(keyring.contact_token(c["kind"], c["value"]) for c in contacts)


#: How the address of a contact whose key is gone reads: this, then its token.
PLACEHOLDER_PREFIX: Final = "erased-"


def contact_placeholder(kind: str, token: str) -> dict[str, str]:
    """A contact whose address was shredded: still one contact, told apart by its token."""
    return {"kind": kind, "value": f"{PLACEHOLDER_PREFIX}{token}"}


def _content_cipher(identity: bytes, period: bytes) -> AESGCMSIV:
    """The content key of an owner's interactions of one channel and month."""
    return AESGCMSIV(hmac.digest(identity, b"interaction-store content v1" + period, "sha256"))


class Sealer:
    """Seals events' personal fields on append and opens them on read.

    Sealing keeps the data keys it has used in memory and makes missing ones on a
    connection of its own (autocommit, so a key exists before any event names it); an
    append refused because one was shredded meanwhile is sealed again (``forget``).
    Opening always asks the database which keys still exist, on the reader's own
    connection: a key shredded by another process is never used to read.
    """

    def __init__(self, conninfo: str | None = None, *, privacy_key: bytes | None = None) -> None:
        """``conninfo`` is needed to seal (an opener only uses its readers' connections);
        ``privacy_key`` is the configured secret, if any."""
        self._conninfo = conninfo
        self._configured = privacy_key
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._keyring: Keyring | None = None
        self._sealing: dict[tuple[bytes, str], _Key] = {}
        self._content: dict[tuple[int, int], AESGCMSIV] = {}
        self._opening: dict[int, tuple[bytes, bytes]] = {}  # key id: (wrapped, raw)
        self._identity_boxes: dict[tuple[int, Any], str] = {}
        self._reserved: list[int] = []  # key ids from data_keys' sequence, for FreshKeys

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # Keys ---------------------------------------------------------------------------

    def keyring(self, conn: psycopg.Connection[Any] | None = None) -> Keyring:
        keyring = self._keyring
        if keyring is None:
            if conn is None:
                with self._lock:
                    keyring = Keyring.load(self._connection(), self._configured)
            else:
                keyring = Keyring.load(conn, self._configured)
            self._keyring = keyring
        return keyring

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conninfo is None:
            raise ConfigurationError("this Sealer was made to open events, not to seal them")
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._conninfo, autocommit=True)
            # Closed with the sealer, if its store is dropped without close().
            weakref.finalize(self, self._conn.close)
            # A key another append is making, uncommitted, is waited for (see
            # _KEY_WAIT); a wait that PostgreSQL could see as a deadlock it ends first.
            self._conn.execute("SELECT set_config('lock_timeout', %s, false)", (_KEY_WAIT,))
        return self._conn

    def forget(self, key_ids: Iterable[int]) -> None:
        """Drop keys found shredded from the caches."""
        gone = set(key_ids)
        for wanted, key in list(self._sealing.items()):
            if key.key_id in gone:
                self._sealing.pop(wanted, None)
        for pair in list(self._content):
            if gone.intersection(pair):
                self._content.pop(pair, None)
        for box in list(self._identity_boxes):
            if box[0] in gone:
                self._identity_boxes.pop(box, None)
        for key_id in gone:
            self._opening.pop(key_id, None)

    def _keys_for(
        self,
        requests: Iterable[_Request],
        conn: psycopg.Connection[Any] | None = None,
        fresh: FreshKeys | None = None,
    ) -> dict[tuple[bytes, str], _Key]:
        """The live key of each request. Where the sealer knows none, it is made here into
        ``fresh`` if given (for the append to insert), else made or found in the database:
        on ``conn`` (idle, in autocommit) if given, else on the sealer's own connection."""
        wanted = {(r.owner, r.scope): r for r in requests}
        found = {w: k for w in wanted if (k := self._sealing.get(w)) is not None}
        missing = [r for w, r in wanted.items() if w not in found]
        if not missing:
            return found
        keyring = self.keyring(conn)
        if fresh is not None:
            made = []
            for r in missing:
                known = fresh.by_request.get((r.owner, r.scope))
                if known is None:
                    made.append(r)
                else:
                    found[(r.owner, r.scope)] = known[0]
            for key_id, r in zip(self._reserve(len(made), conn), made, strict=True):
                raw = os.urandom(32)
                key = _Key(key_id, raw, AESGCMSIV(raw))
                wrapped = keyring.wrap(r.owner, r.scope, raw)
                fresh.add(key, NewKey(key_id, r.owner, r.scope, r.channel, r.period, wrapped))
                found[(r.owner, r.scope)] = key
            return found
        if conn is None:
            with self._lock:
                try:
                    keys = _make_keys(self._connection(), keyring, missing)
                except psycopg.errors.LockNotAvailable:
                    raise ConcurrencyError(
                        "another append is making a data key this one needs, and has not"
                        f" finished in {_KEY_WAIT}; if this append is part of a transaction,"
                        " that append may be waiting for it (a deadlock): roll the"
                        " transaction back and retry it"
                    ) from None
        else:
            keys = _make_keys(conn, keyring, missing)
        for key_id, owner, scope, raw in keys:
            key = _Key(key_id, raw, AESGCMSIV(raw))
            self._remember(owner, scope, key)
            found[(owner, scope)] = key
        return found

    def _remember(self, owner: bytes, scope: str, key: _Key) -> None:
        if len(self._sealing) > 100_000:
            self._sealing.clear()
            self._content.clear()
        self._sealing[(owner, scope)] = key

    def adopt(self, fresh: FreshKeys, written: Iterable[UUID]) -> None:
        """The keys made for an append that its committed events use (``written``, their
        ids): the next appends seal under them. A key only events found stored already
        would have used was never inserted, and a key known meanwhile is kept."""
        inserted = {key_id for event_id in written for key_id in fresh.uses.get(event_id, ())}
        for key, new in fresh.by_request.values():
            if new.key_id in inserted and (new.owner, new.scope) not in self._sealing:
                self._remember(new.owner, new.scope, key)

    def _reserve(self, count: int, conn: psycopg.Connection[Any] | None) -> list[int]:
        """``count`` unused key ids, taken from data_keys' own sequence in blocks."""
        if not count:
            return []
        with self._lock:
            if len(self._reserved) < count:
                db = conn if conn is not None else self._connection()
                rows = db.execute(
                    "SELECT nextval(pg_get_serial_sequence('data_keys', 'key_id'))"
                    " FROM generate_series(1, %s)",
                    (max(_RESERVE, count - len(self._reserved)),),
                ).fetchall()
                self._reserved.extend(row[0] for row in rows)
            taken, self._reserved = self._reserved[:count], self._reserved[count:]
        return taken

    # Sealing ------------------------------------------------------------------------

    def seal(
        self,
        events: Sequence[tuple[UUID, str, datetime, dict[str, Any]]],
        dumps: Callable[[dict[str, Any]], bytes],
        conn: psycopg.Connection[Any] | None = None,
        fresh: FreshKeys | None = None,
    ) -> list[tuple[bytes | None, tuple[int, ...]]]:
        """Each event's data with its personal fields sealed, as ``dumps`` writes it, and
        the keys it used.

        ``events`` are (id, type, occurred_at, data as JSON); for data with nothing
        personal, (None, ()). The keys of the whole batch are found (or made) first, in
        one round trip, on ``conn`` if given (idle, in autocommit: the append's own, so
        that appenders do not queue for the sealer's), or made into ``fresh`` for the
        append to insert (see ``FreshKeys``); then each event is sealed and
        written out at once, so the objects sealing makes die young instead of burdening
        the garbage collector.
        """
        keyring = self.keyring(conn)
        plans = [_plan(keyring, kind, occurred_at, data) for _, kind, occurred_at, data in events]
        keys = self._keys_of(plans, conn, fresh)
        sealed: list[tuple[bytes | None, tuple[int, ...]]] = []
        for (event_id, event_type, _, data), plan in zip(events, plans, strict=True):
            if plan is None:
                sealed.append((None, ()))
                continue
            plain, identity, content = _split(keyring, event_type, data, plan.contact_token)
            owner = keys[(plan.owner, "identity")]
            boxes: dict[str, Any] = {
                "identity": {
                    "key": owner.key_id,
                    "fields": tuple(identity),
                    "box": self._identity_box(owner, identity),
                }
            }
            if plan.period is None:
                plain["sealed"] = boxes
                sealed.append((dumps(plain), (owner.key_id,)))
                continue
            period = keys[(PERIOD_OWNER, plan.period.scope)]
            pair = (owner.key_id, period.key_id)
            cipher = self._content.get(pair)
            if cipher is None:
                cipher = self._content[pair] = _content_cipher(owner.raw, period.raw)
            boxes["content"] = {
                "key": owner.key_id,
                "period_key": period.key_id,
                "fields": tuple(content),
                "box": _encrypt(cipher, event_id.bytes, b"content", content),
            }
            plain["sealed"] = boxes
            sealed.append((dumps(plain), pair))
        return sealed

    def _keys_of(
        self,
        plans: Sequence[_Plan | None],
        conn: psycopg.Connection[Any] | None,
        fresh: FreshKeys | None,
    ) -> dict[tuple[bytes, str], _Key]:
        """The keys the plans need, by (owner, scope): known, else found or made."""
        wanted: dict[tuple[bytes, str], _Request | None] = {}
        for plan in plans:
            if plan is not None:
                wanted[(plan.owner, "identity")] = None
                if plan.period is not None:
                    wanted[(PERIOD_OWNER, plan.period.scope)] = plan.period
        found = {w: key for w in wanted if (key := self._sealing.get(w)) is not None}
        if len(found) < len(wanted):
            missing = [request or _Request(*w) for w, request in wanted.items() if w not in found]
            found.update(self._keys_for(missing, conn, fresh))
        return found

    def _identity_box(self, key: _Key, values: dict[str, Any]) -> str:
        """An identity box: the same values under the same key are the same bytes, so the
        box of a contact met before is not sealed again. (That two events of one owner
        share an address says no more than their contacts' equal tokens.)"""
        # An interaction's are an address and maybe a handle, both strings; a customer's
        # may hold lists, and are known by their JSON.
        if len(values) <= 2 and all(type(value) is str for value in values.values()):
            memo: tuple[int, Any] = (key.key_id, tuple(values.items()))
        else:
            memo = (key.key_id, orjson.dumps(values, option=orjson.OPT_SORT_KEYS))
        box = self._identity_boxes.get(memo)
        if box is None:
            plaintext = orjson.dumps(values, option=orjson.OPT_SORT_KEYS)
            sealed = key.cipher.encrypt(_IDENTITY_NONCE, plaintext, b"identity")
            box = binascii.b2a_base64(sealed, newline=False).decode("ascii")
            if len(self._identity_boxes) > 100_000:
                self._identity_boxes.clear()
            self._identity_boxes[memo] = box
        return box

    # Opening ------------------------------------------------------------------------

    def open_all(
        self, conn: psycopg.Connection[Any], payloads: Sequence[tuple[UUID, dict[str, Any]]]
    ) -> list[tuple[dict[str, Any], tuple[str, ...]]]:
        """Stored payloads (with their events' ids) with their boxes opened, placeholders
        where a key is gone, each with its contacts' tokens (see ``contact_tokens``)."""
        ids = {key_id for _, data in payloads for key_id in key_ids_of(data)}
        raws = self._raw_keys(conn, ids) if ids else {}
        opened = []
        for event_id, data in payloads:
            if is_sealed(data):
                opened.append((self._open(event_id, data, raws), contact_tokens(data)))
            elif "contact" in data or "contacts" in data:  # stored as given
                opened.append((data, contact_tokens(data, self.keyring(conn))))
            else:
                opened.append((data, ()))
        return opened

    def _raw_keys(self, conn: psycopg.Connection[Any], ids: set[int]) -> dict[int, bytes]:
        rows = conn.execute(
            "SELECT key_id, owner, scope, key FROM data_keys"
            " WHERE key_id = ANY (%s) AND key IS NOT NULL",
            (list(ids),),
        ).fetchall()
        keyring: Keyring | None = None
        raws = {}
        for key_id, owner, scope, wrapped in rows:
            wrapped = bytes(wrapped)
            memo = self._opening.get(key_id)
            if memo is None or memo[0] != wrapped:
                keyring = keyring or self.keyring(conn)
                memo = (wrapped, keyring.unwrap(bytes(owner), scope, wrapped))
                self._opening[key_id] = memo
            raws[key_id] = memo[1]
        for key_id in ids - raws.keys():
            self._opening.pop(key_id, None)
        if len(self._opening) > 100_000:
            self._opening.clear()
        return raws

    def _open(
        self, event_id: UUID, data: dict[str, Any], raws: Mapping[int, bytes]
    ) -> dict[str, Any]:
        opened = {k: v for k, v in data.items() if k != "sealed"}
        for purpose, box in data["sealed"].items():
            values = None
            identity = raws.get(box["key"])
            cipher: AESGCMSIV | None = None
            if purpose == "content":
                period = raws.get(box["period_key"])
                if identity is not None and period is not None:
                    cipher = _content_cipher(identity, period)
            elif identity is not None:
                cipher = AESGCMSIV(identity)
            if cipher is not None:
                sealed = base64.b64decode(box["box"])
                if purpose == "identity":
                    plaintext = cipher.decrypt(_IDENTITY_NONCE, sealed, b"identity")
                else:
                    eid = event_id.bytes
                    plaintext = cipher.decrypt(eid[:12], sealed, eid + purpose.encode())
                values = orjson.loads(plaintext)
            for field in box["fields"]:
                _restore(opened, field, values)
        return opened


class _Plan(NamedTuple):
    """What sealing an event needs: its owner's token (whose identity key seals its
    identity box), for an interaction with content its channel's month's key, and the
    token of its contact, if it has one."""

    owner: bytes
    period: _Request | None
    contact_token: str | None


def _plan(
    keyring: Keyring, event_type: str, occurred_at: datetime, data: dict[str, Any]
) -> _Plan | None:
    """How to seal an event; None: it has nothing personal."""
    contact = data.get("contact")
    token = None if contact is None else keyring.token_and_hex(_identity(contact))
    if token is not None and "channel" in data:  # an interaction
        named = data.get("customer_id")
        owner = keyring.token(f"customer:{named}") if named else token[0]
        period = None
        if not _CONTENT.isdisjoint(data):
            period = _period(data["channel"], occurred_at.year, occurred_at.month)
        return _Plan(owner, period, token[1])
    if event_type not in _CUSTOMER_TYPES or not (
        "name" in data or contact is not None or data.get("contacts")
    ):
        return None
    owner = keyring.token(f"customer:{data['customer_id']}")
    return _Plan(owner, None, None if token is None else token[1])


def _identity(contact: Mapping[str, str]) -> str:
    return f"{contact['kind']}:{contact['value']}"


def _split(
    keyring: Keyring, event_type: str, data: dict[str, Any], contact_token: str | None
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``data`` as (what stays in the clear, the identity box's fields, the content
    box's fields); contacts keep their kind and gain their token (the contact's is
    given)."""
    if contact_token is not None and "channel" in data:  # an interaction
        plain = data.copy()
        contact = data["contact"]
        plain["contact"] = {"kind": contact["kind"], "token": contact_token}
        identity = {"contact": contact["value"]}
        if "handle" in plain:
            identity["handle"] = plain.pop("handle")
        return (
            plain,
            identity,
            {field: plain.pop(field) for field in CONTENT_FIELDS if field in plain},
        )
    plain = dict(data)
    identity = {}
    if contact_token is not None:
        contact = plain["contact"]
        identity["contact"] = contact["value"]
        plain["contact"] = {"kind": contact["kind"], "token": contact_token}
    if "name" in plain:
        identity["name"] = plain.pop("name")
    if plain.get("contacts"):
        contacts = plain["contacts"]
        identity["contacts"] = [c["value"] for c in contacts]
        plain["contacts"] = [{"kind": c["kind"], "token": _token(keyring, c)} for c in contacts]
    return plain, identity, {}


def _token(keyring: Keyring, contact: Mapping[str, str]) -> str:
    return keyring.contact_token(contact["kind"], contact["value"])


def _encrypt(cipher: AESGCMSIV, event_id: bytes, purpose: bytes, values: dict[str, Any]) -> str:
    plaintext = orjson.dumps(values, option=orjson.OPT_SORT_KEYS)
    # AES-GCM-SIV with the event's id as nonce: deterministic, so the same event sealed
    # again is the same bytes, and safe though a nonce repeats (RFC 8452).
    sealed = cipher.encrypt(event_id[:12], plaintext, event_id + purpose)
    return binascii.b2a_base64(sealed, newline=False).decode("ascii")


def _restore(data: dict[str, Any], field: str, values: Mapping[str, Any] | None) -> None:
    """Put a sealed field back, from its box or as its placeholder."""
    if field == "contact":
        kind, token = data["contact"]["kind"], data["contact"]["token"]
        data["contact"] = (
            {"kind": kind, "value": values["contact"]}
            if values is not None
            else contact_placeholder(kind, token)
        )
    elif field == "contacts":
        data["contacts"] = [
            {"kind": c["kind"], "value": values["contacts"][i]}
            if values is not None
            else contact_placeholder(c["kind"], c["token"])
            for i, c in enumerate(data["contacts"])
        ]
    elif values is not None:
        data[field] = values[field]
    else:
        data[field] = [] if field in _LISTS else {} if field in _OBJECTS else PLACEHOLDER
