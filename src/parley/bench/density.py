"""``parley bench density``: how many concurrent calls one parley process carries, and what each costs.

Owns: composing parley exactly as ``parley serve`` does (:func:`parley.app.start`, a
:class:`~parley.app.ConversationAgent`, real sockets, the real Silero + webrtcvad ``FrameVad``, the turn
machine, chunked playback over ESL) around an :class:`~parley.agent.engine.Engine` of instant benchmark
fakes (:mod:`parley.bench.instant`), with smart-turn OFF (silence endpointing: no end-of-turn model
inference); driving it from the fake FreeSWITCH in another process (:mod:`parley.bench.load_proc`), so
this process's CPU and memory are parley's alone; and measuring, over a steady window after every call
is up:

- CPU: ``getrusage(RUSAGE_SELF)`` user+sys over the window / (calls x window seconds);
- RSS: ``/proc/self/statm`` at the window's end minus before the first call, per call (the baseline, with
  the VAD model loaded and parley started, is reported too);
- frame lag: each session's ``frame_lag_ms`` (processing time minus the frame's due time on the 20 ms
  grid) inside the window, skipping each call's first second; p50/p99;
- dropped frames: the mod_audio_stream server's count (the inbound queues drop the oldest when full);
- loop delay: how late the event loop runs a 10 ms timer (parley's own stalls; frame lag also includes
  audio that the load generator sent late).

Each size runs in a fresh worker process (``python -m parley.bench.density --worker``) so memory left
over from a previous size does not hide the next one's. Must not assert anything about the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import secrets
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from parley.agent.engine import Engine
from parley.bench.host import box_jiffies, box_usage, cpu_ms, raise_fd_limit, rss_mb
from parley.observe import timings as tm
from parley.observe.timings import percentiles

if TYPE_CHECKING:
    from parley.turns.vad import SileroModel

DEFAULT_SIZES = (10, 50, 100, 200)
DEFAULT_SECONDS = 20.0
OVERLOAD_LAG_P99_MS = 500.0
SKIP_FRAMES = 50  # each call's first second
BENCH_GREETING = "Hello."


VAD_MODES = ("batched", "per-call")


def instant_engine(vad: str = "batched") -> tuple[Engine, SileroModel]:
    """Instant fake providers + the real VAD (Silero batched across calls, or run per call); smart-turn off."""
    from parley.bench.instant import InstantLLM, InstantSTT, InstantTTS
    from parley.config import ConversationSettings
    from parley.turns.policy import TurnPolicy
    from parley.turns.vad import FrameVad, SileroModel

    silero = SileroModel.load()
    conv = ConversationSettings(greeting=BENCH_GREETING, turn={"smart_turn": False})
    return Engine(
        stt=InstantSTT(),
        llm=InstantLLM(),
        tts=InstantTTS(),
        policy=TurnPolicy(smart_turn=False),
        conversation=conv,
        vad_factory=lambda rate: FrameVad.create(silero, rate, batched=vad == "batched"),
        smart_turn=None,
    ), silero


class _LoadProcess:
    """The load generator child: JSON events on its stdout, its stderr kept (last lines) for errors."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr: deque[str] = deque(maxlen=20)
        self._drain = asyncio.ensure_future(self._read_stderr())

    @classmethod
    async def spawn(cls, calls: int, seconds: float, password: str, secret: str) -> _LoadProcess:
        from parley.bench.load_proc import PASSWORD_ENV, SECRET_ENV

        env = {**os.environ, PASSWORD_ENV: password, SECRET_ENV: secret, "OPENBLAS_NUM_THREADS": "1"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "parley.bench.load_proc", "--calls", str(calls), "--seconds", str(seconds),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        return cls(proc)

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr.append(line.decode(errors="replace").rstrip())

    async def expect(self, event: str, timeout: float) -> dict[str, object]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while line := await self.proc.stdout.readline():
                with contextlib.suppress(ValueError):
                    msg = json.loads(line)
                    if isinstance(msg, dict) and msg.get("event") == event:
                        return msg
        raise RuntimeError(f"load generator ended before {event!r}: " + " | ".join(self.stderr))

    async def send(self, obj: dict[str, object]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj).encode() + b"\n")
        await self.proc.stdin.drain()

    async def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        if self.proc.returncode is None:
            try:
                async with asyncio.timeout(15):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._drain.cancel()
        await asyncio.gather(self._drain, return_exceptions=True)


