"""parley.bench.answers: which caller turns of a density run were answered and how soon, from plain numbers."""

from __future__ import annotations

import pytest

from parley.bench.answers import Answers, CallTurns, all_answers, call_answers, sustained

# speech at 1.0 + 6k s for 1.3 s: turns end at 2.3, 8.3, 14.3, 20.3 ...
CALL = CallTurns(origin=100.0, offset_s=1.0, period_s=6.0, speech_s=1.3, playback_starts=(100.1, 103.05, 109.2))


def test_turns_ending_in_the_window_are_counted_and_matched_with_the_first_playback_after_them() -> None:
    a = call_answers(CALL, (101.0, 115.0))  # ends at 102.3, 108.3, 114.3; the greeting (100.1) is before
    assert (a.turns, a.answered, a.unanswered) == (3, 2, 1)
    assert a.latencies_ms == pytest.approx((750.0, 900.0))


def test_a_playback_from_a_turn_before_does_not_answer_the_next_one() -> None:
    call = CallTurns(origin=0.0, offset_s=1.0, period_s=6.0, speech_s=1.3, playback_starts=(2.9,))
    # 2.9 answers the turn ending at 2.3; the turn ending at 8.3 has nothing from 7.8 to its next start (13.0)
    assert call_answers(call, (0.0, 9.0)) == Answers(2, 1, (pytest.approx(600.0),))


def test_all_answers_adds_calls_up() -> None:
    total = all_answers([CALL, CALL], (101.0, 115.0))
    assert (total.turns, total.answered, len(total.latencies_ms)) == (6, 4, 4)


@pytest.mark.parametrize(
    ("answers", "dropped", "p90", "held", "why"),
    [
        (Answers(10, 10, ()), 0, 2000.0, True, ""),
        (Answers(10, 9, ()), 0, 900.0, False, "1/10 turns unanswered"),
        (Answers(10, 10, ()), 3, 900.0, False, "3 frames dropped"),
        (Answers(10, 10, ()), 0, 2300.0, False, "answer p90 2300 ms > 750 + 1500"),
        (Answers(0, 0, ()), 0, None, False, "no caller turn in the window"),
    ],
)
def test_sustained_is_the_issue_criteria(answers: Answers, dropped: int, p90: float | None, held: bool, why: str) -> None:
    assert sustained(answers=answers, dropped=dropped, p90_ms=p90, reference_p90_ms=750.0) == (held, why)
