"""Tamper evidence and audit tools over the event log."""

from __future__ import annotations

__all__: list[str] = []
