"""`interaction-store serve --demo` (what `make run` runs) as a real process, and the
README's curl examples against it."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.helpers import cli_command

README = Path(__file__).resolve().parents[2] / "README.md"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The base URL and the demo key of a `serve --demo` process."""
    port = free_port()
    log = tmp_path / "serve.log"
    command = cli_command(database_url, "serve", "--demo", "--port", str(port))
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "Uvicorn running" not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.1)
        printed = log.read_text()
        key = re.search(r"export KEY=(isk_\S+)", printed)
        assert key, printed
        assert "curl" in printed
        yield f"http://127.0.0.1:{port}", key[1]
    finally:
        process.terminate()
        process.wait(timeout=15)


def readme_curls() -> list[str]:
    block = re.search(r"```console\n\$ make run\n(.*?)```", README.read_text(), re.DOTALL)
    assert block, "the README shows what `make run` prints"
    return [line.strip() for line in block[1].splitlines() if line.strip().startswith("curl ")]


def test_the_readme_curl_examples_work_against_make_runs_server(
    served: tuple[str, str],
) -> None:
    base, key = served
    curls = readme_curls()
    assert len(curls) == 3
    answers = []
    for line in curls:
        line = line.replace("http://127.0.0.1:8000", base)
        done = subprocess.run(
            ["bash", "-c", line],
            env={**os.environ, "KEY": key},
            capture_output=True,
            timeout=30,
            check=True,
        )
        answers.append(orjson.loads(done.stdout))
    lookup, timeline, appended = answers
    assert lookup["customer_id"] == "cu-northwind-mchen"
    assert timeline["items"][0]["channel"] == "email"
    assert appended["events"][0]["position"] > 0
