"""The lexical end-of-turn signal: which speculative transcripts look unfinished (a table)."""

from __future__ import annotations

import pytest

from parley.turns.lexical import looks_unfinished, trailing_digits, unfinished_reason, words

UNFINISHED = [
    "My name is",
    "My name is...",
    "the number is",
    "It's",
    "I'd like to book",
    "I'd like to cancel.",
    "I need to reschedule my appointment and",
    "Can I come in on",
    "Um",
    "Uh.",
    "I'm looking for",
    "I think",
    "I was wondering",
    "My number is five five five",
    "My number is 555",
    "555-123",
    "my number is double five",
    "the code is 4",
    "Yes, that works. And",
    "I’m",
    "It",
    "Let me check my calendar.",
    "Hold on, one second.",
]
FINISHED = [
    "",
    "...",
    "Sarah Johnson.",
    "Yes.",
    "No.",
    "Uh-huh.",
    "Thank you.",
    "I think so.",
    "My number is 555-123-4567.",
    "five five five one two three four five six seven",
    "My date of birth is March third, nineteen eighty five.",
    "Wednesday at three works.",
    "for 2 people",
    "I'd like to book a cleaning for next Tuesday.",
    "Hi, I'd like to book an appointment.",
    "I'll take it.",
]


@pytest.mark.parametrize("text", UNFINISHED)
def test_unfinished(text: str) -> None:
    assert looks_unfinished(text), text
    assert unfinished_reason(text)


@pytest.mark.parametrize("text", FINISHED)
def test_not_unfinished(text: str) -> None:
    assert unfinished_reason(text) is None, text


def test_words_and_digit_runs() -> None:
    assert words("My number's 555-12, OK?") == ["my", "number's", "555", "12", "ok"]
    assert trailing_digits(words("call 555 one two")) == 5
    assert trailing_digits(words("double five")) == 2
    assert trailing_digits(words("five people")) == 0