async def _probe_loop(delays: list[float], period_s: float = 0.01) -> None:
    """How late this event loop runs a 10 ms timer: parley's own stalls, apart from late-arriving audio."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + period_s
        await asyncio.sleep(period_s)
        delays.append(1000.0 * (loop.time() - due))


async def measure(calls: int, seconds: float, vad: str = "batched") -> dict[str, object]:
    """One size, in this process: start parley, let the child place the calls, measure the window."""
    from parley import app
    from parley.config import AudioStreamSettings, EslSettings, FreeSwitchSettings, PlaybackSettings, Settings

    raise_fd_limit(calls)
    engine, silero = await asyncio.to_thread(instant_engine, vad)
    password, secret = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    load = await _LoadProcess.spawn(calls, seconds, password, secret)
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as spool:
        try:
            ready = await load.expect("ready", timeout=60)
            settings = Settings(
                freeswitch=FreeSwitchSettings(
                    esl=EslSettings(port=int(str(ready["esl_port"])), password=password),
                    audio_stream=AudioStreamSettings(listen_port=0, token_secret=secret),
                    playback=PlaybackSettings(spool_dir=spool),
                ),
                conversation=engine.conversation,
            )
            agent = app.ConversationAgent(engine)
            running = await app.start(settings, agent)
            try:
                gc.collect()
                baseline = rss_mb()
                await load.send({"ws_url": f"ws://127.0.0.1:{running.server.port}/call/{{uuid}}"})
                placed = await load.expect("placed", timeout=60 + calls)
                cpu0, t0, box0 = cpu_ms(), time.monotonic(), box_jiffies()
                first = {u: len(s.frame_lag_ms) for u, s in agent.sessions.items()}
                loop_delays: list[float] = []
                probe = asyncio.ensure_future(_probe_loop(loop_delays))
                try:
                    await load.expect("window_end", timeout=seconds + 120)
                finally:
                    probe.cancel()
                cpu1, t1, box1 = cpu_ms(), time.monotonic(), box_jiffies()
                steady = rss_mb()
                last = {u: len(s.frame_lag_ms) for u, s in agent.sessions.items()}
                done = await load.expect("done", timeout=120)
                with contextlib.suppress(TimeoutError):  # every call retired: streams closed, drops counted
                    async with asyncio.timeout(10):
                        await asyncio.gather(*(c.retired.wait() for c in list(running.bridge.calls.values())))
            finally:
                await running.close()
        finally:
            await load.close()
    lags: list[float] = []
    vs_best: list[float] = []  # each call's lag minus its own smallest: free of where its first frame fell
    for u, end in last.items():
        mine = agent.sessions[u].frame_lag_ms[max(first.get(u, 0), SKIP_FRAMES) : end]
        lags.extend(mine)
        if mine:
            best = min(mine)
            vs_best.extend(x - best for x in mine)
    lag = percentiles(lags, (50.0, 99.0))
    rel = percentiles(vs_best, (50.0, 99.0))
    turns = [t for s in agent.sessions.values() for t in s.turns]
    v2v = [v for t in turns if (v := t.timings.voice_to_voice_ms) is not None]
    window = t1 - t0
    load_s = float(str(done.get("window_s") or window))
    stats = running.server.stats
    batches = silero.batcher if vad == "batched" else None
    return {
        "calls": calls,
        "vad": vad,
        "vad_windows_per_run": round(batches.windows / batches.runs, 2) if batches and batches.runs else None,
        "dropped_frames": stats.dropped,
        "frame_lag_ms": {"p50": lag["p50"], "p99": lag["p99"], "max": round(max(lags), 1) if lags else None},
        "frame_lag_vs_best_ms": {"p50": rel["p50"], "p99": rel["p99"]},
        "loop_delay_ms": {**percentiles(loop_delays, (50.0, 99.0)), "max": round(max(loop_delays, default=0.0), 1)},
        "cpu_ms_per_call_second": round((cpu1 - cpu0) / (calls * window), 3),
        "rss_mb_per_call": round((steady - baseline) / calls, 3),
        "cpu_core_percent": round(100.0 * (cpu1 - cpu0) / (1000.0 * window), 1),
        "baseline_rss_mb": round(baseline, 1),
        "steady_rss_mb": round(steady, 1),
        "window_s": round(window, 2),
        "frames": stats.frames,
        "lag_samples": len(lags),
        "calls_streaming": placed.get("streaming"),
        "ramp_s": placed.get("ramp_s"),
        "sessions": len(agent.sessions),
        "agent_errors": running.bridge.stats.agent_errors,
        "caller_turns": sum(1 for t in turns if tm.SPEECH_END in t.timings.marks),
        "replies_played": len(v2v),
        "barge_ins": sum(1 for t in turns if t.barge_in),
        "voice_to_voice_ms": dict(percentiles(v2v)),
        "loadgen_core_percent": round(float(str(done.get("window_cpu_ms") or 0.0)) / (10.0 * load_s), 1),
        "loadgen_playbacks": done.get("playbacks"),
        "box_cpu_percent": box_usage(box0, box1),
    }


async def _worker_run(calls: int, seconds: float, vad: str = "batched") -> dict[str, object]:
    """A size in a fresh worker process; its last stdout line is the run's JSON."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "parley.bench.density", "--worker", "--calls", str(calls), "--seconds", str(seconds),
        "--vad", vad, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await proc.communicate()
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = " | ".join(err.decode(errors="replace").strip().splitlines()[-8:])
        raise RuntimeError(f"density worker for {calls} calls failed ({proc.returncode}): {tail}")
    result = json.loads(lines[-1])
    assert isinstance(result, dict)
    return result


