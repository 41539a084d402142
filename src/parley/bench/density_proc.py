"""One parley worker of ``parley bench density``: parley composed as ``parley serve`` does, measured from inside.

Owns: starting parley exactly as one ``parley serve`` worker does (:func:`parley.app.start`, a
:class:`~parley.app.ConversationAgent`, real sockets; with ``--reuse-port`` on the shared WebSocket port and
``--ownership stream``, as each of ``parley serve --workers N`` runs) around the instant engine
(:func:`parley.bench.density.instant_engine`), on the chosen event loop, and measuring its own process over
the window the parent marks: CPU (``getrusage``), RSS, each session's frame lag, the event loop's timer delay,
dropped frames; optionally a cProfile of the window (``--profile``). Must not know about the other workers
or the load generator: the parent (:mod:`parley.bench.density`) coordinates them and adds the figures up.

Protocol with the parent, JSON lines: this process prints ``{"event": "ready", "port": P, "baseline_rss_mb":
..}`` once parley is up and its ESL connected; then reads ``start`` (the window opens), ``end`` (it closes)
and ``finish`` (the calls are hung up: wait for them to retire, stop parley) on stdin, and prints its figures
as one ``{"event": "result", ...}`` line. Secrets come from the environment, as for the load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Literal

from parley.bench.host import cpu_ms, raise_fd_limit, rss_mb

SKIP_FRAMES = 50  # each call's first second


def _emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def _line(expected: str) -> None:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != expected:
        raise RuntimeError(f"density worker: expected {expected!r} from the parent, got {line.strip()!r}")


async def _probe_loop(delays: list[float], period_s: float = 0.01) -> None:
    """How late this event loop runs a 10 ms timer: parley's own stalls, apart from late-arriving audio."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + period_s
        await asyncio.sleep(period_s)
        delays.append(1000.0 * (loop.time() - due))


async def run(
    *, esl_port: int, ws_port: int, password: str, secret: str, ownership: Literal["event", "stream"],
    reuse_port: bool, vad: str, profile: str | None,
) -> None:
    from parley import app
    from parley.bench.density import instant_engine
    from parley.config import AudioStreamSettings, EslSettings, FreeSwitchSettings, PlaybackSettings, Settings

    raise_fd_limit(2048)
    engine, silero = await asyncio.to_thread(instant_engine, vad)
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as spool:
        settings = Settings(
            freeswitch=FreeSwitchSettings(
                esl=EslSettings(port=esl_port, password=password),
                audio_stream=AudioStreamSettings(listen_port=ws_port, token_secret=secret),
                playback=PlaybackSettings(spool_dir=spool),
            ),
            conversation=engine.conversation,
        )
        agent = app.ConversationAgent(engine, keep_sessions=1_000_000)  # every call's frame lags (default: 200)
        running = await app.start(settings, agent, call_ownership=ownership, reuse_port=reuse_port)
        try:
            gc.collect()
            baseline = rss_mb()
            _emit("ready", port=running.server.port, baseline_rss_mb=round(baseline, 2), pid=os.getpid())
            await _line("start")
            # CPU time, not wall time: on a shared box a stage's wall time counts other processes' turns too
            profiler = cProfile.Profile(time.process_time) if profile else None
            cpu0, t0 = cpu_ms(), time.monotonic()
            first = {u: len(s.frame_lag_ms) for u, s in agent.sessions.items()}
            frames0 = running.server.stats.frames
            delays: list[float] = []
            probe = asyncio.ensure_future(_probe_loop(delays))
            if profiler is not None:
                profiler.enable()
            try:
                await _line("end")
            finally:
                if profiler is not None:
                    profiler.disable()
                probe.cancel()
            cpu1, t1 = cpu_ms(), time.monotonic()
            steady = rss_mb()
            frames1 = running.server.stats.frames
            last = {u: len(s.frame_lag_ms) for u, s in agent.sessions.items()}
            if profiler is not None and profile:
                profiler.dump_stats(profile)
            await _line("finish")
            with contextlib.suppress(TimeoutError):  # every call retired: streams closed, drops counted
                async with asyncio.timeout(10):
                    await asyncio.gather(*(c.retired.wait() for c in list(running.bridge.calls.values())))
        finally:
            await running.close()
    lags: list[float] = []
    vs_best: list[float] = []  # each call's lag minus its own smallest: free of where its first frame fell
    for u, end in last.items():
        mine = agent.sessions[u].frame_lag_ms[max(first.get(u, 0), SKIP_FRAMES) : end]
        lags.extend(round(x, 2) for x in mine)
        if mine:
            best = min(mine)
            vs_best.extend(round(x - best, 2) for x in mine)
    turns = [t for s in agent.sessions.values() for t in s.turns]
    batches = silero.batcher if vad == "batched" else None
    stats = running.server.stats
    _emit(
        "result",
        pid=os.getpid(),
        sessions=len(agent.sessions),
        window_cpu_ms=round(cpu1 - cpu0, 1),
        window_s=round(t1 - t0, 3),
        window_frames=frames1 - frames0,
        baseline_rss_mb=round(baseline, 2),
        steady_rss_mb=round(steady, 2),
        dropped_frames=stats.dropped,
        frames=stats.frames,
        lags=lags,
        lags_vs_best=vs_best,
        loop_delays=[round(x, 2) for x in delays],
        agent_errors=running.bridge.stats.agent_errors,
        replies=sum(1 for t in turns if t.timings.voice_to_voice_ms is not None),
        vad_windows=batches.windows if batches else None,
        vad_runs=batches.runs if batches else None,
        loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
        ws_speedups=_ws_speedups(),
    )


def _ws_speedups() -> bool:
    import websockets.frames  # noqa: F401  # imports the C speedups if it can

    return sys.modules.get("websockets.speedups") is not None


def main(argv: Sequence[str] | None = None) -> int:
    from parley.bench.load_proc import PASSWORD_ENV, SECRET_ENV
    from parley.eventloop import run_on

    p = argparse.ArgumentParser(prog="python -m parley.bench.density_proc")
    p.add_argument("--esl-port", type=int, required=True)
    p.add_argument("--ws-port", type=int, required=True)
    p.add_argument("--ownership", choices=("event", "stream"), default="event")
    p.add_argument("--reuse-port", action="store_true")
    p.add_argument("--vad", choices=("batched", "per-call"), default="batched")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--no-ws-speedups", action="store_true", help="websockets' pure-Python frame masking")
    p.add_argument("--profile", help="write a cProfile of the window to this file")
    args = p.parse_args(argv)
    if args.no_ws_speedups:
        sys.modules["websockets.speedups"] = None  # type: ignore[assignment]  # websockets falls back on ImportError
    password, secret = os.environ.get(PASSWORD_ENV, ""), os.environ.get(SECRET_ENV, "")
    run_on(args.loop, run(esl_port=args.esl_port, ws_port=args.ws_port, password=password, secret=secret,
                          ownership=args.ownership, reuse_port=args.reuse_port, vad=args.vad, profile=args.profile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
