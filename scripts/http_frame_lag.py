"""Does the HTTP side on parley's event loop cost the frame path? ``parley bench density``'s measurement, run
with and without the observe HTTP server being scraped hard.

``python scripts/http_frame_lag.py --calls 50 --mode none``: the density bench as it is (no HTTP server).
``--mode scrape``: the same, plus what ``parley serve`` adds to the loop: the HTTP server with ``/metrics``,
``/health`` and ``/ready``, the metrics hooks on every turn, and another process fetching ``/metrics`` and
``/health`` every ``--interval`` seconds (0.1 s: 150x a 15 s Prometheus scrape). Prints one JSON line: frame
lag, loop delay, CPU per call-second, scrapes served. A measurement, never an assertion.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

SCRAPER = """
import sys, time, httpx
base, interval = sys.argv[1], float(sys.argv[2])
n = 0
with httpx.Client(timeout=5) as c:
    while True:
        c.get(base + "/metrics").raise_for_status()
        c.get(base + "/health")
        n += 1
        print(n, flush=True)
        time.sleep(interval)
"""


async def run(calls: int, seconds: float, mode: str, interval: float) -> dict[str, Any]:
    from parley import app
    from parley.bench import density
    from parley.observe.http import HttpServer
    from parley.observe.metrics import Metrics
    from parley.observe.readiness import Readiness

    scrapers: list[asyncio.subprocess.Process] = []
    real_start = app.start

    async def start(settings: Any, agent: Any = None, **kw: Any) -> app.Running:
        running = await real_start(settings, agent, **kw)
        if mode == "scrape":
            metrics = Metrics()
            agent.metrics = metrics  # the hooks on every call and turn, as `parley serve` has them
            http = HttpServer("127.0.0.1", 0)
            Readiness(lambda: len(running.bridge.calls)).install(http)
            metrics.watch(bridge=running.bridge, esl=running.esl, streams=running.server)
            metrics.install(http)
            await http.start()
            running.http = http
            scrapers.append(await asyncio.create_subprocess_exec(
                sys.executable, "-c", SCRAPER, http.url, str(interval), stdout=asyncio.subprocess.PIPE))
        return running

    app.start = start  # type: ignore[assignment]
    try:
        result = await density.measure(calls, seconds)
    finally:
        app.start = real_start
        for proc in scrapers:
            proc.terminate()
    served = 0
    for proc in scrapers:
        out, _ = await proc.communicate()
        served = len(out.split())
    keys = ("calls", "dropped_frames", "frame_lag_ms", "frame_lag_vs_best_ms", "loop_delay_ms",
            "cpu_ms_per_call_second", "replies_played")
    return {"mode": mode, **{k: result[k] for k in keys}, "scrapes": served}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--mode", choices=("none", "scrape"), default="scrape")
    parser.add_argument("--interval", type=float, default=0.1)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.calls, args.seconds, args.mode, args.interval))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
