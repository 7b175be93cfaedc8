"""Demo data: a small hand-written story and a seeded generator of synthetic interactions."""

from __future__ import annotations

from interaction_store.demo.generator import generate
from interaction_store.demo.story import story

__all__ = ["generate", "story"]
