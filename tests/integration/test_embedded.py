"""The embedded default, in real processes: start, reuse, stop on exit, db start/stop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERACTION_STORE_")}
    return subprocess.run(
        [sys.executable, "-m", "interaction_store.cli", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # a short path: the server's Unix socket lives in it
    return tmp_path_factory.mktemp("emb")


def test_commands_start_the_embedded_server_reuse_it_and_stop_it(data_dir: Path) -> None:
    migrated = cli(data_dir, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert (data_dir / "pgdata" / "PG_VERSION").exists()
    assert "stopped" in cli(data_dir, "db", "status").stdout

    loaded = cli(data_dir, "demo")
    assert "appended 14" in loaded.stdout
    # the next start reuses the same data folder
    assert len(cli(data_dir, "tail").stdout.splitlines()) == 14
    assert "stopped" in cli(data_dir, "db", "status").stdout


def test_db_start_keeps_it_running_until_db_stop(data_dir: Path) -> None:
    started = cli(data_dir, "db", "start")
    try:
        assert started.returncode == 0, started.stderr
        url = started.stdout.strip()
        assert url.startswith("postgresql://")
        assert cli(data_dir, "db", "url").stdout.strip() == url
        assert "running" in cli(data_dir, "db", "status").stdout
        assert cli(data_dir, "migrate").returncode == 0
        assert "running" in cli(data_dir, "db", "status").stdout  # a joining command leaves it up
    finally:
        stopped = cli(data_dir, "db", "stop")
    assert "stopped" in stopped.stdout
    assert "stopped" in cli(data_dir, "db", "status").stdout
    assert cli(data_dir, "db", "url").returncode == 1
