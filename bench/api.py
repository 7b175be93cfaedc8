"""The HTTP API under load: timeline and context reads beside the app's own /healthz, and
single-event appends.

    .venv/bin/python bench/api.py      # on the 1,000,000-event log bench/projections.py loads
    .venv/bin/python bench/api.py --events 100000 --customers 10000 --seconds 5

The log is the one ``bench/projections.py`` loads (``bench_views_<events>_<customers>`` on
the embedded server in ``.bench/pg``, loaded here too if missing). The service runs as its
own process (``interaction-store serve``, one uvicorn worker, projector on); the load comes
from another process with ``--concurrency`` threads, each with its own keep-alive
connection, on loopback. Each scenario runs ``--seconds``, after a warm-up.

The load process is ``wrk`` (Debian's package ``wrk``: one C thread, a Lua script for the
requests) when it is on the PATH, so that on two cores the client takes as little CPU from
the service as it can; ``--client python`` uses threads of httpx clients instead (heavier,
so every rate it measures is lower).

- ``/healthz`` is the framework's ceiling on this machine: the same app, no database.
- Timeline: the newest 50 of a random customer. Target: at least 40% of the /healthz rate,
  p99 under 50 ms.
- Context: the routing context of a random customer. Target: p99 under 20 ms.
- Appends: one new SMS per request. Target: at least 500 per second.

Last, with the service stopped, the app is called directly in this process (no HTTP, no
uvicorn): the microseconds of /healthz and of a timeline page through the whole app, and
of the timeline's query alone on the app's async pool, which show where the timeline's
share of the /healthz rate is decided.

The timeline, context and append requests here are plain ones with a key the service has
checked, so after their first they take the hot lane (``interaction_store/api/hot.py``);
/healthz goes through FastAPI's routing, as every other request does.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from projections import generated_log

from interaction_store.db import open_pool
from interaction_store.embedded import EmbeddedPostgres
from interaction_store.keys import create_key
from interaction_store.projections import ProjectionRunner, all_projections
from interaction_store.store import Store


def drive(
    base: str, key: str, scenario: str, customers: list[str], seconds: float, threads: int
) -> dict[str, float]:
    """Run one scenario from this (separate) process; requests/s and latency percentiles."""
    import httpx2 as httpx

    headers = {"Authorization": f"Bearer {key}"}
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    stop = threading.Event()

    def request(client: Any, rng: random.Random) -> int:
        if scenario == "healthz":
            return int(client.get("/healthz").status_code)
        if scenario == "timeline":
            customer = rng.choice(customers)
            return int(client.get(f"/v1/customers/{customer}/timeline?limit=50").status_code)
        if scenario == "context":
            customer = rng.choice(customers)
            return int(client.get(f"/v1/customers/{customer}/context").status_code)
        event = {
            "type": "sms.received",
            "occurred_at": "2026-11-22T09:00:00Z",
            "data": {
                "contact": f"phone:+1415555{rng.randint(0, 9999):04d}",
                "external_id": f"bench-{uuid.uuid4().hex}",
                "text": "Is my order on its way?",
            },
        }
        return int(client.post("/v1/events", json={"events": [event]}).status_code)

    def worker(n: int) -> None:
        rng = random.Random(n)
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            for _ in range(20):  # warm-up
                request(client, rng)
            while not stop.is_set():
                began = time.perf_counter()
                status = request(client, rng)
                latencies[n].append(time.perf_counter() - began)
                if status >= 400:
                    errors[n] += 1

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    time.sleep(2.0)  # the warm-ups
    for lat in latencies:
        lat.clear()
    began = time.perf_counter()
    time.sleep(seconds)
    counted = sum(len(lat) for lat in latencies)
    elapsed = time.perf_counter() - began
    stop.set()
    for thread in pool:
        thread.join()
    samples = sorted(x for lat in latencies for x in lat)
    cut = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "rps": counted / elapsed,
        "p50_ms": cut[49] * 1000,
        "p99_ms": cut[98] * 1000,
        "errors": float(sum(errors)),
    }


def _drive_in_process(args: tuple[Any, ...], out: Any) -> None:
    out.put(drive(*args))


WRK_SCRIPT = """
local paths = {%(paths)s}
local kind = "%(scenario)s"
local run = "%(run)s"
wrk.headers["Authorization"] = "Bearer %(key)s"
wrk.headers["Content-Type"] = "application/json"
local threads, counter = 0, 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

function request()
  counter = counter + 1
  if kind == "append" then
    local body = string.format(
      '{"events": [{"type": "sms.received", "occurred_at": "2026-11-22T09:00:00Z",'
      .. ' "data": {"contact": "phone:+1415555%%04d", "external_id": "bench-%%s-%%d-%%d",'
      .. ' "text": "Is my order on its way?"}}]}',
      math.random(0, 9999), run, thread_id, counter)
    return wrk.format("POST", "/v1/events", nil, body)
  end
  return wrk.format("GET", paths[math.random(#paths)])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{"requests": %%d, "duration_us": %%d, "errors": %%d, "p50_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def drive_wrk(
    base: str, key: str, scenario: str, customers: list[str], seconds: float, connections: int
) -> dict[str, float]:
    """Run one scenario with ``wrk`` (a separate process): a warm-up, then the measured run."""
    if scenario == "timeline":
        paths = [f"/v1/customers/{c}/timeline?limit=50" for c in customers]
    elif scenario == "context":
        paths = [f"/v1/customers/{c}/context" for c in customers]
    else:
        paths = ["/healthz"]
    measured: dict[str, float] = {}
    for duration in (2.0, seconds):  # the warm-up, then the run
        # A run token of its own for each: appended ids must not repeat the warm-up's.
        script = WRK_SCRIPT % {
            "paths": ", ".join(json.dumps(p) for p in paths),
            "scenario": scenario,
            "run": uuid.uuid4().hex[:12],
            "key": key,
        }
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(script)
        try:
            done = subprocess.run(
                ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "-s", f.name, base],
                capture_output=True,
                text=True,
                check=True,
            )
        finally:
            os.unlink(f.name)
        measured = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "rps": measured["requests"] / (measured["duration_us"] / 1e6),
        "p50_ms": measured["p50_us"] / 1000,
        "p99_ms": measured["p99_us"] / 1000,
        "errors": float(measured["errors"]),
    }


