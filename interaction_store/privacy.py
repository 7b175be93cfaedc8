"""Personal data in the log: sealed under per-identity data keys, so it can be shredded.

An event's personal fields leave its stored payload for one or two sealed boxes:

- the **identity** box (the contact's address, a handle, a customer's name and contacts),
  under the owner's ``identity`` key, destroyed only by erasure;
- the **content** box (subjects, bodies, texts, transcripts, recipients, attachments,
  recording and media links, attributes), under the owner's key for that channel and
  month, which retention destroys once the month is older than the channel's period.

The owner is the customer the event names, else the interaction's contact. In the stored
payload a contact keeps its kind and gains a *token*, a keyed hash of ``kind:value``:
attribution, lookups and replays still tell contacts apart when their keys are gone, and
the token says nothing to whoever lacks the secret. A box is AES-256-GCM with the event's
id as associated data and a nonce derived from the key and the plaintext (an HMAC), so
the same event sealed again is the same bytes: a retried append is still recognised as
the one stored. The hash chain covers the stored, sealed bytes, so shredding a key
breaks no verification.

Data keys live in ``data_keys``, wrapped (AES-GCM) with a key derived from the privacy
secret; the secret is ``INTERACTION_STORE_PRIVACY_KEY`` or, when that is unset, one kept
in the database (``privacy_secret``), made on first use. Reading a box whose key was
shredded gives placeholders: ``[erased]`` for text, empty lists and objects, and
``erased-<token>`` for a contact's address.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import orjson
import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from interaction_store.exceptions import ConfigurationError, DatabaseError
from interaction_store.settings import Settings

__all__ = [
    "CONTENT_FIELDS",
    "PLACEHOLDER",
    "KeyRequest",
    "Keyring",
    "KeysShredded",
    "Sealer",
    "contact_placeholder",
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


class Keyring:
    """The privacy secret's two uses: tokens for identities, and wrapping data keys."""

    def __init__(self, secret: bytes) -> None:
        self._index = hmac.digest(secret, b"interaction-store identity tokens v1", "sha256")
        self._wrap = AESGCM(hmac.digest(secret, b"interaction-store key wrapping v1", "sha256"))
        self._tokens: dict[str, bytes] = {}

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
        token = self._tokens.get(identity)
        if token is None:
            token = hmac.digest(self._index, identity.encode(), "sha256")[:_TOKEN_BYTES]
            if len(self._tokens) > 200_000:
                self._tokens.clear()
            self._tokens[identity] = token
        return token

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


@dataclass(frozen=True, slots=True)
class KeyRequest:
    """A data key wanted for sealing: its owner's token and its scope."""

    owner: bytes
    scope: str
    channel: str | None = None
    period: str | None = None  # the month's first day, ISO


@dataclass(frozen=True, slots=True)
class _Key:
    key_id: int
    cipher: AESGCM
    raw: bytes


def is_sealed(data: Mapping[str, Any]) -> bool:
    return "sealed" in data


def key_ids_of(data: Mapping[str, Any]) -> list[int]:
    """The data keys a stored payload's boxes are sealed under."""
    sealed = data.get("sealed")
    return [box["key"] for box in sealed.values()] if isinstance(sealed, dict) else []


def contact_placeholder(kind: str, token: str) -> dict[str, str]:
    """A contact whose address was shredded: still one contact, told apart by its token."""
    return {"kind": kind, "value": f"erased-{token}"}


