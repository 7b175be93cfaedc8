"""`interaction-store import cdr` on an Asterisk Master.csv, against a real database."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from interaction_store.cli import cli
from tests.connectors.test_asterisk import MASTER_CSV
from tests.helpers import count_events


def test_a_cdr_file_imports_once_and_a_bad_row_is_reported(
    database_url: str, tmp_path: Path
) -> None:
    csv_file = tmp_path / "Master.csv"
    csv_file.write_text(MASTER_CSV.read_text() + '"","x","y"\n')

    def run() -> object:
        return CliRunner().invoke(
            cli,
            ["--database-url", database_url, "import", "cdr", str(csv_file),
             "--our-number", "+14155550100", "--timezone", "America/Los_Angeles"],
        )  # fmt: skip

    first = run()
    assert first.exit_code == 1, first.output  # type: ignore[attr-defined]
    assert "appended 4, already present 0, rejected 1" in first.output  # type: ignore[attr-defined]
    assert "internal calls skipped 1" in first.output  # type: ignore[attr-defined]
    assert "line 6: 3 columns" in first.output  # type: ignore[attr-defined]
    again = run()
    assert "appended 0, already present 4, rejected 1" in again.output  # type: ignore[attr-defined]
    assert count_events(database_url) == 4


def test_an_unknown_time_zone_is_refused(database_url: str) -> None:
    args = ["import", "cdr", str(MASTER_CSV), "--timezone", "Mars/Base"]
    result = CliRunner().invoke(cli, ["--database-url", database_url, *args])
    assert result.exit_code == 2
    assert "'Mars/Base' is not a time zone" in result.output
    assert count_events(database_url) == 0
