"""Appending what an import or a poller read, in batches, reporting each bad entry by its
place instead of failing the whole run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from interaction_store.events import parse_events
from interaction_store.exceptions import AppendError, EventValidationError
from interaction_store.store import Store

__all__ = ["Tally", "append_entries"]


@dataclass
class Tally:
    """What a run appended, found already stored, and rejected (entry number, reason)."""

    appended: int = 0
    already_present: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"appended {self.appended}, already present {self.already_present}, "
            f"rejected {len(self.rejected)}"
        )


def append_entries(store: Store, entries: list[tuple[int, Any]], tally: Tally) -> None:
    """Append one batch of (entry number, wire-shaped event), atomically when all are
    good; invalid entries are dropped and reported first, and a batch refused as a whole
    (an id reused with other content) is retried one entry at a time to name the culprit."""
    while entries:
        try:
            models = parse_events([obj for _, obj in entries], phone_region=store.phone_region)
            result = store.append_batch(models)
        except EventValidationError as exc:
            bad = {e.index for e in exc.errors if e.index is not None}
            if not bad:
                raise
            for error in exc.errors:
                if error.index is not None:
                    number = entries[error.index][0]
                    tally.rejected.append((number, f"{error.field}: {error.reason}"))
            entries = [entry for i, entry in enumerate(entries) if i not in bad]
            continue
        except AppendError as exc:
            if len(entries) == 1:
                tally.rejected.append((entries[0][0], exc.message))
                return
            for entry in entries:  # find the culprit: one entry at a time
                append_entries(store, [entry], tally)
            return
        tally.appended += result.appended
        tally.already_present += result.already_present
        return