class Sealer:
    """Seals events' personal fields on append and opens them on read.

    Sealing keeps the data keys it has used in memory and makes missing ones on a
    connection of its own (autocommit, so a key exists before any event names it).
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
        self._opening: dict[int, tuple[bytes, AESGCM]] = {}

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
        return self._conn

    def forget(self, key_ids: Iterable[int]) -> None:
        """Drop keys found shredded from the sealing cache."""
        gone = set(key_ids)
        for wanted, key in list(self._sealing.items()):
            if key.key_id in gone:
                self._sealing.pop(wanted, None)
        for key_id in gone:
            self._opening.pop(key_id, None)

    def _keys_for(self, requests: Iterable[KeyRequest]) -> dict[tuple[bytes, str], _Key]:
        """The live key of each request, made where there is none."""
        wanted = {(r.owner, r.scope): r for r in requests}
        found = {w: k for w in wanted if (k := self._sealing.get(w)) is not None}
        missing = [r for w, r in wanted.items() if w not in found]
        if not missing:
            return found
        keyring = self.keyring()
        with self._lock:
            conn = self._connection()
            rows = [
                {
                    "owner": r.owner.hex(),
                    "scope": r.scope,
                    "channel": r.channel,
                    "period": r.period,
                    "key": keyring.wrap(r.owner, r.scope, os.urandom(32)).hex(),
                }
                for r in missing
            ]
            params = (orjson.dumps(rows).decode(),)
            conn.execute(
                """
                INSERT INTO data_keys (owner, scope, channel, period, key)
                SELECT decode(r.owner, 'hex'), r.scope, r.channel, r.period,
                       decode(r.key, 'hex')
                  FROM jsonb_to_recordset(%s::jsonb)
                       AS r(owner text, scope text, channel text, period date, key text)
                ON CONFLICT (owner, scope) WHERE shredded_at IS NULL DO NOTHING
                """,
                params,
            )
            live = conn.execute(
                """
                SELECT k.key_id, k.owner, k.scope, k.key
                  FROM jsonb_to_recordset(%s::jsonb) AS r(owner text, scope text)
                  JOIN data_keys AS k
                    ON k.owner = decode(r.owner, 'hex') AND k.scope = r.scope
                   AND k.shredded_at IS NULL
                """,
                params,
            ).fetchall()
        for key_id, owner, scope, wrapped in live:
            raw = keyring.unwrap(bytes(owner), scope, bytes(wrapped))
            key = _Key(key_id, AESGCM(raw), raw)
            self._sealing[(bytes(owner), scope)] = key
            found[(bytes(owner), scope)] = key
        if len(self._sealing) > 100_000:
            self._sealing.clear()
        return found

    # Sealing ------------------------------------------------------------------------

    def seal(
        self, events: Sequence[tuple[UUID, str, datetime, dict[str, Any]]]
    ) -> list[tuple[dict[str, Any] | None, tuple[int, ...]]]:
        """Each event's data with its personal fields sealed, and the keys it used.

        ``events`` are (id, type, occurred_at, data as JSON); for data with nothing
        personal, (None, ()).
        """
        keyring = self.keyring()
        plans = [_plan(keyring, *event) for event in events]
        keys = self._keys_for(r for plan in plans if plan for r, _, _ in plan.boxes)
        sealed: list[tuple[dict[str, Any] | None, tuple[int, ...]]] = []
        for (event_id, _, _, _), plan in zip(events, plans, strict=True):
            if plan is None:
                sealed.append((None, ()))
                continue
            boxes: dict[str, Any] = {}
            used = []
            for request, purpose, values in plan.boxes:
                key = keys[(request.owner, request.scope)]
                boxes[purpose] = {
                    "key": key.key_id,
                    "fields": list(values),
                    "box": _encrypt(key, f"{event_id}/{purpose}".encode(), values),
                }
                used.append(key.key_id)
            sealed.append(({**plan.plain, "sealed": boxes}, tuple(used)))
        return sealed

    # Opening ------------------------------------------------------------------------

    def open_all(
        self, conn: psycopg.Connection[Any], payloads: Sequence[tuple[UUID, dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        """Stored payloads (with their events' ids) with their boxes opened, placeholders
        where a key is gone."""
        ids = {key_id for _, data in payloads for key_id in key_ids_of(data)}
        if not ids:
            return [data for _, data in payloads]
        ciphers = self._ciphers(conn, ids)
        return [
            _open(event_id, data, ciphers) if is_sealed(data) else data
            for event_id, data in payloads
        ]

    def _ciphers(self, conn: psycopg.Connection[Any], ids: set[int]) -> dict[int, AESGCM]:
        rows = conn.execute(
            "SELECT key_id, owner, scope, key FROM data_keys"
            " WHERE key_id = ANY (%s) AND key IS NOT NULL",
            (list(ids),),
        ).fetchall()
        keyring: Keyring | None = None
        ciphers = {}
        for key_id, owner, scope, wrapped in rows:
            wrapped = bytes(wrapped)
            memo = self._opening.get(key_id)
            if memo is None or memo[0] != wrapped:
                keyring = keyring or self.keyring(conn)
                memo = (wrapped, AESGCM(keyring.unwrap(bytes(owner), scope, wrapped)))
                self._opening[key_id] = memo
            ciphers[key_id] = memo[1]
        for key_id in ids - ciphers.keys():
            self._opening.pop(key_id, None)
        if len(self._opening) > 100_000:
            self._opening.clear()
        return ciphers


@dataclass(frozen=True, slots=True)
class _Plan:
    plain: dict[str, Any]
    boxes: list[tuple[KeyRequest, str, dict[str, Any]]]


def _plan(
    keyring: Keyring, event_id: UUID, event_type: str, occurred_at: datetime, data: dict[str, Any]
) -> _Plan | None:
    """What of ``data`` goes into which box under which key; None: nothing personal."""
    if "contact" in data and "channel" in data:  # an interaction
        plain = dict(data)
        contact = plain.pop("contact")
        identity: dict[str, Any] = {"contact": contact["value"]}
        plain["contact"] = {"kind": contact["kind"], "token": _token(keyring, contact)}
        if "handle" in plain:
            identity["handle"] = plain.pop("handle")
        content: dict[str, Any] = {f: plain.pop(f) for f in CONTENT_FIELDS if f in plain}
        named = data.get("customer_id")
        owner = keyring.token(
            f"customer:{named}" if named else f"{contact['kind']}:{contact['value']}"
        )
        channel = data["channel"]
        month = f"{occurred_at.year:04d}-{occurred_at.month:02d}"  # strftime: no padding
        boxes = [(KeyRequest(owner, "identity"), "identity", identity)]
        if content:
            request = KeyRequest(owner, f"{channel}/{month}", channel, f"{month}-01")
            boxes.append((request, "content", content))
        return _Plan(plain, boxes)
    if event_type not in _CUSTOMER_TYPES:
        return None
    plain = dict(data)
    identity = {}
    if "name" in plain:
        identity["name"] = plain.pop("name")
    if "contact" in plain:
        contact = plain["contact"]
        identity["contact"] = contact["value"]
        plain["contact"] = {"kind": contact["kind"], "token": _token(keyring, contact)}
    if plain.get("contacts"):
        contacts = plain["contacts"]
        identity["contacts"] = [c["value"] for c in contacts]
        plain["contacts"] = [{"kind": c["kind"], "token": _token(keyring, c)} for c in contacts]
    if not identity:
        return None
    owner = keyring.token(f"customer:{data['customer_id']}")
    return _Plan(plain, [(KeyRequest(owner, "identity"), "identity", identity)])


def _token(keyring: Keyring, contact: Mapping[str, str]) -> str:
    return keyring.token(f"{contact['kind']}:{contact['value']}").hex()


def _encrypt(key: _Key, aad: bytes, values: dict[str, Any]) -> str:
    plaintext = orjson.dumps(values, option=orjson.OPT_SORT_KEYS)
    # Deterministic: the same event sealed again gives the same bytes (see the module).
    nonce = hmac.digest(key.raw, aad + b"\x00" + plaintext, "sha256")[:12]
    return base64.b64encode(nonce + key.cipher.encrypt(nonce, plaintext, aad)).decode()


def _open(event_id: UUID, data: dict[str, Any], ciphers: Mapping[int, AESGCM]) -> dict[str, Any]:
    opened = {k: v for k, v in data.items() if k != "sealed"}
    for purpose, box in data["sealed"].items():
        values = None
        cipher = ciphers.get(box["key"])
        if cipher is not None:
            raw = base64.b64decode(box["box"])
            aad = f"{event_id}/{purpose}".encode()
            values = orjson.loads(cipher.decrypt(raw[:12], raw[12:], aad))
        for field in box["fields"]:
            _restore(opened, field, values)
    return opened


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
