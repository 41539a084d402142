"""Truncating an interrupted reply to what the caller heard, and the message list the brain sees."""

from __future__ import annotations

import pytest

from parley.agent.memory import Conversation, SpokenSegment, heard_text

SEGS = [
    SpokenSegment("Sure, I can help with that.", 1500.0),
    SpokenSegment("We have an opening on Tuesday at nine in the morning.", 2600.0),
    SpokenSegment("Would that work for you?", 1100.0),
]


@pytest.mark.parametrize(
    ("heard_ms", "text", "complete"),
    [
        (0.0, "", False),
        (700.0, "Sure, I can", False),  # 47% of the first sentence: whole words only
        (1500.0, "Sure, I can help with that.", False),
        (1500.0 + 1300.0, "Sure, I can help with that. We have an opening on", False),  # half of sentence 2
        (5200.0, "Sure, I can help with that. We have an opening on Tuesday at nine in the morning. "
                 "Would that work for you?", True),
        (9999.0, "Sure, I can help with that. We have an opening on Tuesday at nine in the morning. "
                 "Would that work for you?", True),
    ],
)
def test_heard_text(heard_ms: float, text: str, complete: bool) -> None:
    assert heard_text(SEGS, heard_ms) == (text, complete)


def test_interrupted_reply_is_stored_as_heard() -> None:
    conv = Conversation("You are a receptionist.")
    conv.add_user("I'd like to book")
    stored = conv.add_interrupted(SEGS, 1800.0)
    assert stored == "Sure, I can help with that. We"
    msgs = conv.for_llm()
    assert [m.role for m in msgs] == ["system", "user", "assistant"]
    assert msgs[-1].content == stored


def test_nothing_heard_stores_nothing() -> None:
    conv = Conversation("x")
    assert conv.add_interrupted(SEGS, 0.0) == ""
    assert conv.messages == []


def test_old_turns_are_trimmed_but_the_system_prompt_stays() -> None:
    conv = Conversation("sys", max_turns=2)
    for i in range(5):
        conv.add_user(f"u{i}")
        conv.add_assistant(f"a{i}")
    msgs = conv.for_llm()
    assert msgs[0].content == "sys"
    assert [m.content for m in msgs[1:]] == ["u3", "a3", "u4", "a4"]
