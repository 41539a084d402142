"""Whether each caller turn of a density run was answered, and how soon: counted the way a caller hears it.

Owns: matching a call's scripted caller turns (where each speech excerpt ends on the media clock) with the
playbacks the fake FreeSWITCH started (``PLAYBACK_START``'s scheduled media time), inside the measured
window. An answer is the first playback that starts between the turn's end (less ``EARLY_S``, the excerpt's
own trailing quiet) and the next turn's start; its latency is that start minus the turn's end. The turns
counted are those that end inside the window; the load generator keeps the calls up one answer slot after
it, so the last of them is not cut off. Pure: no clock, no asyncio, no parley; the load generator gives it
plain numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

EARLY_S = 0.5  # a reply may start this much before the excerpt's end (its last 0.5 s are near silence)


@dataclass(frozen=True, slots=True)
class CallTurns:
    """One call's caller turns: speech from ``origin + offset_s + k * period_s`` for ``speech_s``."""

    origin: float  # media time of the stream's first sample (the load generator's clock)
    offset_s: float
    period_s: float
    speech_s: float
    playback_starts: tuple[float, ...]  # every playback's start, same clock


@dataclass(frozen=True, slots=True)
class Answers:
    turns: int
    answered: int
    latencies_ms: tuple[float, ...]

    @property
    def unanswered(self) -> int:
        return self.turns - self.answered


def call_answers(call: CallTurns, window: tuple[float, float]) -> Answers:
    """The turns of ``call`` that end inside ``window``, and their answers."""
    w0, w1 = window
    starts = sorted(call.playback_starts)
    turns = answered = 0
    lat: list[float] = []
    k = 0
    while True:
        end = call.origin + call.offset_s + k * call.period_s + call.speech_s
        slot_end = end + call.period_s - call.speech_s  # the next turn's start
        k += 1
        if end < w0:
            continue
        if end > w1:
            break
        turns += 1
        first = next((s for s in starts if end - EARLY_S <= s < slot_end), None)
        if first is not None:
            answered += 1
            lat.append(1000.0 * (first - end))
    return Answers(turns, answered, tuple(lat))


def all_answers(calls: Iterable[CallTurns], window: tuple[float, float]) -> Answers:
    turns = answered = 0
    lat: list[float] = []
    for call in calls:
        a = call_answers(call, window)
        turns += a.turns
        answered += a.answered
        lat.extend(a.latencies_ms)
    return Answers(turns, answered, tuple(lat))


def sustained(
    *, answers: Answers, dropped: int, p90_ms: float | None, reference_p90_ms: float | None, margin_ms: float = 1500.0
) -> tuple[bool, str]:
    """The issue's criteria: every turn answered, answer p90 within ``margin_ms`` of its 4-call value, no
    dropped frames. Returns (held, why not)."""
    why: list[str] = []
    if answers.turns == 0:
        why.append("no caller turn in the window")
    elif answers.unanswered:
        why.append(f"{answers.unanswered}/{answers.turns} turns unanswered")
    if dropped:
        why.append(f"{dropped} frames dropped")
    if p90_ms is not None and reference_p90_ms is not None and p90_ms > reference_p90_ms + margin_ms:
        why.append(f"answer p90 {p90_ms:.0f} ms > {reference_p90_ms:.0f} + {margin_ms:.0f}")
    return not why, "; ".join(why)

