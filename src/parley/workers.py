"""``parley serve --workers N``: N ``parley serve`` processes on one box behind one WebSocket port.

Owns: starting the worker processes, passing on SIGTERM/SIGINT (a drain in each), and the exit code (0 when
every worker exited 0). Must not know what a worker does: each is a plain ``parley serve --worker-index i``
with its own event loop, models, ESL connection and HTTP port, and the kernel spreads new mod_audio_stream
connections over them (SO_REUSEPORT on the shared port).

Each worker runs with ``--call-ownership stream`` (it acts only on the calls whose stream it holds; a
restarted stream that the kernel hands to another worker moves the call there), serves ``/ready``,
``/health`` and ``/metrics`` on ``observe.port + i`` (list every port in the scrape config; the counters add
up across them in the query: each worker has its own prometheus_client registry, see
:mod:`parley.observe.metrics` for why not the library's multiprocess mode) and writes its call records as
host ``<host>-w<i>``, so one worker's start never marks another's calls interrupted. ``POST /drain`` on any
worker drains them all (it signals this supervisor).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger("parley.workers")
SPAWN_CHECK_S = 0.5


def worker_command(config: str | None, index: int, serve_args: Sequence[str]) -> list[str]:
    """The command line of worker ``index`` (``serve_args``: the flags passed on, e.g. the drain grace)."""
    head = [sys.executable, "-m", "parley.cli"] + (["--config", config] if config else [])
    return [*head, "serve", "--worker-index", str(index), "--call-ownership", "stream", *serve_args]


def run_workers(n: int, config: str | None, serve_args: Sequence[str]) -> int:
    """Run ``n`` workers until they all exit; the first SIGTERM/SIGINT is passed on to each (a drain), a
    second one too (each worker then ends its grace at once). 0 when every worker exited 0, else 1."""
    if n < 1:
        raise ValueError("need at least one worker")
    procs: list[subprocess.Popen[bytes]] = []
    signals = 0

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        log.info("signal %d: draining %d worker(s)", signum, sum(p.poll() is None for p in procs))
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    # The records schema is brought up to date once, before any worker starts: N workers migrating the same
    # database at once race ("table calls already exists") and one of them dies at start. Each worker's own
    # migration then finds the schema at its head and does nothing.
    head = [sys.executable, "-m", "parley.cli"] + (["--config", config] if config else [])
    migrated = subprocess.run([*head, "records", "migrate"], check=False)
    if migrated.returncode != 0:
        log.error("could not migrate the call records database (exit %d); not starting workers", migrated.returncode)
        return 1
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for i in range(n):
            procs.append(subprocess.Popen(worker_command(config, i, serve_args)))
        log.info("started %d workers: pids %s", n, ", ".join(str(p.pid) for p in procs))
        while any(p.poll() is None for p in procs):
            if not signals and any(p.poll() not in (None, 0) for p in procs):
                log.error("a worker failed (exit %s); draining the others",
                          [p.returncode for p in procs if p.returncode not in (None, 0)])
                forward(signal.SIGTERM, None)
            time.sleep(SPAWN_CHECK_S)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = [p.returncode for p in procs]
    log.info("workers exited: %s", codes)
    return 0 if all(c == 0 for c in codes) else 1


def signal_supervisor() -> None:
    """From a worker: ask the supervisor (its parent) to drain every worker."""
    os.kill(os.getppid(), signal.SIGTERM)
