"""The longest silence a caller heard while the call was up, for the fault matrix's rows.

Dead air is a stretch in which the caller heard no agent audio *and* was not speaking. Everything is on
the fake FreeSWITCH's clock:

- agent audio: the fake call's playback records (``FakeCall.playbacks``). Their start/stop are the
  scheduled media times, so queued chunks join without a gap; a flushed chunk played nothing; a
  playback still running counts up to ``now``.
- caller speech: intervals the test's script says the caller spoke (``(t0, t1)`` from ``call.say``).
- the window: from ``start`` (default: the first agent audio, i.e. the greeting) to ``end`` (default: the
  hangup, else ``now``). Pick it so that it covers only time in which the agent owed the caller
  something; a caller's own designed pause after the agent finished is not the agent's dead air.

Usage::

    heard = agent_audio(call.playbacks, now=fs.clock())
    gap = longest_silence(heard, caller_turns, start=heard[0][0], end=call.hungup_at)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from parley.sim.fake_playback import PlaybackRecord
from parley.sim.simulate import SimulationResult

Interval = tuple[float, float]


def agent_audio(playbacks: Iterable[PlaybackRecord], *, now: float) -> list[Interval]:
    """When the caller heard the agent: one interval per playback that started, sorted."""
    out: list[Interval] = []
    for p in playbacks:
        if p.flushed or p.started_at is None or p.started_at > now:
            continue
        stop = p.stopped_at
        if stop is None:
            stop = now if p.duration_s is None else min(now, p.started_at + p.duration_s)
        out.append((p.started_at, min(stop, now)))
    return sorted(out)


def longest_silence(sounds: Iterable[Interval], *more: Iterable[Interval], start: float, end: float) -> float:
    """Longest stretch of [start, end] covered by none of the intervals (seconds, >= 0)."""
    if end <= start:
        return 0.0
    merged = sorted(iv for group in (sounds, *more) for iv in group)
    longest, t = 0.0, start
    for t0, t1 in merged:
        if t1 <= t:
            continue
        if t0 > t:
            longest = max(longest, min(t0, end) - t)
        t = max(t, t1)
        if t >= end:
            break
    return max(longest, end - t)


def call_silence(playbacks: Sequence[PlaybackRecord], caller: Iterable[Interval], *, now: float,
                 start: float | None = None, end: float | None = None) -> float:
    """``longest_silence`` of one fake call, from its first agent audio (or ``start``) to ``end``/``now``."""
    heard = agent_audio(playbacks, now=now)
    if start is None:
        if not heard:
            return 0.0
        start = heard[0][0]
    return longest_silence(heard, caller, start=start, end=now if end is None else end)


def agent_silence(result: SimulationResult) -> float:
    """The longest stretch, while the call was up, with neither agent audio nor caller speech (seconds)."""
    call = result.fake_call
    start = call.answered_at or call.created_at
    end = call.hungup_at if call.hungup_at is not None else max(
        [p.stopped_at or p.started_at or start for p in call.playbacks] + [start])
    busy = sorted(
        [(p.started_at, p.stopped_at or end) for p in call.playbacks if p.started_at is not None]
        + [(t.start, t.start + t.audio.size / t.rate) for t in result.caller_turns]
    )
    longest, at = 0.0, start
    for a, b in busy:
        longest = max(longest, a - at)
        at = max(at, b)
    return max(longest, end - at) if end > at else longest
