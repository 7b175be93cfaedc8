"""The shapes of the API's answers, for its OpenAPI document.

Handlers build their answers as plain data and render them with orjson; these models
describe them (``responses=``), so the document says what a client gets without every
answer being validated again on the way out. ``tests/integration/test_api_schema.py``
checks the answers against this document.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AppendAnswer",
    "ContextAnswer",
    "ConversationAnswer",
    "CustomerAnswer",
    "ErasureAnswer",
    "ErasureRequest",
    "Health",
    "LogPage",
    "LookupAnswer",
    "ProblemDetails",
    "Readiness",
    "StreamPage",
    "TimelinePage",
    "problems",
]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class FieldProblem(_Answer):
    field: str | None = None
    index: int | None = None
    reason: str


class ProblemDetails(_Answer):
    """RFC 9457 problem details (``application/problem+json``)."""

    type: str
    title: str
    status: int
    detail: str | None = None
    errors: list[FieldProblem] | None = None


def problems(
    *statuses: int, described_as: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for the problems an endpoint may answer (``described_as``
    words a status for this endpoint)."""
    described = {
        400: "The body is not of its media type.",
        401: "No API key, or an unknown or revoked one.",
        403: "The API key lacks the scope.",
        404: "Not found.",
        409: "A conflict (version, event id, or a request with this key still running).",
        413: "The body is over the limit.",
        422: "The request is invalid; each field is named with its reason.",
        503: "The views have not reached min_position yet; retry after Retry-After.",
        **(described_as or {}),
    }
    schema = {"$ref": "#/components/schemas/ProblemDetails"}  # put there by create_app
    return {
        status: {
            "description": described[status],
            "content": {"application/problem+json": {"schema": schema}},
        }
        for status in statuses
    }


class Health(_Answer):
    status: str


class ProjectionLag(_Answer):
    position: int
    behind_events: int
    behind_seconds: float


class Readiness(_Answer):
    status: str
    projector: str | None = None
    projections: dict[str, ProjectionLag] | None = None


class LookupAnswer(_Answer):
    identity: str
    customer_id: str


class TimelineItem(_Answer):
    position: int
    event_id: UUID
    occurred_at: datetime
    channel: str
    direction: str
    type: str
    conversation_id: str
    contact: str
    agent_id: str | None
    subject: str | None
    snippet: str


class TimelinePage(_Answer):
    customer_id: str
    items: list[TimelineItem]
    next_cursor: str | None = Field(description="pass as cursor for the next (older) page")


class OpenConversation(_Answer):
    conversation_id: str
    channels: list[str]
    awaiting_since: datetime | None
    response_due_at: datetime | None
    breached: bool


class ContextAnswer(_Answer):
    customer_id: str
    priority: float
    account_value: float | None
    churn_risk: float | None
    open_conversations: list[OpenConversation]
    preferred_agent: str | None
    last_contact: datetime | None


class FollowUpRef(_Answer):
    position: int
    channel: str
    conversation_id: str


class ConversationAnswer(_Answer):
    conversation_id: str
    case: list[str]
    customer_id: str | None
    status: str
    channels: list[str]
    interactions: int
    opened_at: datetime | None
    last_activity_at: datetime | None
    resolved_at: datetime | None
    awaiting_since: datetime | None
    response_due_at: datetime | None
    first_response_due_at: datetime | None
    first_response_at: datetime | None
    breached: bool
    follow_ups: list[FollowUpRef]
    follows_up: list[str]


class ProfileAnswer(_Answer):
    name: str | None
    tier: str | None
    account_value: float | None
    churn_risk: float | None
    registered_at: datetime | None
    erased_at: datetime | None


class IdentityAnswer(_Answer):
    kind: str
    value: str
    confidence: str
    reason: str
    source: str | None


class ChannelAnswer(_Answer):
    count: int
    inbound: int
    outbound: int
    last_contact_at: datetime


class CustomerAnswer(_Answer):
    customer_id: str
    aliases: list[str]
    profile: ProfileAnswer | None
    identities: list[IdentityAnswer]
    channels: dict[str, ChannelAnswer]
    interactions: int
    last_contact_at: datetime | None
    open_conversations: list[ConversationAnswer]
    preferred_agent: str | None
    priority: float


class StoredEvent(_Answer):
    id: UUID
    type: str
    schema_version: int
    occurred_at: datetime
    recorded_at: datetime
    position: int
    checkpoint: str
    stream_id: str
    stream_version: int
    data: dict[str, Any]
    metadata: dict[str, Any]
    hash: str


class StreamPage(_Answer):
    stream_id: str
    events: list[StoredEvent]


class LogPage(_Answer):
    events: list[StoredEvent]
    next: str = Field(description="the checkpoint to pass as after for the next page")


class AppendedRef(_Answer):
    id: UUID
    position: int
    stream_id: str
    stream_version: int


class AppendAnswer(_Answer):
    events: list[AppendedRef]
    position: int = Field(description="the batch's highest position: pass as min_position")


class CheckpointAnswer(_Answer):
    id: int = Field(description="the checkpoint's number; audit verify --from-checkpoint takes it")
    tree_size: int = Field(description="how many events, in gap-safe order, it covers")
    root_hash: str = Field(description="the RFC 6962 Merkle root of those events (hex)")
    sealed_at: datetime
    key_id: str = Field(description="the signing key: the first 16 hex digits of its SHA-256")
    signature: str = Field(
        description="Ed25519 over 'interaction-store checkpoint v1\\n<size>\\n<root hex>\\n"
        "<sealed_at, YYYY-MM-DDTHH:MM:SS.ffffffZ>\\n' (base64)"
    )


class CheckpointPage(_Answer):
    checkpoints: list[CheckpointAnswer]
    public_key: str | None = Field(
        description="the public key checkpoints verify with (base64 of 32 bytes), if known"
    )
    next: int = Field(description="pass as after for the next page")


class AccessAnswer(_Answer):
    id: int
    read_at: datetime
    key_id: str
    key_name: str
    customer_id: str = Field(description="the customer read (its id then, if since merged)")
    endpoint: Literal["timeline", "summary", "context", "export"]


class AccessPage(_Answer):
    customer_id: str
    accesses: list[AccessAnswer]
    next: int = Field(description="pass as after for the next page")


class ErasureRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=998, description="why, for the log")


class ErasureAnswer(_Answer):
    customer_id: str = Field(description="the customer erased (an alias resolved)")
    merged_customer_ids: list[str] = Field(description="customers merged into it, erased too")
    contacts: int = Field(description="contacts whose data keys were destroyed")
    keys_shredded: int
    position: int = Field(
        description="of the customer.erased event: the views are purged once they reach it"
        " (read with min_position to wait)"
    )
