"""The timeline's snippet cleans only a prefix of long texts; it must not show."""

from __future__ import annotations

import html
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from interaction_store.projections.timeline import SNIPPET_LENGTH, snippet

PIECES = ["<b>", "</b>", "&amp;", "&#x27;", "&", "<", ">", " ", "  \n", "hello", "x" * 50]
PIECES.append('<div class="' + "y" * 300 + '">')


def whole_text_snippet(text: str) -> str:
    """The definition: clean the whole text, then cut."""
    plain = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]*>", " ", text))).strip()
    if len(plain) <= SNIPPET_LENGTH:
        return plain
    return plain[: SNIPPET_LENGTH - 1].rstrip() + "…"


@settings(max_examples=500)
@given(st.lists(st.sampled_from(PIECES) | st.text(max_size=20), max_size=200).map("".join))
def test_a_snippet_is_the_whole_texts_cleaned_and_cut(text: str) -> None:
    assert snippet(text) == whole_text_snippet(text)


def test_a_snippet_of_html_reads_as_text() -> None:
    assert snippet("<p>Hello&nbsp;<b>there</b></p>\n\n  again") == "Hello there again"
    assert snippet(None) == ""
    long = snippet("word " * 100)
    assert len(long) == SNIPPET_LENGTH
    assert long.endswith("…")
