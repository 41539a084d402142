"""``parley bench density``: how many concurrent calls parley carries on this box, and what each costs.

Owns: running each size on fresh processes (the load generator, :mod:`parley.bench.load_proc`, a fake
FreeSWITCH behaving like mod_audio_stream; and 1..N parley workers, :mod:`parley.bench.density_proc`, each
composed as ``parley serve`` composes itself, around an :class:`~parley.agent.engine.Engine` of instant
benchmark fakes (:mod:`parley.bench.instant`) with the real Silero + webrtcvad VAD and smart-turn OFF), so
the workers' CPU and memory are parley's alone; adding their figures up; judging each run by the issue's
criteria (:func:`parley.bench.answers.sustained`) and printing the variants (workers, event loop,
websockets' C speedups) side by side, with the targets. Over a steady window after every call is up:

- CPU: each worker's ``getrusage`` user+sys over the window, summed, / (calls x window seconds);
- RSS: each worker's ``/proc/self/statm`` at the window's end minus before the first call, summed, per call;
- frame lag: each session's ``frame_lag_ms`` (processing time minus the frame's due time on the 20 ms
  grid) inside the window, skipping each call's first second; p50/p99 over every worker's sessions;
- dropped frames: the mod_audio_stream servers' count (the inbound queues drop the oldest when full);
- answers: the load generator's, counted when the answer's playback starts (:mod:`parley.bench.answers`);
- loop delay: how late a worker's event loop runs a 10 ms timer (its own stalls; frame lag also includes
  audio that the load generator sent late).

Must not assert anything about the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from parley.agent.engine import Engine
from parley.bench.answers import Answers, sustained
from parley.bench.host import box_jiffies, box_usage
from parley.observe.timings import percentiles

if TYPE_CHECKING:
    from parley.turns.vad import SileroModel

DEFAULT_SIZES = (10, 50, 100, 200)
DEFAULT_SECONDS = 20.0
OVERLOAD_LAG_P99_MS = 500.0  # a variant is not run at larger sizes after this
REFERENCE_CALLS = 4  # the answer p90 that larger sizes are judged against
BENCH_GREETING = "Hello."
LINE_LIMIT = 2**26  # a worker's result line carries every frame lag of the window


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


class _Child:
    """A child process speaking JSON lines: events on its stdout, its stderr kept (last lines) for errors."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.stderr: deque[str] = deque(maxlen=20)
        self._drain = asyncio.ensure_future(self._read_stderr())

    @classmethod
    async def spawn(cls, name: str, module: str, args: Sequence[str], env: dict[str, str]) -> _Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "OPENBLAS_NUM_THREADS": "1", **env},
            limit=LINE_LIMIT,
        )  # fmt: skip
        return cls(name, proc)

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
        raise RuntimeError(f"{self.name} ended before {event!r}: " + " | ".join(self.stderr))

    async def send(self, obj: dict[str, object] | str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((obj if isinstance(obj, str) else json.dumps(obj)).encode() + b"\n")
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


@dataclass(frozen=True, slots=True)
class Variant:
    """What a run varies besides the call count: worker processes, event loop, websockets' C masking."""

    workers: int = 1
    loop: str = "asyncio"
    ws_speedups: bool = True
    vad: str = "batched"

    @property
    def label(self) -> str:
        vad = "" if self.vad == "batched" else f" vad-{self.vad}"
        return f"{self.workers}w {self.loop}{'' if self.ws_speedups else ' ws-py'}{vad}"


async def measure(calls: int, seconds: float, variant: Variant = Variant(), *, profile: str | None = None,
                  ) -> dict[str, object]:
    """One size: the load generator and ``variant.workers`` parley workers (:mod:`parley.bench.density_proc`),
    each in its own process, sharing one WebSocket port as ``parley serve --workers N`` does (one worker: no
    SO_REUSEPORT and event ownership, as plain ``parley serve``); the figures added up over the workers."""
    from parley.bench.load_proc import PASSWORD_ENV, SECRET_ENV
    from parley.sim.echo_call import free_port

    password, secret = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    env = {PASSWORD_ENV: password, SECRET_ENV: secret}
    load = await _Child.spawn("load generator", "parley.bench.load_proc",
                              ["--calls", str(calls), "--seconds", str(seconds)], env)
    workers: list[_Child] = []
    try:
        ready = await load.expect("ready", timeout=60 + calls / 10)
        port = free_port()
        many = variant.workers > 1
        for i in range(variant.workers):
            args = ["--esl-port", str(ready["esl_port"]), "--ws-port", str(port), "--loop", variant.loop,
                    "--vad", variant.vad, "--ownership", "stream" if many else "event"]
            args += ["--reuse-port"] if many else []
            args += [] if variant.ws_speedups else ["--no-ws-speedups"]
            args += ["--profile", f"{profile}.w{i}"] if profile else []
            workers.append(await _Child.spawn(f"parley worker {i}", "parley.bench.density_proc", args, env))
        up = await asyncio.gather(*(w.expect("ready", timeout=180) for w in workers))
        await load.send({"ws_url": f"ws://127.0.0.1:{port}/call/{{uuid}}"})
        placed = await load.expect("placed", timeout=60 + calls)
        box0 = box_jiffies()
        await asyncio.gather(*(w.send("start") for w in workers))
        await load.expect("window_end", timeout=seconds + 120)
        await asyncio.gather(*(w.send("end") for w in workers))
        box1 = box_jiffies()
        done = await load.expect("done", timeout=120)
        await asyncio.gather(*(w.send("finish") for w in workers))
        results = await asyncio.gather(*(w.expect("result", timeout=120) for w in workers))
    finally:
        for w in workers:
            await w.close()
        await load.close()
    r = summarize(calls, variant, list(results), done, placed, up, box_usage(box0, box1))
    if r["agent_errors"] or r["dropped_frames"] or r["answered"] != r["turns"]:  # the workers log at WARNING
        r["worker_log_tail"] = [f"w{i}: {line}" for i, w in enumerate(workers) for line in list(w.stderr)[-5:]]
    return r


def _floats(r: dict[str, object], key: str) -> list[float]:
    xs = r.get(key)
    return [float(x) for x in xs if isinstance(x, int | float)] if isinstance(xs, list) else []


def _num(r: dict[str, object], key: str) -> float:
    x = r.get(key)
    return float(x) if isinstance(x, int | float) else 0.0


def summarize(
    calls: int, variant: Variant, results: list[dict[str, object]], done: dict[str, object],
    placed: dict[str, object], up: Sequence[dict[str, object]], box: dict[str, float],
) -> dict[str, object]:
    """One run's figures from each worker's result and the load generator's: CPU summed over the workers."""
    lags = [x for r in results for x in _floats(r, "lags")]
    vs_best = [x for r in results for x in _floats(r, "lags_vs_best")]
    delays = [x for r in results for x in _floats(r, "loop_delays")]
    cpu = sum(_num(r, "window_cpu_ms") for r in results)
    window = max(_num(r, "window_s") for r in results) or 1.0
    rss = sum(_num(r, "steady_rss_mb") - _num(r, "baseline_rss_mb") for r in results)
    answer_ms = _floats(done, "answer_ms")
    load_s = _num(done, "window_s") or window
    vad_runs = sum(_num(r, "vad_runs") for r in results)
    return {
        "calls": calls,
        "variant": variant.label,
        "workers": variant.workers,
        "loop": variant.loop,
        "ws_speedups": all(bool(r.get("ws_speedups")) for r in results),
        "vad": variant.vad,
        "calls_per_worker": [int(_num(r, "sessions")) for r in results],
        "vad_windows_per_run": round(sum(_num(r, "vad_windows") for r in results) / vad_runs, 2) if vad_runs else None,
        "dropped_frames": int(sum(_num(r, "dropped_frames") for r in results)),
        "turns": int(_num(done, "turns")),
        "answered": int(_num(done, "answered")),
        "answer_ms": dict(percentiles(answer_ms, (50.0, 90.0))),
        "frame_lag_ms": {**percentiles(lags, (50.0, 99.0)), "max": round(max(lags), 1) if lags else None},
        "frame_lag_vs_best_ms": dict(percentiles(vs_best, (50.0, 99.0))),
        "loop_delay_ms": {**percentiles(delays, (50.0, 99.0)), "max": round(max(delays, default=0.0), 1)},
        "cpu_ms_per_call_second": round(cpu / (calls * window), 3),
        "rss_mb_per_call": round(rss / calls, 3),
        "cpu_core_percent": round(100.0 * cpu / (1000.0 * window), 1),
        "baseline_rss_mb": round(sum(_num(u, "baseline_rss_mb") for u in up), 1),
        "steady_rss_mb": round(sum(_num(r, "steady_rss_mb") for r in results), 1),
        "window_s": round(window, 2),
        "frames": int(sum(_num(r, "frames") for r in results)),
        "window_frames": int(sum(_num(r, "window_frames") for r in results)),
        "lag_samples": len(lags),
        "calls_streaming": placed.get("streaming"),
        "ramp_s": placed.get("ramp_s"),
        "sessions": int(sum(_num(r, "sessions") for r in results)),
        "agent_errors": int(sum(_num(r, "agent_errors") for r in results)),
        "replies_played": int(sum(_num(r, "replies") for r in results)),
        "loadgen_core_percent": round(_num(done, "window_cpu_ms") / (10.0 * load_s), 1),
        "loadgen_playbacks": done.get("playbacks"),
        "box_cpu_percent": box,
    }


COLUMNS = (  # (title, unit, width, format)
    ("workers", "loop", 16, "s"),
    ("calls", "", 5, "d"),
    ("per", "worker", 7, "s"),
    ("dropped", "frames", 7, "d"),
    ("turns", "answered", 9, "s"),
    ("answer", "p90 ms", 7, ".0f"),
    ("lag p50", "ms", 7, ".1f"),
    ("lag p99", "ms", 7, ".1f"),
    ("loop", "p99 ms", 7, ".1f"),
    ("cpu ms/", "call·s", 7, ".2f"),
    ("parley", "%core", 6, ".0f"),
    ("RSS MB/", "call", 7, ".2f"),
    ("loadgen", "%core", 7, ".0f"),
    ("box", "%core", 6, ".0f"),
    ("sustained", "", 9, "s"),
)


def _cells(r: dict[str, object]) -> list[object]:
    def get(key: str, sub: str) -> object:
        d = r.get(key)
        return d.get(sub) if isinstance(d, dict) else None

    per = r.get("calls_per_worker")
    split = "+".join(map(str, per)) if isinstance(per, list) and len(per) > 1 else str(r.get("sessions"))
    held = r.get("sustained")
    return [r.get("variant"), r["calls"], split,
            r["dropped_frames"], f"{r.get('answered')}/{r.get('turns')}", get("answer_ms", "p90"),
            get("frame_lag_ms", "p50"), get("frame_lag_ms", "p99"), get("loop_delay_ms", "p99"),
            r["cpu_ms_per_call_second"], r.get("cpu_core_percent"), r["rss_mb_per_call"],
            r.get("loadgen_core_percent"), get("box_cpu_percent", "busy_core_percent"),
            "-" if held is None else ("yes" if held else "NO")]


def format_table(runs: Sequence[dict[str, object]], header: bool = True) -> str:
    lines = ["  " + " ".join(f"{t:>{w}}" for t, _, w, _ in COLUMNS),
             "  " + " ".join(f"{u:>{w}}" for _, u, w, _ in COLUMNS)] if header else []
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


def judge(r: dict[str, object], reference_p90: float | None) -> None:
    """Mark the run sustained or not by the issue's criteria (in place: ``sustained``, ``why_not``)."""
    a = r.get("answer_ms")
    p90 = a.get("p90") if isinstance(a, dict) else None
    answers = Answers(int(_num(r, "turns")), int(_num(r, "answered")), ())
    held, why = sustained(answers=answers, dropped=int(_num(r, "dropped_frames")),
                          p90_ms=float(p90) if isinstance(p90, int | float) and math.isfinite(p90) else None,
                          reference_p90_ms=reference_p90)
    r["reference_answer_p90_ms"] = reference_p90
    r["sustained"], r["why_not"] = held, why


def _p90(r: dict[str, object]) -> float | None:
    a = r.get("answer_ms")
    p = a.get("p90") if isinstance(a, dict) else None
    return float(p) if isinstance(p, int | float) and math.isfinite(p) else None


async def run_density(
    sizes: Sequence[int], seconds: float, *, out: TextIO = sys.stdout, variants: Sequence[Variant] = (Variant(),),
    profile_dir: str | None = None,
) -> dict[str, object]:
    w = out.write
    cores = os.cpu_count() or 1
    w("parley bench density: instant benchmark-fake STT/LLM/TTS; real sockets, Silero+webrtcvad VAD, turn machine,\n"
      "  chunked playback over ESL; smart-turn OFF (silence endpoint 700 ms); the fake FreeSWITCH (load generator:\n"
      "  640 B every 20 ms per call) runs in its own process; each caller says 1.3 s of speech every 6 s; answers are\n"
      f"  counted when their playback starts. {cores} cores; {seconds:g} s window per size after every call is up;\n"
      "  each run in fresh processes; N workers share one WebSocket port (SO_REUSEPORT) with --call-ownership stream,\n"
      "  each with its own ESL connection, as `parley serve --workers N`; CPU and RSS are summed over the workers.\n"
      "  Sustained: every caller turn answered, answer p90 within 1.5 s of its 4-call value, no dropped frames.\n"
      "  'loop' is how late a worker's event loop runs a 10 ms timer; 'box' is every process on the machine: well\n"
      "  above parley + loadgen means something else competed for the CPU during that run.\n\n")
    w(format_table([], header=True))
    out.flush()
    runs: list[dict[str, object]] = []
    reference: dict[Variant, float | None] = {}
    overloaded: dict[Variant, int] = {}
    for v in variants:  # the answer p90 reference: 4 calls on the same variant
        if REFERENCE_CALLS not in sizes:
            ref = await measure(REFERENCE_CALLS, seconds, v)
            reference[v] = _p90(ref)
            judge(ref, reference[v])
            ref["reference_run"] = True
            runs.append(ref)
            w(format_table([ref], header=False))
            out.flush()
    for n in sizes:
        for v in variants:  # side by side: the same size on each variant, one after the other
            if v in overloaded:
                continue
            prof = os.path.join(profile_dir, f"{n}-{v.workers}w-{v.loop}.prof") if profile_dir else None
            r = await measure(n, seconds, v, profile=prof)
            if n == REFERENCE_CALLS:
                reference[v] = _p90(r)
            judge(r, reference.get(v))
            runs.append(r)
            w(format_table([r], header=False))
            out.flush()
            if prof:
                from parley.bench.profile import profile_report

                w(profile_report([f"{prof}.w{i}" for i in range(v.workers)], int(_num(r, "window_frames"))))
            lag = r["frame_lag_ms"]
            p99 = lag.get("p99") if isinstance(lag, dict) else None
            if isinstance(p99, int | float) and p99 > OVERLOAD_LAG_P99_MS:
                overloaded[v] = n
    for r in runs:
        if r.get("why_not"):
            w(f"  {r['variant']}, {r['calls']} calls: not sustained: {r['why_not']}\n")
        tail = r.get("worker_log_tail")
        for line in tail if isinstance(tail, list) else ():
            w(f"    worker log: {str(line)[:200]}\n")
    summary = summarize_variants(runs, variants, sizes, overloaded)
    w(format_summary(summary))
    baseline = runs[0].get("baseline_rss_mb") if runs else None
    w(f"  baseline RSS (VAD model loaded, parley started, no calls), all workers: {baseline} MB "
      "(first run's)\n")
    return {"runs": runs, "seconds": seconds, "cores": cores, "variants": [v.label for v in variants],
            "summary": summary, "sizes_requested": list(sizes), "smart_turn": False}


def summarize_variants(
    runs: Sequence[dict[str, object]], variants: Sequence[Variant], sizes: Sequence[int], overloaded: dict[Variant, int]
) -> list[dict[str, object]]:
    """Per variant: the most calls sustained, and its figures at that size (the targets are printed against
    these); the calls relative to the first variant with one worker."""
    out: list[dict[str, object]] = []
    for v in variants:
        mine = [r for r in runs if r["variant"] == v.label and not r.get("reference_run")]
        held = [r for r in mine if r.get("sustained")]
        best = max(held, key=lambda r: int(_num(r, "calls")), default=None)
        failed = [int(_num(r, "calls")) for r in mine if not r.get("sustained")]
        out.append({"variant": v.label, "workers": v.workers, "loop": v.loop,
                    "sustained_calls": int(_num(best, "calls")) if best else 0,
                    "first_failure": min(failed) if failed else None, "overloaded_at": overloaded.get(v),
                    "at_sustained": best})
    for s, v in zip(out, variants, strict=True):  # against one worker on the same loop, speedups and VAD
        one = next((o for o, u in zip(out, variants, strict=True)
                    if u.workers == 1 and (u.loop, u.ws_speedups, u.vad) == (v.loop, v.ws_speedups, v.vad)), None)
        base = _num(one, "sustained_calls") if one else 0.0
        s["vs_one_worker"] = round(_num(s, "sustained_calls") / base, 2) if base else None
    return out


def format_summary(summary: Sequence[dict[str, object]]) -> str:
    lines = ["", "  calls sustained per variant (the largest size run that held; sizes between were not run):"]
    for s in summary:
        best = s.get("at_sustained")
        b = best if isinstance(best, dict) else {}
        lag = b.get("frame_lag_ms")
        p99 = lag.get("p99") if isinstance(lag, dict) else None
        fail = f", first failure at {s['first_failure']}" if s.get("first_failure") else ", no failure in the sizes run"
        if not b:
            lines.append(f"    {s['variant']:<18} no size sustained{fail}")
            continue
        ratio = f"; x{s['vs_one_worker']} the calls of one worker" if s.get("vs_one_worker") is not None else ""
        lines.append(f"    {s['variant']:<18} {s['sustained_calls']:>4} calls{fail}; there: lag p99 {p99} ms, "
                     f"CPU {b.get('cpu_ms_per_call_second')} ms per call-second, RSS {b.get('rss_mb_per_call')} MB "
                     f"per call{ratio}")
    lines += ["  targets (issue 12; printed, never asserted): 2 cores, instant providers: >= 300 calls with 0 dropped",
              "    frames, frame lag p99 < 20 ms, every turn answered; CPU <= 2.5 ms per call-second; RSS <= 1 MB per",
              "    call; 2 workers >= 1.8x the calls of 1.", ""]
    return "\n".join(lines) + "\n"


def parse_sizes(text: str, what: str = "--calls") -> list[int]:
    from parley.errors import ConfigError

    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} takes comma-separated integers, not {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"{what} needs at least one value, each >= 1")
    return sizes


