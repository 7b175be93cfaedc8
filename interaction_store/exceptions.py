"""The errors interaction-store raises; every one derives from ``InteractionStoreError``.

    InteractionStoreError
    ├── ConfigurationError
    ├── DatabaseError
    │   └── EmbeddedServerError
    ├── EventValidationError
    └── AppendError
        ├── ConcurrencyError
        └── IdempotencyConflict

A class's docstring is its default message. psycopg errors are wrapped where the store
meets the database, so callers never need to import psycopg to handle a refusal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

__all__ = [
    "AppendError",
    "ConcurrencyError",
    "ConfigurationError",
    "DatabaseError",
    "EmbeddedServerError",
    "EventValidationError",
    "FieldError",
    "IdempotencyConflict",
    "InteractionStoreError",
]


class InteractionStoreError(Exception):
    """Something went wrong in interaction-store."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigurationError(InteractionStoreError):
    """The settings are incomplete or contradictory."""


class DatabaseError(InteractionStoreError):
    """The database refused or failed an operation."""


class EmbeddedServerError(DatabaseError):
    """The embedded PostgreSQL server could not be started or stopped."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One reason an input was refused: where (batch index and dotted field) and why."""

    index: int | None
    field: str
    reason: str

    @property
    def location(self) -> str:
        prefix = f"events[{self.index}]" if self.index is not None else ""
        if not self.field:
            return prefix or "(input)"
        return f"{prefix}.{self.field}" if prefix else self.field

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "reason": self.reason}


class EventValidationError(InteractionStoreError):
    """The events are not valid; nothing of the batch was written."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        shown = "; ".join(str(e) for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"invalid events, nothing was written: {shown}{more}")


class AppendError(InteractionStoreError):
    """The append was refused; nothing of the batch was written."""


class ConcurrencyError(AppendError):
    """A concurrent append got in the way; nothing of the batch was written. Retry it.

    For a stream not at the expected version, ``stream_id``, ``expected`` and ``actual``
    say which and how; for a deadlock between two transactions they are None.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        stream_id: str | None = None,
        expected: int | str | None = None,
        actual: int | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        super().__init__(message)

    @classmethod
    def version_mismatch(cls, stream_id: str, expected: int | str, actual: int) -> ConcurrencyError:
        return cls(
            f"stream {stream_id!r} is at version {actual}, expected {expected}; "
            "nothing of the batch was written",
            stream_id=stream_id,
            expected=expected,
            actual=actual,
        )

    @classmethod
    def deadlock(cls) -> ConcurrencyError:
        return cls(
            "a concurrent transaction appended to the same streams in the opposite order "
            "(a deadlock); this transaction's appends were not made: retry it"
        )


class IdempotencyConflict(AppendError):
    """An event id is already stored with different content; nothing was written."""

    def __init__(self, event_id: UUID) -> None:
        self.event_id = event_id
        super().__init__(
            f"event {event_id} is already stored with different content; "
            "nothing of the batch was written"
        )
