"""The event catalogue (v1): one frozen pydantic model per event type.

An event on the wire is ``{"id", "type", "occurred_at", "data", "metadata"}``; ``Event`` is
the discriminated union of every type on ``type``. The models are the source of truth for
``schemas/<type>.v<N>.schema.json``.

Versioning: each model carries ``schema_version``. When a type's data changes shape, its
model gains the next version and a static method ``upcast_v<N>_v<N+1>(data) -> data``;
``upcast`` applies those steps on read, so a replay always sees today's shape.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeAlias, cast, get_args
from uuid import UUID, uuid4, uuid5

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from interaction_store.exceptions import EventValidationError, FieldError
from interaction_store.identity import ContactKind, normalise_contact, parse_contact_string

__all__ = [
    "CATALOGUE",
    "EVENT_NAMESPACE",
    "NOT_BLANK_OR_CONTROL",
    "Attachment",
    "CallCompleted",
    "CallData",
    "CallbackRequested",
    "ChatEnded",
    "ChatMessage",
    "Contact",
    "ConversationEscalated",
    "ConversationLinked",
    "ConversationReopened",
    "ConversationResolved",
    "CustomerErased",
    "CustomerIdentityLinked",
    "CustomerIdentityUnlinked",
    "CustomerMerged",
    "CustomerProfileUpdated",
    "CustomerRegistered",
    "CustomerUnmerged",
    "EmailReceived",
    "EmailSent",
    "ErasedContact",
    "Event",
    "EventBase",
    "InteractionData",
    "InteractionEvent",
    "Metadata",
    "SmsReceived",
    "SmsSent",
    "TweetReceived",
    "TweetSent",
    "derive_conversation_id",
    "derive_event_id",
    "parse_events",
    "schema_version_of",
    "stream_for",
    "upcast",
    "with_conversation",
]

#: Namespace of the UUIDv5 ids derived from a source's natural key.
EVENT_NAMESPACE = UUID("6f1c2b1e-8c1a-5d4e-9b0a-3c9f1e2d7a10")

#: No white space and no control character: the same set in Python's ``re``, in pydantic's
#: (Rust) regular expressions and in JSON Schema's (the store checks stream ids with it).
NOT_BLANK_OR_CONTROL = r"[^\s\x00-\x1f\x7f-\x9f]"
Identifier = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=200, pattern=rf"^{NOT_BLANK_OR_CONTROL}+$"
    ),
]
CustomerId: TypeAlias = Identifier
ConversationId: TypeAlias = Identifier
AgentId: TypeAlias = Identifier
ExternalId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=998)]
ShortText = Annotated[str, StringConstraints(max_length=998)]


def _a_timestamp_not_a_number(value: Any) -> Any:
    # Lax validation would read a number as Unix time; the wire shape is ISO 8601.
    if isinstance(value, int | float):
        raise ValueError("must be an ISO 8601 date-time with its UTC offset, not a number")
    return value


def _in_utc(value: datetime) -> datetime:
    # Events are hashed, compared and stored in UTC (and PostgreSQL takes offsets up to
    # 15:59 only, where ISO 8601 allows more).
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


#: An ISO 8601 date-time with its offset (a string on the wire, a datetime in Python).
Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_a_timestamp_not_a_number),
    AfterValidator(_in_utc),
    Strict(False),
]
Channel = Literal["email", "voice", "chat", "sms", "twitter"]
Direction = Literal["inbound", "outbound"]


class Model(BaseModel):
    # strict: a number is not read from a string or a boolean, nor text from a number, so
    # what is accepted is what the JSON Schema files say (dates and ids still parse from
    # their ISO and UUID strings: see the fields that say strict=False).
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class Contact(Model):
    """The address an interaction came from or went to, normalised (see ``identity``)."""

    kind: ContactKind
    value: str = Field(min_length=1, max_length=320)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            kind, text = parse_contact_string(value)
            return {"kind": kind, "value": text}
        return value

    @field_validator("value")
    @classmethod
    def _normalise(cls, value: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        if kind is None:  # the kind itself was invalid and is reported on its own
            return value
        region = (info.context or {}).get("phone_region", "US")
        return normalise_contact(kind, value, phone_region=region)

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


class Metadata(BaseModel):
    """Who appended an event and why: free-form, with the usual keys named."""

    model_config = ConfigDict(frozen=True, extra="allow")

    connector: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    actor: str | None = None


class Attachment(Model):
    name: str = Field(max_length=998)
    content_type: str = Field(default="application/octet-stream", max_length=255)
    size: int = Field(ge=0)


# Interaction data ----------------------------------------------------------------------


class InteractionData(Model):
    """What every interaction carries, on any channel."""

    channel: Channel
    direction: Direction
    contact: Contact
    customer_id: CustomerId | None = None
    conversation_id: ConversationId | None = None
    thread_key: ExternalId | None = None
    external_id: ExternalId
    agent_id: AgentId | None = None
    # Source fields worth keeping (vendor ids, geo, user agent): any JSON object.
    attributes: dict[str, Any] = Field(default_factory=dict)


class EmailData(InteractionData):
    channel: Literal["email"] = "email"
    subject: str = ""
    body: str = ""
    to: list[str] = Field(default_factory=list)
    cc: list[str] = Field(default_factory=list)
    attachments: list[Attachment] = Field(default_factory=list)


class EmailReceivedData(EmailData):
    direction: Literal["inbound"] = "inbound"


class EmailSentData(EmailData):
    direction: Literal["outbound"] = "outbound"


class CallData(InteractionData):
    channel: Literal["voice"] = "voice"
    status: Literal["answered", "missed", "voicemail", "abandoned"]
    duration_s: int = Field(default=0, ge=0)
    recording_url: str | None = None
    transcript: str | None = None


class TextData(InteractionData):
    text: str = ""


class ChatMessageData(TextData):
    channel: Literal["chat"] = "chat"


class ChatEndedData(InteractionData):
    channel: Literal["chat"] = "chat"
    direction: Direction = "inbound"
    ended_by: Literal["customer", "agent", "system"] = "customer"


class SmsData(TextData):
    channel: Literal["sms"] = "sms"
    media_urls: list[str] = Field(default_factory=list)


class SmsReceivedData(SmsData):
    direction: Literal["inbound"] = "inbound"


class SmsSentData(SmsData):
    direction: Literal["outbound"] = "outbound"


class TweetData(TextData):
    channel: Literal["twitter"] = "twitter"
    kind: Literal["mention", "reply", "direct_message"] = "mention"
    handle: str | None = None


class TweetReceivedData(TweetData):
    direction: Literal["inbound"] = "inbound"


class TweetSentData(TweetData):
    direction: Literal["outbound"] = "outbound"


class CallbackRequestedData(InteractionData):
    channel: Channel = "voice"
    direction: Literal["inbound"] = "inbound"
    requested_for: Timestamp | None = None
    reason: ShortText = ""


# Customer and conversation data -------------------------------------------------------


class CustomerData(Model):
    customer_id: CustomerId


class CustomerRegisteredData(CustomerData):
    name: str | None = None
    tier: str | None = None
    account_value: float | None = Field(default=None, ge=0)
    churn_risk: float | None = Field(default=None, ge=0, le=1)
    contacts: list[Contact] = Field(default_factory=list)


class CustomerProfileUpdatedData(CustomerData):
    name: str | None = None
    tier: str | None = None
    account_value: float | None = Field(default=None, ge=0)
    churn_risk: float | None = Field(default=None, ge=0, le=1)


class IdentityLinkedData(CustomerData):
    contact: Contact
    reason: ShortText = ""
    confidence: Literal["verified", "probable"] = "verified"
    source: ShortText | None = None


class IdentityUnlinkedData(CustomerData):
    contact: Contact
    reason: ShortText = ""


class MergeData(CustomerData):
    source_customer_id: CustomerId
    reason: ShortText = ""


class ErasedContact(Model):
    """A contact of an erased customer, by the token its sealed events carry."""

    kind: ContactKind
    token: str = Field(pattern=r"^[0-9a-f]{32}$")


class CustomerErasedData(CustomerData):
    reason: ShortText = ""
    # The customers merged into this one when it was erased: erased with it.
    merged_customer_ids: list[CustomerId] = Field(default_factory=list)
    # Its contacts: their events read as erased-<token> once their keys are gone.
    erased_contacts: list[ErasedContact] = Field(default_factory=list)


class ConversationData(Model):
    conversation_id: ConversationId
    agent_id: AgentId | None = None
    reason: ShortText = ""


class ConversationLinkedData(ConversationData):
    linked_conversation_id: ConversationId


class ConversationEscalatedData(ConversationData):
    from_channel: Channel
    to_channel: Channel


class ConversationResolvedData(ConversationData):
    resolution: ShortText = ""


# Envelopes ----------------------------------------------------------------------------


class EventBase(Model):
    """The envelope every event shares. ``id`` is the idempotency key; each type narrows
    ``type``, ``schema_version`` and ``data`` to its own."""

    id: UUID = Field(default_factory=uuid4, strict=False)
    occurred_at: Timestamp
    metadata: Metadata = Field(default_factory=Metadata)
    type: str
    schema_version: int
    data: BaseModel


def derive_event_id(event_type: str, external_id: str) -> UUID:
    """The id of an interaction sent without one: from its type and ``external_id``, so
    a redelivery of the same source message is the same event."""
    return uuid5(EVENT_NAMESPACE, f"{event_type}:{external_id.strip()}")


def _natural_key_of(data: Any) -> str | None:
    key = (
        data.get("external_id") if isinstance(data, Mapping) else getattr(data, "external_id", None)
    )
    return key if isinstance(key, str) and key.strip() else None


class InteractionEvent(EventBase):
    """An interaction. Without an ``id``, one is derived from the type and ``external_id``,
    so a retried delivery of the same source message is recognised as the same event."""

    id: Annotated[
        UUID,
        WithJsonSchema(
            {
                "anyOf": [{"type": "string", "format": "uuid"}, {"type": "null"}],
                "description": "Left out or null: derived from the type and external_id.",
            }
        ),
    ] = Field(default_factory=uuid4, strict=False)
    data: InteractionData

    @model_validator(mode="before")
    @classmethod
    def _derive_id(cls, value: Any) -> Any:
        if isinstance(value, Mapping) and value.get("id") is None:
            key = _natural_key_of(value.get("data"))
            event_type = value.get("type") or cls.model_fields["type"].default
            if key is not None:
                return {**value, "id": derive_event_id(event_type, key)}
        return value


class EmailReceived(InteractionEvent):
    type: Literal["email.received"] = "email.received"
    schema_version: Literal[1] = 1
    data: EmailReceivedData


class EmailSent(InteractionEvent):
    type: Literal["email.sent"] = "email.sent"
    schema_version: Literal[1] = 1
    data: EmailSentData


class CallCompleted(InteractionEvent):
    type: Literal["call.completed"] = "call.completed"
    schema_version: Literal[1] = 1
    data: CallData


class ChatMessage(InteractionEvent):
    type: Literal["chat.message"] = "chat.message"
    schema_version: Literal[1] = 1
    data: ChatMessageData


class ChatEnded(InteractionEvent):
    type: Literal["chat.ended"] = "chat.ended"
    schema_version: Literal[1] = 1
    data: ChatEndedData


class SmsReceived(InteractionEvent):
    type: Literal["sms.received"] = "sms.received"
    schema_version: Literal[1] = 1
    data: SmsReceivedData


class SmsSent(InteractionEvent):
    type: Literal["sms.sent"] = "sms.sent"
    schema_version: Literal[1] = 1
    data: SmsSentData


class TweetReceived(InteractionEvent):
    type: Literal["tweet.received"] = "tweet.received"
    schema_version: Literal[1] = 1
    data: TweetReceivedData


class TweetSent(InteractionEvent):
    type: Literal["tweet.sent"] = "tweet.sent"
    schema_version: Literal[1] = 1
    data: TweetSentData


class CallbackRequested(InteractionEvent):
    type: Literal["callback.requested"] = "callback.requested"
    schema_version: Literal[1] = 1
    data: CallbackRequestedData


class CustomerRegistered(EventBase):
    type: Literal["customer.registered"] = "customer.registered"
    schema_version: Literal[1] = 1
    data: CustomerRegisteredData


class CustomerProfileUpdated(EventBase):
    type: Literal["customer.profile_updated"] = "customer.profile_updated"
    schema_version: Literal[1] = 1
    data: CustomerProfileUpdatedData


class CustomerIdentityLinked(EventBase):
    type: Literal["customer.identity_linked"] = "customer.identity_linked"
    schema_version: Literal[1] = 1
    data: IdentityLinkedData


class CustomerIdentityUnlinked(EventBase):
    type: Literal["customer.identity_unlinked"] = "customer.identity_unlinked"
    schema_version: Literal[1] = 1
    data: IdentityUnlinkedData


class CustomerMerged(EventBase):
    type: Literal["customer.merged"] = "customer.merged"
    schema_version: Literal[1] = 1
    data: MergeData


class CustomerUnmerged(EventBase):
    type: Literal["customer.unmerged"] = "customer.unmerged"
    schema_version: Literal[1] = 1
    data: MergeData


class CustomerErased(EventBase):
    type: Literal["customer.erased"] = "customer.erased"
    schema_version: Literal[1] = 1
    data: CustomerErasedData


class ConversationLinked(EventBase):
    type: Literal["conversation.linked"] = "conversation.linked"
    schema_version: Literal[1] = 1
    data: ConversationLinkedData


class ConversationEscalated(EventBase):
    type: Literal["conversation.escalated"] = "conversation.escalated"
    schema_version: Literal[1] = 1
    data: ConversationEscalatedData


class ConversationResolved(EventBase):
    type: Literal["conversation.resolved"] = "conversation.resolved"
    schema_version: Literal[1] = 1
    data: ConversationResolvedData


class ConversationReopened(EventBase):
    type: Literal["conversation.reopened"] = "conversation.reopened"
    schema_version: Literal[1] = 1
    data: ConversationData


Event = Annotated[
    EmailReceived
    | EmailSent
    | CallCompleted
    | ChatMessage
    | ChatEnded
    | SmsReceived
    | SmsSent
    | TweetReceived
    | TweetSent
    | CallbackRequested
    | CustomerRegistered
    | CustomerProfileUpdated
    | CustomerIdentityLinked
    | CustomerIdentityUnlinked
    | CustomerMerged
    | CustomerUnmerged
    | CustomerErased
    | ConversationLinked
    | ConversationEscalated
    | ConversationResolved
    | ConversationReopened,
    Field(discriminator="type"),
]

#: Every event model by its ``type``.
CATALOGUE: Mapping[str, type[EventBase]] = {
    model.model_fields["type"].default: model for model in get_args(get_args(Event)[0])
}

_BATCH: TypeAdapter[list[Event]] = TypeAdapter(list[Event])


@functools.cache
def schema_version_of(model: type[EventBase]) -> int:
    return cast(int, model.model_fields["schema_version"].default)


def parse_events(items: Sequence[Any], *, phone_region: str = "US") -> list[EventBase]:
    """Validate wire-shaped events (mappings) or models into models.

    Raises ``EventValidationError`` listing, for every invalid event, its index in the
    batch, the field and the reason.
    """
    if all(isinstance(item, EventBase) for item in items):
        return list(items)
    raw = [item.model_dump(mode="json") if isinstance(item, EventBase) else item for item in items]
    try:
        return cast(
            list[EventBase], _BATCH.validate_python(raw, context={"phone_region": phone_region})
        )
    except ValidationError as exc:
        raise EventValidationError([_field_error(err) for err in exc.errors()]) from None


def _field_error(err: Any) -> FieldError:
    loc = list(err["loc"])
    index = loc.pop(0) if loc and isinstance(loc[0], int) else None
    if loc and isinstance(loc[0], str) and loc[0] in CATALOGUE:  # the union's tag
        loc.pop(0)
    field = ".".join(str(part) for part in loc)
    kind = err["type"]
    if kind == "union_tag_invalid":
        got = err.get("ctx", {}).get("tag")
        return FieldError(index, "type", f"unknown event type {got!r}")
    if kind == "union_tag_not_found":
        return FieldError(index, "type", "missing: every event needs a type")
    if kind == "model_attributes_type":
        return FieldError(index, field, "must be an object")
    reason = err["msg"].removeprefix("Value error, ")
    if kind == "missing":
        reason = "required field is missing"
    elif kind == "extra_forbidden":
        reason = "unknown field"
    return FieldError(index, field, reason)


# Streams ------------------------------------------------------------------------------


def derive_conversation_id(channel: str, key: str) -> str:
    """A stable conversation id for a source thread (email root, chat session, ...)."""
    return f"cv-{uuid5(EVENT_NAMESPACE, f'{channel}:{key}').hex}"


def _conversation_of(data: InteractionData) -> str:
    """The interaction's conversation: given, or derived from its thread or source id."""
    return data.conversation_id or derive_conversation_id(
        data.channel, data.thread_key or data.external_id
    )


