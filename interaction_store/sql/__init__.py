"""Named SQL queries, kept in ``queries.sql`` and loaded once."""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import LiteralString

__all__ = ["query"]

_HEADER = re.compile(r"^-- name: (\w+) --$", re.MULTILINE)


@functools.cache
def _queries() -> dict[str, str]:
    text = resources.files(__package__).joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    # parts: [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def query(name: str) -> LiteralString:
    """The SQL text of the named query."""
    return _queries()[name]  # mypy reads LiteralString as str
