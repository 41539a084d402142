"""What the caller experienced, measured on audio: latency, cut-ins and talk-over at the caller's ear.

Owns: turning the caller's true speech (each scripted turn's audio and when it started) and the rendered
track of what the caller heard (FreeSWITCH's output on the call timeline) into per-turn figures:

- the turn's true speech start/end: its first/last sample above -40 dBFS (5 ms windows, the same
  audibility test as :mod:`parley.audio.trim` and the session's ``FIRST_AUDIBLE`` mark);
- ``first_audible``: the first audible agent sample at or after the true speech end (voice-to-voice at the
  ear), looked for only until the caller's next turn starts;
- a **cut-in**: agent audio that becomes audible (a new stretch of agent speech; gaps shorter than
  ``bridge_ms`` do not start one) while the caller is inside the turn, its internal pauses included;
- **talk-over**: how long audible agent audio overlaps the caller's speech (its audible stretches,
  bridged over gaps shorter than ``bridge_ms``);
- for a turn that barges in: onset -> the agent's last audible sample before it stays quiet for
  ``silent_gap_ms`` (agent silent at the ear).

Also matching the session's turns to the scripted ones by time (:func:`match_turns`). Pure numpy: every
time is a float on one monotonic clock given by the caller of these functions; no asyncio, no clock,
no session. Must not know how the audio was produced or what parley reported (the comparison with parley's
own figures is the simulation's business).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from parley.audio.pcm import Int16Array
from parley.audio.trim import BoolArray, audible_windows, first_audible_index, last_audible_index
from parley.observe.timings import AUDIBLE_DBFS

WINDOW_MS = 5.0
BRIDGE_MS = 100.0  # quiet shorter than this inside speech (stops, word joins) does not end a stretch
SILENT_GAP_MS = 400.0  # after a barge-in onset, the agent counts as silent once it is quiet this long
MATCH_TOLERANCE_S = 0.3


@dataclass(frozen=True, slots=True)
class CallerTurnAudio:
    """One scripted caller turn: its audio (designed pauses included) and when its first sample was spoken."""

    start: float  # seconds, on the session's monotonic clock
    audio: Int16Array
    rate: int
    barge_in: bool = False  # scripted to talk over the agent


@dataclass(frozen=True, slots=True)
class EarTurn:
    """One caller turn as the caller experienced it. Times in seconds on the same clock as the input."""

    index: int
    speech_start: float  # first audible caller sample
    speech_end: float  # end of the last audible caller sample (the true end of the turn)
    barge_in: bool
    first_audible: float | None  # first audible agent sample at or after speech_end
    cut_in_at: float | None  # the first agent stretch that started inside the turn (None: no cut-in)
    talk_over_ms: float
    agent_silent: float | None = None  # barge-in turns: the agent's last audible sample after the onset
    # the caller's speech stretches [start, end) (gaps under bridge_ms joined): where each resumption begins
    stretches: tuple[tuple[float, float], ...] = ()

    @property
    def cut_in(self) -> bool:
        return self.cut_in_at is not None

    @property
    def first_audible_ms(self) -> float | None:
        return None if self.first_audible is None else round((self.first_audible - self.speech_end) * 1000.0, 1)

    @property
    def silent_ms(self) -> float | None:
        """Barge-in turns: caller onset -> agent silent at the ear."""
        return None if self.agent_silent is None else round((self.agent_silent - self.speech_start) * 1000.0, 1)

    def as_dict(self, origin: float = 0.0) -> dict[str, object]:
        """JSON form; absolute times relative to ``origin`` (e.g. the call's answer), in seconds."""

        def rel(t: float | None) -> float | None:
            return None if t is None else round(t - origin, 3)

        return {
            "caller_turn": self.index,
            "speech_start_s": rel(self.speech_start),
            "speech_end_s": rel(self.speech_end),
            "first_audible_s": rel(self.first_audible),
            "first_audible_ms": self.first_audible_ms,
            "cut_in": self.cut_in,
            "cut_in_ms_before_end": None if self.cut_in_at is None
            else round((self.speech_end - self.cut_in_at) * 1000.0, 1),
            "talk_over_ms": self.talk_over_ms,
            "barge_in": self.barge_in,
            "onset_to_silent_ms": self.silent_ms,
        }


def _runs(flags: BoolArray) -> list[tuple[int, int]]:
    """[start, end) index pairs of the True runs."""
    padded = np.concatenate(([False], flags, [False])).astype(np.int8)
    d = np.diff(padded)
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def _bridge(runs: list[tuple[int, int]], max_gap: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in runs:
        if out and a - out[-1][1] < max_gap:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


@dataclass(frozen=True, slots=True)
class _Grid:
    """The heard track's windows: window ``w`` covers [origin + w * step, origin + (w + 1) * step)."""

    origin: float
    step: float
    agent: BoolArray  # audible agent audio per window

    def index(self, t: float) -> int:
        """The first window starting at or after ``t`` (clamped to the track)."""
        return min(self.agent.size, max(0, math.ceil((t - self.origin) / self.step - 1e-6)))

    def time(self, w: int) -> float:
        return self.origin + w * self.step


def measure_ear(
    turns: Sequence[CallerTurnAudio],
    heard: Int16Array,
    rate: int,
    origin: float,
    *,
    threshold_dbfs: float = AUDIBLE_DBFS,
    window_ms: float = WINDOW_MS,
    bridge_ms: float = BRIDGE_MS,
    silent_gap_ms: float = SILENT_GAP_MS,
) -> list[EarTurn]:
    """Per caller turn with audible speech, the figures at the ear (turns with nothing audible are skipped).

    ``heard`` is what the caller heard (mono at ``rate``), sample 0 at time ``origin``; ``turns`` are in
    the order they were spoken.
    """
    win = max(1, round(rate * window_ms / 1000.0))
    grid = _Grid(origin, win / rate, audible_windows(heard, rate, threshold_dbfs, window_ms))
    bridge = max(1, round(bridge_ms / 1000.0 / grid.step))
    stretches = _bridge(_runs(grid.agent), bridge)
    spans: list[tuple[int, CallerTurnAudio, float, float, list[tuple[float, float]]]] = []
    for i, turn in enumerate(turns):
        first = first_audible_index(turn.audio, turn.rate, threshold_dbfs, window_ms)
        last = last_audible_index(turn.audio, turn.rate, threshold_dbfs, window_ms)
        if first is None or last is None:
            continue
        cwin = max(1, round(turn.rate * window_ms / 1000.0))
        cstep = cwin / turn.rate
        speech = _bridge(_runs(audible_windows(turn.audio, turn.rate, threshold_dbfs, window_ms)),
                         max(1, round(bridge_ms / 1000.0 / cstep)))
        pieces = [(turn.start + a * cstep, turn.start + min(turn.audio.size, b * cwin) / turn.rate) for a, b in speech]
        spans.append((i, turn, turn.start + first / turn.rate, turn.start + (last + 1) / turn.rate, pieces))
    out: list[EarTurn] = []
    for k, (i, turn, start, end, pieces) in enumerate(spans):
        limit = spans[k + 1][2] if k + 1 < len(spans) else math.inf
        silent = _agent_silent(grid, start, silent_gap_ms) if turn.barge_in else None
        first_audible = _first_audible(grid, end, limit)
        # a new stretch of agent speech starting inside the turn (for a barge-in: after the agent went quiet)
        lower = silent if silent is not None else start
        cut = next((grid.time(a) for a, _ in stretches if lower < grid.time(a) < end), None)
        talk = sum(_overlap_ms(grid, a, b) for a, b in pieces)
        out.append(EarTurn(i, start, end, turn.barge_in, first_audible, cut, round(talk, 1), silent, tuple(pieces)))
    return out


def silent_at_ear(
    heard: Int16Array,
    rate: int,
    origin: float,
    onset: float,
    *,
    threshold_dbfs: float = AUDIBLE_DBFS,
    window_ms: float = WINDOW_MS,
    silent_gap_ms: float = SILENT_GAP_MS,
) -> float:
    """When the agent fell silent at the ear after the caller started talking at ``onset`` (an unscripted
    barge-in: e.g. the caller resuming after a pause the agent took for the end of the turn)."""
    win = max(1, round(rate * window_ms / 1000.0))
    grid = _Grid(origin, win / rate, audible_windows(heard, rate, threshold_dbfs, window_ms))
    return _agent_silent(grid, onset, silent_gap_ms)


def _first_audible(grid: _Grid, t: float, limit: float) -> float | None:
    w0 = grid.index(t)
    hits = np.flatnonzero(grid.agent[w0:])
    if hits.size == 0:
        return None
    at = grid.time(w0 + int(hits[0]))
    return at if at < limit else None


def _agent_silent(grid: _Grid, onset: float, silent_gap_ms: float) -> float:
    """The end of the agent's last audible window before it stays quiet for ``silent_gap_ms`` after ``onset``."""
    gap = max(1, round(silent_gap_ms / 1000.0 / grid.step))
    w0 = grid.index(onset)
    w0 = max(0, w0 - 1) if w0 > 0 and grid.agent[w0 - 1] else w0  # the window holding the onset
    last: int | None = None
    for a, b in _runs(grid.agent[w0:]):
        if (a - (last if last is not None else 0)) >= gap:
            break
        last = b
    return onset if last is None else max(onset, grid.time(w0 + last))


def _overlap_ms(grid: _Grid, t0: float, t1: float) -> float:
    a, b = grid.index(t0), grid.index(t1)
    return 1000.0 * grid.step * float(np.count_nonzero(grid.agent[a:b])) if b > a else 0.0


def match_turns(
    speech_ends: Sequence[float | None], ear: Sequence[EarTurn], tolerance_s: float = MATCH_TOLERANCE_S
) -> list[int | None]:
    """For each session turn (its SPEECH_END mark, None when it has none), the position in ``ear`` of the
    caller turn it belongs to: the one whose [speech start - tolerance, speech end + tolerance] holds the
    mark, the nearest end when several do; None when none does (a DTMF, an idle prompt, noise)."""
    out: list[int | None] = []
    for t in speech_ends:
        best: int | None = None
        if t is not None:
            near = [(abs(t - e.speech_end), k) for k, e in enumerate(ear)
                    if e.speech_start - tolerance_s <= t <= e.speech_end + tolerance_s]
            best = min(near)[1] if near else None
        out.append(best)
    return out
