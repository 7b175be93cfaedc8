"""Settings, read from ``INTERACTION_STORE_*`` environment variables by the caller.

Nothing here runs at import time: the CLI, the tests and applications build ``Settings()``
themselves and pass it on.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from interaction_store.policy import ServiceLevels, parse_retention

__all__ = ["Settings"]

MIB = 1024 * 1024


class Settings(BaseSettings):
    """How interaction-store connects, where it keeps its embedded database, and its limits."""

    model_config = SettingsConfigDict(env_prefix="INTERACTION_STORE_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL connection URL. Unset: an embedded server in data_dir.",
    )
    data_dir: Path = Field(
        default=Path(".interaction-store"),
        description="Folder of the embedded PostgreSQL server (created on first start).",
    )
    pool_min_size: int = Field(default=1, ge=0)
    pool_max_size: int = Field(default=10, ge=1)
    context_reads_at_once: int = Field(
        default_factory=lambda: 2 * (os.cpu_count() or 1),
        ge=1,
        description="Most routing contexts read from PostgreSQL at once (twice the cores by"
        " default); more requests wait their turn in the service.",
    )
    max_event_bytes: int = Field(
        default=MIB, ge=1024, description="Largest accepted event (its data as JSON)."
    )
    max_batch_events: int = Field(default=1000, ge=1, description="Most events in one append.")
    max_request_bytes: int = Field(
        default=16 * MIB, ge=1024, description="Largest HTTP request body accepted."
    )
    default_phone_region: str = Field(
        default="US",
        description="ISO 3166 region for phone numbers written without a country code.",
    )
    notify_channel: str = Field(
        default="interaction_store_events",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="PostgreSQL LISTEN/NOTIFY channel for wake-ups after appends.",
    )
    first_response: str = Field(
        default="voice=0s,chat=2m,sms=15m,twitter=1h,email=4h",
        description="First-response target per channel (channel=duration, comma-separated;"
        " channels left out keep their default).",
    )

    support_addresses: str = Field(
        default="",
        description="Our own email addresses (comma-separated): mail from one of them is"
        " email.sent, any other email.received.",
    )
    email_mailbox: str = Field(
        default="support",
        min_length=1,
        description="The mailbox name in each message's identity (mailbox, Message-ID): keep"
        " it the same for every feed of one mailbox, so a message is stored once.",
    )
    email_connector: bool = Field(
        default=True, description="Take mail at POST /v1/connectors/email/inbound."
    )

    imap_host: str | None = Field(
        default=None, description="The IMAP server `connect imap` polls (host name)."
    )
    imap_port: int | None = Field(
        default=None, ge=1, le=65535, description="Its port. Default: 993, or 143 unless ssl."
    )
    imap_security: Literal["ssl", "starttls", "plain"] = Field(
        default="ssl",
        description="ssl (IMAPS), starttls, or plain (unencrypted: a server on loopback only).",
    )
    imap_user: str | None = Field(default=None, description="The IMAP login.")
    imap_password: SecretStr | None = Field(default=None, description="The IMAP password.")
    imap_folders: str = Field(
        default="INBOX,Sent",
        description="The folders to poll, comma-separated: the inbox and the sent folder.",
    )
    imap_interval: float = Field(
        default=60.0, gt=0, description="Seconds between two polls of the mailbox."
    )

    twilio_auth_token: SecretStr | None = Field(
        default=None,
        description="The Twilio account's auth token: checks X-Twilio-Signature. Unset: the"
        " Twilio routes are off.",
    )
    sms_idle_gap: timedelta = Field(
        default=timedelta(hours=24),
        description="An SMS after this long a silence between the same two numbers starts a"
        " new conversation (seconds, or ISO 8601 such as PT8H).",
    )
    chatwoot_secret: SecretStr | None = Field(
        default=None,
        description="The shared secret Chatwoot's webhooks carry in X-Webhook-Secret. Unset:"
        " the Chatwoot route is off.",
    )
    x_consumer_secret: SecretStr | None = Field(
        default=None,
        description="The X app's consumer secret (API key secret): answers the CRC check and"
        " verifies x-twitter-webhooks-signature. Unset: the X route is off.",
    )
    audit_signing_key: SecretStr | None = Field(
        default=None,
        description="The Ed25519 key that signs checkpoints (base64 of its 32 bytes;"
        " `interaction-store audit keygen` makes one). Unset: the embedded default keeps one"
        " in data_dir; with a database URL, nothing is sealed.",
    )
    audit_public_key: str | None = Field(
        default=None,
        description="The public key checkpoints are verified with (base64), for a verifier"
        " that does not hold the signing key.",
    )
    audit_seal_interval: float = Field(
        default=10.0, gt=0, description="Seconds between two seals by `serve`."
    )
    privacy_key: SecretStr | None = Field(
        default=None,
        description="The secret personal data is sealed with (base64 of 32 bytes, e.g. from"
        " `openssl rand -base64 32`). Unset: one is kept in the database, made on first use."
        " Once data is sealed, it must stay the same.",
    )
    retention: str = Field(
        default="",
        description="How long each channel's content is kept, e.g. email=730d,voice=90d;"
        " `retention apply` shreds what is older. Channels not named are kept.",
    )
    public_url: str | None = Field(
        default=None,
        description="The base URL webhooks reach this service at (https://store.example.com),"
        " when a proxy stands in front: signatures cover the URL the sender used.",
    )

    @field_validator("sms_idle_gap", mode="before")
    @classmethod
    def _seconds_or_iso(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
            return float(value)  # plain seconds, as the description says
        return value

    @field_validator("sms_idle_gap")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than zero")
        return value

    @field_validator("first_response")
    @classmethod
    def _valid_service_levels(cls, value: str) -> str:
        ServiceLevels.parse(value)
        return value

    @field_validator("retention")
    @classmethod
    def _valid_retention(cls, value: str) -> str:
        parse_retention(value)
        return value

    def retention_periods(self) -> dict[str, timedelta]:
        return parse_retention(self.retention)

    def service_levels(self) -> ServiceLevels:
        return ServiceLevels.parse(self.first_response)

    def support_address_list(self) -> list[str]:
        return [a.strip().lower() for a in self.support_addresses.split(",") if a.strip()]
