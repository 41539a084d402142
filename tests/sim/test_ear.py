"""The ear measurement on synthetic calls: tones for speech, zeros for silence, times chosen by hand."""

from __future__ import annotations

import numpy as np
import pytest

from parley.audio.pcm import Int16Array
from parley.sim.ear import CallerTurnAudio, EarTurn, match_turns, measure_ear, silent_at_ear

RATE = 8000
ORIGIN = 1000.0  # the call timeline's sample 0, on the monotonic clock


def tone(ms: float, dbfs: float = -20.0) -> Int16Array:
    n = round(ms * RATE / 1000)
    amp = 32768.0 * 10 ** (dbfs / 20) * np.sqrt(2)
    out: Int16Array = np.round(amp * np.sin(2 * np.pi * 300 * np.arange(n) / RATE)).astype(np.int16)
    return out


def quiet(ms: float) -> Int16Array:
    return np.zeros(round(ms * RATE / 1000), dtype=np.int16)


def speech(*parts: tuple[str, float]) -> Int16Array:
    """("t", ms) a loud stretch, ("s", ms) silence, ("w", ms) a whisper below -40 dBFS."""
    def make(kind: str, ms: float) -> Int16Array:
        return quiet(ms) if kind == "s" else tone(ms, -50.0 if kind == "w" else -20.0)

    return np.concatenate([make(kind, ms) for kind, ms in parts])


def heard_track(total_ms: float, *agent: tuple[float, float]) -> Int16Array:
    """The agent audible over [a, b) ms of the call timeline, silence elsewhere."""
    out = quiet(total_ms)
    for a, b in agent:
        seg = tone(b - a)
        i = round(a * RATE / 1000)
        out[i : i + seg.size] = seg
    return out


def at(ms: float) -> float:
    return ORIGIN + ms / 1000


def turn(start_ms: float, *parts: tuple[str, float], barge_in: bool = False) -> CallerTurnAudio:
    return CallerTurnAudio(at(start_ms), speech(*parts), RATE, barge_in)


def one(turns: list[CallerTurnAudio], heard: Int16Array) -> list[EarTurn]:
    return measure_ear(turns, heard, RATE, ORIGIN)


@pytest.mark.parametrize(
    ("caller", "agent", "first_audible_ms", "cut_in", "talk_over_ms"),
    [
        # caller speaks 1000-2000 ms (after 300 ms of leading silence in its audio); the agent answers at 2650
        ([("s", 300), ("t", 1000), ("s", 200)], [(2650, 3500)], 650.0, False, 0.0),
        # the agent's file starts at 2600 with 300 ms of silence: the ear hears it at 2900
        ([("s", 300), ("t", 1000)], [(2900, 3500)], 900.0, False, 0.0),
        # a pause inside the turn (1400-2000); the agent starts in it: a cut-in; the caller resumes over it
        # (talk-over 2000-2400) and nothing answers the whole turn after its end at 2500
        ([("s", 300), ("t", 400), ("s", 600), ("t", 500)], [(1700, 2400)], None, True, 400.0),
        # the agent answers after the end, but a whisper below the threshold after the end is not speech
        ([("s", 300), ("t", 1000), ("w", 300)], [(2500, 3000)], 500.0, False, 0.0),
        # never answered
        ([("s", 300), ("t", 1000)], [], None, False, 0.0),
    ],
    ids=["answered", "quiet-head", "cut-in-in-pause", "whisper-tail", "unanswered"],
)
def test_one_turn_at_the_ear(
    caller: list[tuple[str, float]],
    agent: list[tuple[float, float]],
    first_audible_ms: float | None,
    cut_in: bool,
    talk_over_ms: float,
) -> None:
    (got,) = one([turn(700, *caller)], heard_track(6000, *agent))
    assert got.speech_start == pytest.approx(at(1000))
    assert got.first_audible_ms == first_audible_ms
    assert got.cut_in is cut_in
    assert got.talk_over_ms == talk_over_ms
    assert got.agent_silent is None and got.silent_ms is None


def test_speech_end_is_the_last_audible_sample_not_the_end_of_the_audio() -> None:
    (got,) = one([turn(0, ("s", 250), ("t", 500), ("s", 400))], heard_track(3000))
    assert got.speech_start == pytest.approx(at(250))
    assert got.speech_end == pytest.approx(at(750))


def test_the_answer_is_looked_for_only_until_the_next_turn() -> None:
    turns = [turn(0, ("t", 500)), turn(1500, ("t", 500))]  # the caller speaks again at 1500, unanswered
    first, second = one(turns, heard_track(5000, (2600, 3000)))
    assert first.first_audible_ms is None
    assert second.first_audible_ms == 600.0


def test_a_reply_that_starts_before_the_turn_is_not_a_cut_in() -> None:
    # the agent still talks when the caller starts (an unscripted overlap): talk-over, not a cut-in
    (got,) = one([turn(1000, ("t", 1000))], heard_track(5000, (0, 1300), (2500, 3000)))
    assert not got.cut_in
    assert got.talk_over_ms == 300.0
    assert got.first_audible_ms == 500.0