def with_conversation(event: EventBase) -> EventBase:
    """Fill an interaction's ``conversation_id`` from its ``thread_key`` or ``external_id``."""
    data = event.data
    if not isinstance(data, InteractionData) or data.conversation_id is not None:
        return event
    return event.model_copy(
        update={"data": data.model_copy(update={"conversation_id": _conversation_of(data)})}
    )


def stream_for(event: EventBase) -> str:
    """The stream an event belongs to: its conversation, or its customer."""
    data = event.data
    if isinstance(data, InteractionData):
        return f"conversation-{_conversation_of(data)}"
    if isinstance(data, CustomerData):
        return f"customer-{data.customer_id}"
    if isinstance(data, ConversationData):
        return f"conversation-{data.conversation_id}"
    raise TypeError(f"{type(event).__name__} names no stream")


# Upcasting ----------------------------------------------------------------------------

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def upcast(
    event_type: str,
    schema_version: int,
    data: dict[str, Any],
    catalogue: Mapping[str, type[EventBase]] = CATALOGUE,
) -> tuple[int, dict[str, Any]]:
    """Bring stored ``data`` of ``schema_version`` up to the model's current version."""
    model = catalogue.get(event_type)
    if model is None:
        return schema_version, data
    target = schema_version_of(model)
    while schema_version < target:
        step: Upcaster | None = getattr(
            model, f"upcast_v{schema_version}_v{schema_version + 1}", None
        )
        if step is None:
            raise LookupError(
                f"{model.__name__} has no upcast_v{schema_version}_v{schema_version + 1}"
            )
        data = step(data)
        schema_version += 1
    return schema_version, data