COLUMNS = (  # (title, unit, width, format)
    ("calls", "", 5, "d"),
    ("vad", "", 8, "s"),
    ("dropped", "frames", 7, "d"),
    ("lag p50", "ms", 7, ".1f"),
    ("lag p99", "ms", 7, ".1f"),
    ("p99 vs", "best", 7, ".1f"),
    ("loop", "p99 ms", 7, ".1f"),
    ("cpu ms/", "call·s", 7, ".2f"),
    ("parley", "%core", 6, ".0f"),
    ("RSS MB/", "call", 7, ".2f"),
    ("replies", "played", 7, "d"),
    ("v2v p50", "ms", 7, ".0f"),
    ("loadgen", "%core", 7, ".0f"),
    ("box", "%core", 6, ".0f"),
)


def _cells(r: dict[str, object]) -> list[object]:
    def get(key: str, sub: str) -> object:
        d = r.get(key)
        return d.get(sub) if isinstance(d, dict) else None

    return [r["calls"], r.get("vad"), r["dropped_frames"], get("frame_lag_ms", "p50"), get("frame_lag_ms", "p99"),
            get("frame_lag_vs_best_ms", "p99"), get("loop_delay_ms", "p99"), r["cpu_ms_per_call_second"],
            r.get("cpu_core_percent"), r["rss_mb_per_call"], r.get("replies_played"), get("voice_to_voice_ms", "p50"),
            r.get("loadgen_core_percent"), get("box_cpu_percent", "busy_core_percent")]


def format_table(runs: Sequence[dict[str, object]]) -> str:
    lines = ["  " + " ".join(f"{t:>{w}}" for t, _, w, _ in COLUMNS),
             "  " + " ".join(f"{u:>{w}}" for _, u, w, _ in COLUMNS)]
    for r in runs:
        cells = []
        for x, (_, _, w, spec) in zip(_cells(r), COLUMNS, strict=True):
            if spec == "s":
                cells.append(f"{str(x) if x is not None else '-':>{w}}")
                continue
            ok = isinstance(x, int | float) and math.isfinite(x) and (spec != "d" or isinstance(x, int))
            cells.append(f"{format(x, spec) if ok else '-':>{w}}")
        lines.append("  " + " ".join(cells))
    return "\n".join(lines) + "\n"