def test_short_gaps_in_the_agent_audio_do_not_start_a_new_stretch() -> None:
    # agent talks 0-1300 and 1350-1800 (a 50 ms stop consonant): one stretch that began before the turn
    (got,) = one([turn(1000, ("t", 1000))], heard_track(5000, (0, 1300), (1350, 1800)))
    assert not got.cut_in
    assert got.talk_over_ms == 750.0


def test_a_split_turn_is_one_cut_in_whose_answer_is_timed_from_the_true_end() -> None:
    # "I'd like to book ... a cleaning": 1000-1600, pause 700 ms, 2300-3000; the agent answers the first
    # half at 2100 and is cut at 2600 when the caller resumes; answers the whole at 3700
    caller = turn(1000, ("t", 600), ("s", 700), ("t", 700))
    (got,) = one([caller], heard_track(6000, (2100, 2600), (3700, 4500)))
    assert got.cut_in and got.cut_in_at == pytest.approx(at(2100))
    assert got.talk_over_ms == 300.0  # 2300-2600
    assert got.first_audible_ms == 700.0
    assert got.as_dict(ORIGIN)["cut_in_ms_before_end"] == 900.0
    assert got.stretches == (pytest.approx((at(1000), at(1600))), pytest.approx((at(2300), at(3000))))
    # the caller resuming at 2300 interrupted the early reply, which fell silent at the ear at 2600
    heard = heard_track(6000, (2100, 2600), (3700, 4500))
    assert silent_at_ear(heard, RATE, ORIGIN, at(2300)) == pytest.approx(at(2600))


@pytest.mark.parametrize(
    ("agent", "silent_ms", "cut_in"),
    [
        # agent reply 0-2500 cut at 1300 (caller onset 1000): silent 300 ms after the onset; next reply 3800
        ([(0, 1300), (3800, 4500)], 300.0, False),
        # a 200 ms pause between the agent's sentences does not count as silent
        ([(0, 1100), (1300, 1400), (3800, 4500)], 400.0, False),
        # the caller started in a pause of the agent's reply; the agent never resumed
        ([(0, 900), (3800, 4500)], 0.0, False),
        # the break did not work: the reply played to its end at 2500
        ([(0, 2500), (3800, 4500)], 1500.0, False),
        # the agent went quiet at 1300, then started something new at 1900 while the caller still spoke
        ([(0, 1300), (1900, 2200), (3800, 4500)], 300.0, True),
    ],
    ids=["cut", "sentence-gap", "in-a-pause", "not-broken", "resumed-inside"],
)
def test_barge_in_agent_silent_at_the_ear(
    agent: list[tuple[float, float]], silent_ms: float, cut_in: bool
) -> None:
    (got,) = one([turn(1000, ("t", 1500), barge_in=True)], heard_track(6000, *agent))
    assert got.barge_in
    assert got.silent_ms == silent_ms
    assert got.cut_in is cut_in
    assert got.first_audible_ms == 1300.0  # the reply to the interruption


def test_turns_with_nothing_audible_are_skipped_and_keep_their_script_index() -> None:
    turns = [turn(0, ("w", 500)), turn(1000, ("t", 500))]
    (got,) = one(turns, heard_track(3000, (2000, 2500)))
    assert got.index == 1
    assert got.first_audible_ms == 500.0


def test_different_caller_and_heard_rates() -> None:
    caller = CallerTurnAudio(at(1000), np.repeat(speech(("t", 500)), 2), 16000)  # 500 ms at 16 kHz
    (got,) = measure_ear([caller], heard_track(3000, (1800, 2000)), RATE, ORIGIN)
    assert got.speech_end == pytest.approx(at(1500))
    assert got.first_audible_ms == 300.0


def test_as_dict_is_relative_to_the_origin() -> None:
    (got,) = one([turn(1000, ("t", 500))], heard_track(3000, (1800, 2000)))
    d = got.as_dict(ORIGIN)
    assert d == {
        "caller_turn": 0, "speech_start_s": 1.0, "speech_end_s": 1.5, "first_audible_s": 1.8,
        "first_audible_ms": 300.0, "cut_in": False, "cut_in_ms_before_end": None, "talk_over_ms": 0.0,
        "barge_in": False, "onset_to_silent_ms": None,
    }


def test_session_turns_are_matched_to_caller_turns_by_time() -> None:
    a = EarTurn(0, at(1000), at(2000), False, at(2600), None, 0.0)
    b = EarTurn(1, at(5000), at(7000), False, at(7500), None, 0.0)
    ends = [
        at(2100),  # a's end, noticed late
        at(5600),  # inside b: the first half of a split turn
        at(7050),  # b's end
        None,  # a DTMF turn: no speech end
        at(3500),  # between turns (noise): nothing
        at(900),  # just before a's start, within the tolerance
    ]
    assert match_turns(ends, [a, b]) == [0, 1, 1, None, None, 0]
