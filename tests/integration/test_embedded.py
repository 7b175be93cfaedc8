"""The embedded default, in real processes: start, reuse, stop on exit, db start/stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from interaction_store.embedded import EmbeddedPostgres


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


def server_running(data_dir: Path) -> bool:
    found = subprocess.run(
        ["pgrep", "-f", f"postgres -D {data_dir / 'pgdata'}"], capture_output=True, check=False
    )
    return found.returncode == 0


def follow(data_dir: Path) -> subprocess.Popen[bytes]:
    assert cli(data_dir, "migrate").returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERACTION_STORE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "interaction_store.cli", "--data-dir", str(data_dir), "tail", "-f"],
        stdout=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + 60
    while not server_running(data_dir):
        assert time.monotonic() < deadline, "the embedded server did not start"
        time.sleep(0.1)
    time.sleep(0.5)  # past the server start, into the follow loop
    return process


def test_sigterm_stops_the_embedded_server_with_the_command(data_dir: Path) -> None:
    process = follow(data_dir)
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    assert not server_running(data_dir)


def test_a_killed_command_does_not_keep_the_server_up_forever(data_dir: Path) -> None:
    process = follow(data_dir)
    process.kill()  # no chance to let go of the server
    process.wait(30)
    assert cli(data_dir, "tail").returncode == 0
    assert not server_running(data_dir)


def test_db_start_keeps_a_server_that_another_command_started(data_dir: Path) -> None:
    process = follow(data_dir)
    try:
        assert cli(data_dir, "db", "start").returncode == 0
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    try:
        assert server_running(data_dir)
    finally:
        assert "stopped" in cli(data_dir, "db", "stop").stdout
    assert not server_running(data_dir)
    assert not (data_dir / "keep-running").exists()


def test_a_process_that_starts_it_again_counts_as_a_user_again(data_dir: Path) -> None:
    """pgserver keeps a handle per folder and process: letting go of the server and
    starting it again in one process must count that process again, so that the last
    other user, leaving, does not stop the server under it."""
    holder = follow(data_dir)  # another process using the server
    try:
        first = EmbeddedPostgres(data_dir)
        first.start()
        first.release()
        again = EmbeddedPostgres(data_dir)
        url = again.start()
    finally:
        holder.send_signal(signal.SIGTERM)  # the other user goes away
        assert holder.wait(30) == 0
    try:
        assert server_running(data_dir)
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        again.release()
    assert not server_running(data_dir)  # this process was the last user
