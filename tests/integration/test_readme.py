"""The README's Python examples run as written, one after the other."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def test_the_python_examples_run_in_order(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store_api, timeline = python_blocks()
    monkeypatch.setenv("INTERACTION_STORE_DATABASE_URL", database_url)
    for example in (store_api, timeline):
        exec(compile(example, str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert "stored at position 1 stream version 1" in printed
    assert "{'kind': 'email', 'value': 'margaret.chen@northwind.example'}" in printed
    assert "True ['Invoice INV-7731 bills 40 pallets, we shipped 28']" in printed
    assert "open ['email'] True\n0.0\n" in printed
