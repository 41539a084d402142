"""Does the HTTP side on parley's event loop cost the frame path? ``parley bench density``'s own run (its load
generator and worker processes, its figures), with and without the observe HTTP server being scraped hard.

``python scripts/http_frame_lag.py --calls 50 --mode none``: the density bench as it is (no HTTP server).
``--mode scrape``: the same, but each parley worker also runs what ``parley serve`` adds to its loop: the HTTP
server with ``/metrics``, ``/health`` and ``/ready``, the metrics hooks on every call and turn, and another
process fetching ``/metrics`` and ``/health`` every ``--interval`` seconds (0.1 s: 150x a 15 s Prometheus
scrape). Prints one JSON line: frame lag, loop delay, CPU per call-second, scrapes served. A measurement, never
an assertion; run the two modes alternately, the box's other load moves the figures more than this does.
``--mode cost``: what one ``/metrics`` scrape costs the loop in CPU time (see :func:`cost`), which the box's
other load does not move.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODE = "PARLEY_HTTP_LAG_MODE"
COUNT = "PARLEY_HTTP_LAG_COUNT"  # the scraper appends a line per scrape to this file
SCRAPER = """
import sys, time, httpx
base, interval, count = sys.argv[1], float(sys.argv[2]), sys.argv[3]
with httpx.Client(timeout=5) as c, open(count, "a") as out:
    while True:
        c.get(base + "/metrics").raise_for_status()
        c.get(base + "/health")
        out.write("1\\n")
        out.flush()
        time.sleep(interval)
"""


def worker(argv: Sequence[str]) -> int:
    """One density worker (``parley.bench.density_proc``) with the HTTP side added to its parley."""
    from parley import app
    from parley.bench import density_proc
    from parley.observe.http import HttpServer
    from parley.observe.metrics import Metrics
    from parley.observe.readiness import Readiness

    real_start = app.start

    async def start(settings: Any, agent: Any = None, **kw: Any) -> app.Running:
        running = await real_start(settings, agent, **kw)
        metrics = Metrics()
        agent.metrics = metrics  # the hooks on every call and turn, as `parley serve` has them
        http = HttpServer("127.0.0.1", 0)
        Readiness(lambda: len(running.bridge.calls)).install(http)
        metrics.watch(bridge=running.bridge, esl=running.esl, streams=running.server)
        metrics.install(http)
        await http.start()
        running.http = http  # closed with parley
        # the scraper ends by itself (a refused connection) once parley closes its HTTP server
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", SCRAPER, http.url, os.environ.get("PARLEY_HTTP_LAG_INTERVAL", "0.1"),
            os.environ[COUNT], stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        return running

    app.start = start  # type: ignore[assignment]
    return density_proc.main(list(argv))


HERE = str(Path(__file__).resolve().parent)  # put on the workers' PYTHONPATH: they run this module


async def run(calls: int, seconds: float, mode: str, interval: float) -> dict[str, Any]:
    from parley.bench import density

    with tempfile.TemporaryDirectory(prefix="parley-http-lag-") as tmp:
        count = Path(tmp) / "scrapes"
        count.touch()
        real_spawn = density._Child.spawn

        async def spawn(name: str, module: str, args: Sequence[str], env: dict[str, str]) -> Any:
            if mode == "scrape" and module == "parley.bench.density_proc":
                env = {**env, MODE: "worker", COUNT: str(count), "PARLEY_HTTP_LAG_INTERVAL": str(interval),
                       "PYTHONPATH": os.pathsep.join(p for p in (env.get("PYTHONPATH"), HERE) if p)}
                module = "http_frame_lag"
            return await real_spawn(name, module, args, env)

        density._Child.spawn = spawn  # type: ignore[assignment,method-assign]
        try:
            result = await density.measure(calls, seconds)
        finally:
            density._Child.spawn = real_spawn  # type: ignore[method-assign]
        scrapes = len(count.read_text().split())
    keys = ("calls", "dropped_frames", "frame_lag_ms", "frame_lag_vs_best_ms", "loop_delay_ms",
            "cpu_ms_per_call_second", "answered", "turns")
    return {"mode": mode, **{k: result.get(k) for k in keys}, "scrapes": scrapes}


CLIENT = """
import sys, httpx
base, n, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with httpx.Client(timeout=10) as c:
    for _ in range(n):
        c.get(base + path)
"""


async def cost(scrapes: int) -> dict[str, Any]:
    """What one scrape costs the event loop, measured as CPU time (robust to the box's other load): a
    registry fed like a busy worker's (1,000 turns, 64 hangup causes, 12 fallback pairs), ``/metrics`` fetched
    ``scrapes`` times in a row by another process (then ``/health``: the HTTP side's own share); this process's
    CPU per request, the exposition's size, and ``render()`` alone (the synchronous part that blocks the
    loop) as the median of 200 calls."""
    import resource
    import statistics
    import time

    from parley.observe import timings as tm
    from parley.observe.http import HttpServer
    from parley.observe.metrics import Metrics

    def cpu_ms() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return (r.ru_utime + r.ru_stime) * 1000.0

    m = Metrics()
    for i in range(1000):
        t = tm.TurnTimings()
        t.mark(tm.SPEECH_END, 100.0)
        for j, stage in enumerate((tm.ENDPOINT, tm.STT_FINAL, tm.LLM_FIRST_TOKEN, tm.FIRST_CHUNK, tm.TTS_FIRST_AUDIO,
                                   tm.PLAYBACK_COMMAND, tm.PLAYBACK_START, tm.FIRST_AUDIBLE)):
            t.mark(stage, 100.0 + (i % 7 + 1) * (j + 1) * 0.05)
        m.observe_turn(t)
    for i in range(64):
        m.call_started()
        m.call_ended(f"CAUSE_{i}", 0.01 * i)
    for i in range(12):
        m.fallback("stt", f"a{i}", "b")
    renders = []
    for _ in range(200):
        t0 = time.perf_counter()
        text = m.render()
        renders.append((time.perf_counter() - t0) * 1000.0)
    server = HttpServer("127.0.0.1", 0)
    m.install(server)
    spent: dict[str, float] = {}
    async with server:
        for path in ("/metrics", "/health"):
            c0 = cpu_ms()
            client = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, server.url, str(scrapes), path)
            await client.wait()
            spent[path] = round((cpu_ms() - c0) / scrapes, 3)
    return {"mode": "cost", "scrapes": scrapes, "server_cpu_ms_per_request": spent,
            "render_ms_median": round(statistics.median(renders), 3), "exposition_bytes": len(text)}


def main() -> int:
    if os.environ.get(MODE) == "worker":
        return worker(sys.argv[1:])
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--mode", choices=("none", "scrape", "cost"), default="scrape")
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--scrapes", type=int, default=500, help="--mode cost: how many /metrics fetches")
    args = parser.parse_args()
    if args.mode == "cost":
        print(json.dumps(asyncio.run(cost(args.scrapes))))
    else:
        print(json.dumps(asyncio.run(run(args.calls, args.seconds, args.mode, args.interval))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