async def run_density(
    sizes: Sequence[int], seconds: float, *, out: TextIO = sys.stdout, isolate: bool = True,
    vads: Sequence[str] = ("batched",),
) -> dict[str, object]:
    w = out.write
    cores = os.cpu_count() or 1
    w("parley bench density: instant benchmark-fake STT/LLM/TTS; real sockets, Silero+webrtcvad VAD, turn machine,\n"
      "  chunked playback over ESL; smart-turn OFF (silence endpoint 700 ms); the fake FreeSWITCH (load generator)\n"
      f"  runs in its own process; each caller says 1.3 s of speech every 6 s; {cores} cores; {seconds:g} s window\n"
      "  per size after every call is up; each size in a fresh process. Frame lag is measured from each call's\n"
      "  first frame (negative: that frame arrived late); 'p99 vs best' is each call's lag minus its smallest;\n"
      "  'loop' is how late parley's event loop runs a 10 ms timer; 'box' is every process on the machine: well\n"
      "  above parley + loadgen means something else competed for the CPU during that run.\n\n")
    runs: list[dict[str, object]] = []
    overload: str | None = None
    stopped_early = False
    for i, n in enumerate(sizes):
        p99s: list[float] = []
        for vad in vads:  # side by side: the same size with each VAD mode, one after the other
            r = await (_worker_run(n, seconds, vad) if isolate else measure(n, seconds, vad))
            runs.append(r)
            w(format_table(runs).splitlines(keepends=True)[-1] if len(runs) > 1 else format_table(runs))
            out.flush()
            lag = r["frame_lag_ms"]
            p99 = lag.get("p99") if isinstance(lag, dict) else None
            p99s.append(float(p99) if isinstance(p99, int | float) else 0.0)
        if min(p99s) > OVERLOAD_LAG_P99_MS:
            overload = (f"{n} calls overload this box (frame lag p99 {min(p99s):.0f} ms > "
                        f"{OVERLOAD_LAG_P99_MS:.0f} ms)")
            if i + 1 < len(sizes):
                stopped_early = True
                overload += f"; stopped early, not run: {', '.join(map(str, sizes[i + 1 :]))}"
            break
    baseline = runs[0].get("baseline_rss_mb") if runs else None
    w(f"\n  baseline RSS (VAD model loaded, parley started, no calls): {baseline} MB\n")
    if overload:
        w(f"  {overload}\n")
    return {"runs": runs, "seconds": seconds, "cores": cores, "vad_modes": list(vads), "baseline_rss_mb": baseline,
            "overload": overload,
            "stopped_early": stopped_early, "sizes_requested": list(sizes), "smart_turn": False}


def parse_sizes(text: str) -> list[int]:
    from parley.errors import ConfigError

    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--calls takes comma-separated integers, not {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ConfigError("--calls needs at least one size, each >= 1")
    return sizes


def run_density_command(
    sizes: Sequence[int] = DEFAULT_SIZES, seconds: float = DEFAULT_SECONDS, json_path: str | None = None,
    out: TextIO = sys.stdout, vad: str = "batched",
) -> int:
    """What ``parley bench density`` does; returns the exit code."""
    from parley.bench import write_json

    vads = VAD_MODES if vad == "both" else (vad,)
    report = asyncio.run(run_density(sizes, seconds, out=out, vads=vads))
    if json_path:
        write_json(Path(json_path), report)
        out.write(f"  json: {json_path}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m parley.bench.density")
    p.add_argument("--calls", default=",".join(map(str, DEFAULT_SIZES)))
    p.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
    p.add_argument("--json")
    p.add_argument("--vad", choices=(*VAD_MODES, "both"), default="batched")
    p.add_argument("--worker", action="store_true", help="measure one size here; print its JSON line")
    args = p.parse_args(argv)
    if args.worker:
        (n,) = parse_sizes(args.calls)
        print(json.dumps(asyncio.run(measure(n, args.seconds, "per-call" if args.vad == "per-call" else "batched"))))
        return 0
    return run_density_command(parse_sizes(args.calls), args.seconds, args.json, vad=args.vad)


if __name__ == "__main__":
    raise SystemExit(main())