def in_process(url: str, key: str, customers: list[str], requests: int = 3000) -> dict[str, float]:
    """Microseconds per request in this process, calling the app directly (no HTTP, no
    uvicorn): /healthz and a timeline page through the whole app, and the timeline's query
    alone on the app's async pool, best of three rounds. What a read costs beside the
    framework, where the ratio to /healthz is decided."""
    import asyncio

    from interaction_store.api import create_app
    from interaction_store.settings import Settings
    from interaction_store.views import timeline_read

    app = create_app(Settings(database_url=url), projector=False, sealer=False)
    headers = [(b"authorization", f"Bearer {key}".encode()), (b"host", b"bench")]

    async def call(path: str, query: bytes) -> int:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": query, "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {},
        }  # fmt: skip
        status = 0

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            status = message.get("status", status)

        await app(scope, receive, send)
        return status

    async def best(work: Any) -> float:
        rounds = []
        for _ in range(3):
            began = time.perf_counter()
            for i in range(requests):
                await work(customers[i % len(customers)])
            rounds.append((time.perf_counter() - began) / requests * 1e6)
        return min(rounds)

    async def run() -> dict[str, float]:
        async with app.router.lifespan_context(app):
            svc = app.state.service

            async def query(customer: str) -> None:
                async with svc.reads.connection() as conn:
                    await timeline_read(customer, limit=50).run_async(conn)

            async def timeline(customer: str) -> None:
                assert await call(f"/v1/customers/{customer}/timeline", b"limit=50") == 200

            async def healthz(customer: str) -> None:
                assert await call("/healthz", b"") == 200

            return {
                "healthz_us": await best(healthz),
                "timeline_us": await best(timeline),
                "timeline_query_us": await best(query),
            }

    return asyncio.run(run())


def _report(scenario: str, r: dict[str, float]) -> None:
    print(
        f"{scenario:<9} {r['rps']:>8,.0f} req/s  p50 {r['p50_ms']:6.2f} ms"
        f"  p99 {r['p99_ms']:6.2f} ms  errors {r['errors']:.0f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--client",
        choices=("wrk", "python"),
        default="wrk" if shutil.which("wrk") else "python",
        help="the load process: wrk (default when installed) or Python threads",
    )
    args = parser.parse_args()

    server = EmbeddedPostgres(Path(".bench/pg"))
    admin_url = server.start()
    service = None
    try:
        url = generated_log(admin_url, args.events, args.customers, args.seed)
        with open_pool(url, min_size=1, max_size=4) as pool:
            store = Store(pool)
            print("catching the views up ...", flush=True)
            ProjectionRunner(store, all_projections(), batch_size=1000).catch_up()
            key, _ = create_key(pool, "bench/api.py", ["timeline:read", "events:append"])
            with pool.connection() as conn:
                customers = [
                    r[0]
                    for r in conn.execute(
                        "SELECT customer_id FROM customer_profiles ORDER BY random() LIMIT 5000"
                    )
                ]
            store.close()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        service = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from interaction_store.cli import main; main()",
                "--database-url",
                url,
                "serve",
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "INTERACTION_STORE_POOL_MAX_SIZE": "20"},
        )
        import httpx2 as httpx

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        results: dict[str, dict[str, float]] = {}
        ctx = mp.get_context("spawn")
        print(f"load from {args.client}, {args.concurrency} connections", flush=True)
        for scenario in ("healthz", "timeline", "context", "append"):
            if args.client == "wrk":
                results[scenario] = drive_wrk(
                    base, key, scenario, customers, args.seconds, args.concurrency
                )
                _report(scenario, results[scenario])
                continue
            out = ctx.Queue()
            load_process = ctx.Process(
                target=_drive_in_process,
                args=((base, key, scenario, customers, args.seconds, args.concurrency), out),
            )
            load_process.start()
            results[scenario] = out.get()
            load_process.join()
            _report(scenario, results[scenario])
        service.terminate()
        service.wait(timeout=30)
        service = None
        print("in this process, the app called directly ...", flush=True)
        costs = in_process(url, key, customers)
        results["in_process"] = costs
    finally:
        if service is not None:
            service.terminate()
            service.wait(timeout=30)
        server.release()
    health, timeline, context, append = (
        results[s] for s in ("healthz", "timeline", "context", "append")
    )
    ratio = timeline["rps"] / health["rps"]
    print(
        f"\ntimeline: {ratio:.2f} of /healthz (target >= 0.40), p99 {timeline['p99_ms']:.1f} ms"
        f" (target < 50)\ncontext: p99 {context['p99_ms']:.1f} ms (target < 20)\n"
        f"appends: {append['rps']:,.0f} single-event requests/s (target >= 500)\n"
        f"in-process, per request: /healthz {costs['healthz_us']:.0f} µs, timeline"
        f" {costs['timeline_us']:.0f} µs, of which its query alone (async pool, rows)"
        f" {costs['timeline_query_us']:.0f} µs"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
