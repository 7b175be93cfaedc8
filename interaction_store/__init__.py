"""interaction-store: one cross-channel record of every customer interaction.

Every email, call, chat message, SMS and tweet is appended as an event to a log in
PostgreSQL; see ``Store`` for appending and reading, ``events`` for the catalogue.
"""

from __future__ import annotations

from interaction_store.db import migrate, open_pool, open_store
from interaction_store.exceptions import (
    AppendError,
    ConcurrencyError,
    ConfigurationError,
    DatabaseError,
    EmbeddedServerError,
    EventValidationError,
    FieldError,
    IdempotencyConflict,
    InteractionStoreError,
)
from interaction_store.settings import Settings
from interaction_store.store import (
    ANY,
    NO_STREAM,
    AppendedEvent,
    AppendResult,
    Checkpoint,
    RecordedEvent,
    Store,
    StreamAppend,
)

__all__ = [
    "ANY",
    "NO_STREAM",
    "AppendError",
    "AppendResult",
    "AppendedEvent",
    "Checkpoint",
    "ConcurrencyError",
    "ConfigurationError",
    "DatabaseError",
    "EmbeddedServerError",
    "EventValidationError",
    "FieldError",
    "IdempotencyConflict",
    "InteractionStoreError",
    "RecordedEvent",
    "Settings",
    "Store",
    "StreamAppend",
    "migrate",
    "open_pool",
    "open_store",
]

__version__ = "0.1.0"
