"""Where a frame's CPU goes in a density run: a worker's cProfile of the window, grouped by the frame path's stages.

Owns: reading the ``pstats`` files the density workers write (``parley bench density --profile DIR``),
grouping every function's own time (``tottime``) by stage (WebSocket parsing, the asyncio loop and task
switches, socket I/O, Silero's ONNX run, webrtcvad, the VAD and turn machine, the call session, ESL, numpy)
and printing microseconds per received frame and the share of the total, then the top functions. The
workers profile with the process's CPU clock (``time.process_time``), so waiting in epoll and other
processes' turns on a shared box are not counted. cProfile adds its own cost to every Python call, so the
shares count more than the absolute figures (a run without the profiler gives those). Must not know how
the run was made.
"""

from __future__ import annotations

import os
import pstats
from collections.abc import Sequence

# (stage, test on "filename:funcname"), first match wins; builtins have filename "~"
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Silero ONNX run", ("onnxruntime",)),
    ("webrtcvad", ("webrtcvad", "_webrtcvad")),
    ("socket send/recv", ("'send' of '_socket", "'recv' of '_socket", "'recv_into' of '_socket", "'sendmsg'",
                          "'write' of '_ssl", "_SelectorSocketTransport")),
    ("epoll wait", ("'poll' of 'select.epoll'", "selectors.py")),
    ("websockets (frames, protocol)", ("/websockets/",)),
    ("asyncio loop, tasks, futures, queues", ("/asyncio/", "_asyncio", "_contextvars", "'run' of 'Context'",
                                              "uvloop", "asyncio.")),
    ("VAD glue (turns/vad*)", ("/parley/turns/vad",)),
    ("turn machine + policy", ("/parley/turns/",)),
    ("call session + core", ("/parley/agent/",)),
    ("stream server (freeswitch/audio_stream)", ("/parley/freeswitch/audio_stream",)),
    ("ESL + playback", ("/parley/freeswitch/",)),
    ("audio (pcm, energy)", ("/parley/audio/",)),
    ("numpy", ("numpy",)),
    ("bench probe", ("/parley/bench/",)),
    ("logging", ("/logging/",)),
)


def stage_of(filename: str, funcname: str) -> str:
    key = f"{filename.replace(os.sep, '/')}:{funcname}"
    for stage, needles in STAGES:
        if any(n in key for n in needles):
            return stage
    return "other"


def profile_report(paths: Sequence[str], frames: int, top: int = 15) -> str:
    """The stages' own time per frame over the profiled workers (their stats merged)."""
    existing = [p for p in paths if os.path.exists(p)]
    if not existing:
        return "  (no profile written)\n"
    stats = pstats.Stats(*existing)
    raw = stats.stats  # type: ignore[attr-defined]  # {(file, line, func): (cc, nc, tottime, cumtime, callers)}
    by_stage: dict[str, float] = {}
    rows: list[tuple[float, int, str]] = []
    for (filename, line, func), (_cc, nc, tt, _ct, _callers) in raw.items():
        stage = stage_of(filename, func)
        by_stage[stage] = by_stage.get(stage, 0.0) + tt
        rows.append((tt, nc, f"{os.path.basename(filename)}:{line}({func})" if filename != "~" else func))
    total = sum(by_stage.values()) or 1e-9
    per = max(frames, 1)
    out = [f"  profile (cProfile, own CPU time; {frames} frames received in the window; it inflates Python calls):",
           f"    {'stage':<42} {'us/frame':>9} {'share':>6}"]
    for stage, tt in sorted(by_stage.items(), key=lambda kv: -kv[1]):
        out.append(f"    {stage:<42} {1e6 * tt / per:>9.1f} {100 * tt / total:>5.1f}%")
    out.append(f"    {'total':<42} {1e6 * total / per:>9.1f}")
    out.append(f"    top {top} functions by own time (us/frame, calls/frame):")
    for tt, nc, name in sorted(rows, reverse=True)[:top]:
        out.append(f"      {1e6 * tt / per:>7.1f} {nc / per:>6.2f}  {name[:100]}")
    return "\n".join(out) + "\n"
