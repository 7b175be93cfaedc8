"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def test_the_store_api_example_runs(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    [example] = python_blocks()
    monkeypatch.setenv("INTERACTION_STORE_DATABASE_URL", database_url)
    exec(compile(example, str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert "stored at position 1 stream version 1" in printed
    assert "{'kind': 'email', 'value': 'margaret.chen@northwind.example'}" in printed
