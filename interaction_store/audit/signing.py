"""The Ed25519 key that signs checkpoints, and the message a checkpoint's signature covers.

Keys are written as base64 of their 32 raw bytes. The sealer needs the private key
(``INTERACTION_STORE_AUDIT_SIGNING_KEY``); a verifier needs only the public one
(``INTERACTION_STORE_AUDIT_PUBLIC_KEY``, or the one derived from the private key). With the
embedded default, a key is generated on first use and kept in the data folder.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from interaction_store.audit.chain import format_time
from interaction_store.exceptions import ConfigurationError
from interaction_store.settings import Settings

__all__ = [
    "KEY_FILE",
    "PublicKey",
    "SigningKey",
    "checkpoint_message",
    "format_time",
    "public_key_from_settings",
    "signing_key_from_settings",
]

#: The embedded default's key, in the data folder.
KEY_FILE = "audit-signing.key"


def checkpoint_message(tree_size: int, root_hash: bytes, sealed_at: datetime) -> bytes:
    """What a checkpoint's signature covers."""
    return (
        f"interaction-store checkpoint v1\n{tree_size}\n{root_hash.hex()}\n"
        f"{format_time(sealed_at)}\n"
    ).encode()


@dataclass(frozen=True)
class PublicKey:
    key: Ed25519PublicKey

    @classmethod
    def from_text(cls, text: str) -> PublicKey:
        return cls(Ed25519PublicKey.from_public_bytes(_raw(text, "public key")))

    @property
    def raw(self) -> bytes:
        return self.key.public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        """A short name of the key: the first 16 hex digits of SHA-256 of its bytes."""
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def text(self) -> str:
        return base64.b64encode(self.raw).decode()

    def verifies(self, signature: bytes, message: bytes) -> bool:
        try:
            self.key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class SigningKey:
    key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_text(cls, text: str) -> SigningKey:
        return cls(Ed25519PrivateKey.from_private_bytes(_raw(text, "signing key")))

    def text(self) -> str:
        raw = self.key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return base64.b64encode(raw).decode()

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.key.public_key())

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message)


def _raw(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f"the audit {what} is not base64") from None
    if len(raw) != 32:
        raise ConfigurationError(f"the audit {what} is {len(raw)} bytes; Ed25519 keys are 32")
    return raw


def signing_key_from_settings(settings: Settings) -> SigningKey | None:
    """The configured key; with the embedded default, the data folder's (made on first
    use); else None."""
    if settings.audit_signing_key is not None:
        return SigningKey.from_text(settings.audit_signing_key.get_secret_value())
    if settings.database_url is not None:
        return None
    path = Path(settings.data_dir) / KEY_FILE
    if path.exists():
        return SigningKey.from_text(path.read_text())
    key = SigningKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.text() + "\n")
    return key


def public_key_from_settings(settings: Settings) -> PublicKey | None:
    if settings.audit_public_key:
        return PublicKey.from_text(settings.audit_public_key)
    key = signing_key_from_settings(settings)
    return None if key is None else key.public
