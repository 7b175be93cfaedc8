"""API keys: a recognisable prefix, stored only as a hash, each with its scopes.

A key reads ``isk_<key_id>_<secret>``: ``isk_`` says what it is (secret scanners can look
for it), ``key_id`` finds its row, and only the SHA-256 of the whole key is stored. The
key itself is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg_pool import ConnectionPool

__all__ = ["PREFIX", "SCOPES", "ApiKey", "create_key", "list_keys", "revoke_key", "verify_key"]

PREFIX: Final = "isk_"
#: What a key may do. ``admin`` may do everything.
SCOPES: Final = ("events:append", "timeline:read", "audit:read", "admin")
_KEY = re.compile(r"^isk_([a-z0-9]{8})_([A-Za-z0-9_-]{32,64})$")


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None

    def allows(self, scope: str) -> bool:
        return self.revoked_at is None and (scope in self.scopes or "admin" in self.scopes)


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def create_key(
    pool: ConnectionPool[psycopg.Connection[Any]], name: str, scopes: list[str]
) -> tuple[str, ApiKey]:
    """A new key with these scopes: the key (shown this once) and its record."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(
            f"scopes must be some of {', '.join(SCOPES)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    if not name.strip():
        raise ValueError("a key needs a name (who or what uses it)")
    if "\x00" in name:
        raise ValueError("a key's name cannot hold a NUL character")
    key_id = secrets.token_hex(4)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    with pool.connection() as conn:
        row = conn.execute(
            """
            INSERT INTO api_keys (key_id, name, key_hash, scopes) VALUES (%s, %s, %s, %s)
            RETURNING key_id, name, scopes, created_at, revoked_at
            """,
            (key_id, name.strip(), _hash(key), sorted(set(scopes))),
        ).fetchone()
    assert row is not None
    return key, ApiKey(row[0], row[1], tuple(row[2]), row[3], row[4])


def list_keys(pool: ConnectionPool[psycopg.Connection[Any]]) -> list[ApiKey]:
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT key_id, name, scopes, created_at, revoked_at FROM api_keys ORDER BY created_at"
        ).fetchall()
    return [ApiKey(r[0], r[1], tuple(r[2]), r[3], r[4]) for r in rows]


def revoke_key(pool: ConnectionPool[psycopg.Connection[Any]], key_id: str) -> bool:
    """Revoke a key by its id (the part after ``isk_``); False if there is no such key."""
    with pool.connection() as conn:
        return (
            conn.execute(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = %s",
                (key_id.removeprefix(PREFIX).split("_")[0],),
            ).rowcount
            == 1
        )


def verify_key(pool: ConnectionPool[psycopg.Connection[Any]], key: str) -> ApiKey | None:
    """The live key record for a presented key, or None (malformed, unknown, revoked)."""
    match = _KEY.match(key)
    if match is None:
        return None
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT key_id, name, scopes, created_at, revoked_at, key_hash FROM api_keys"
            " WHERE key_id = %s",
            (match[1],),
        ).fetchone()
    if row is None or row[4] is not None or not hmac.compare_digest(bytes(row[5]), _hash(key)):
        return None
    return ApiKey(row[0], row[1], tuple(row[2]), row[3], row[4])