def variants_from(workers: Sequence[int], loops: Sequence[str], ws_speedups: Sequence[bool] = (True,),
                  vads: Sequence[str] = ("batched",)) -> list[Variant]:
    from parley.eventloop import resolve_loop

    return [Variant(n, resolve_loop(loop), ws, vad) for n in workers for loop in loops for ws in ws_speedups
            for vad in vads]


def run_density_command(
    sizes: Sequence[int] = DEFAULT_SIZES, seconds: float = DEFAULT_SECONDS, json_path: str | None = None,
    out: TextIO = sys.stdout, variants: Sequence[Variant] = (Variant(),), profile_dir: str | None = None,
) -> int:
    """What ``parley bench density`` does; returns the exit code."""
    from parley.bench import write_json

    if profile_dir:
        os.makedirs(profile_dir, exist_ok=True)
    report = asyncio.run(run_density(sizes, seconds, out=out, variants=variants, profile_dir=profile_dir))
    if json_path:
        write_json(Path(json_path), report)
        out.write(f"  json: {json_path}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m parley.bench.density")
    p.add_argument("--calls", default=",".join(map(str, DEFAULT_SIZES)))
    p.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
    p.add_argument("--workers", default="1")
    p.add_argument("--loop", default="asyncio")
    p.add_argument("--json")
    args = p.parse_args(argv)
    variants = variants_from(parse_sizes(args.workers, "--workers"), args.loop.split(","))
    return run_density_command(parse_sizes(args.calls), args.seconds, args.json, variants=variants)


if __name__ == "__main__":
    raise SystemExit(main())
