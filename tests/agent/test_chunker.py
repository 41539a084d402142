"""The sentence chunker: where replies are cut, and that cuts never depend on how the text was streamed."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.agent.chunker import SentenceChunker


def chunk_whole(text: str, **kwargs: int) -> list[str]:
    chunker = SentenceChunker(**kwargs)
    return chunker.push(text) + chunker.flush()


def chunk_pieces(pieces: list[str], **kwargs: int) -> list[str]:
    chunker = SentenceChunker(**kwargs)
    out: list[str] = []
    for piece in pieces:
        out += chunker.push(piece)
    return out + chunker.flush()


# (id, text, chunker arguments, expected chunks)
CASES: list[tuple[str, str, dict[str, int], list[str]]] = [
    ("empty", "", {}, []),
    ("whitespace only", "  \n\t ", {}, []),
    ("one sentence", "Hello there.", {}, ["Hello there."]),
    (
        "first sentence may be short",
        "Hi. How can I help you today with your appointment?",
        {},
        ["Hi.", "How can I help you today with your appointment?"],
    ),
    (
        "short later sentences merge",
        "Hi. Sure. Okay. That works for me, see you on Tuesday.",
        {},
        ["Hi.", "Sure. Okay. That works for me, see you on Tuesday."],
    ),
    (
        "first chunk at a comma once long enough",
        "Thanks for calling Riverside Dental, how can I help you today?",
        {},
        ["Thanks for calling Riverside Dental,", "how can I help you today?"],
    ),
    (
        "comma too early for the first chunk",
        "Sure, I can help with that. What day works best for you?",
        {},
        ["Sure, I can help with that.", "What day works best for you?"],
    ),
    (
        "first chunk at a semicolon",
        "We are open until five today; tomorrow we open at eight.",
        {},
        ["We are open until five today;", "tomorrow we open at eight."],
    ),
    (
        "first chunk at a colon",
        "Here is what I have for you: Tuesday at three.",
        {},
        ["Here is what I have for you:", "Tuesday at three."],
    ),
    (
        "first chunk at a spaced dash",
        "Let me check that for you - one moment please.",
        {},
        ["Let me check that for you -", "one moment please."],
    ),
    (
        "first chunk at an em dash",
        "Let me check that for you—one moment please.",
        {},
        ["Let me check that for you—", "one moment please."],
    ),
    (
        "hyphens and ranges are not dashes",
        "We take walk-in patients from 9-5 on weekdays only.",
        {},
        ["We take walk-in patients from 9-5 on weekdays only."],
    ),
    (
        "commas only cut the first chunk",
        "Okay. Your visit is on Tuesday, at three, with Dr. Patel, in room four.",
        {},
        ["Okay.", "Your visit is on Tuesday, at three, with Dr. Patel, in room four."],
    ),
    (
        "decimal",
        "The copay is 3.5 percent of the bill. Anything else I can do for you?",
        {},
        ["The copay is 3.5 percent of the bill.", "Anything else I can do for you?"],
    ),
    (
        "price",
        "A cleaning is $4.99 today. Would you like to book one now?",
        {},
        ["A cleaning is $4.99 today.", "Would you like to book one now?"],
    ),
    (
        "price ends a sentence",
        "That will be about $120.50. Shall I put you down for it then?",
        {},
        ["That will be about $120.50.", "Shall I put you down for it then?"],
    ),
    (
        "time with colon",
        "We open at 10:30 tomorrow. Does that work for you at all?",
        {},
        ["We open at 10:30 tomorrow.", "Does that work for you at all?"],
    ),
    (
        "thousands separator is no clause",
        "It costs 1,250 dollars without insurance coverage.",
        {},
        ["It costs 1,250 dollars without insurance coverage."],
    ),
    (
        "titles never end a sentence",
        "Dr. Smith and Mr. Jones are in. Mrs. Lee and Ms. Park are not in today.",
        {},
        ["Dr. Smith and Mr. Jones are in.", "Mrs. Lee and Ms. Park are not in today."],
    ),
    (
        "street abbreviation",
        "We are at 12 Main St. in Riverside. Parking is free behind the building.",
        {},
        ["We are at 12 Main St. in Riverside.", "Parking is free behind the building."],
    ),
    (
        "e.g. and i.e.",
        "Bring your card, e.g. Delta or Aetna. We also take cash, i.e. paper money, too.",
        {},
        ["Bring your card,", "e.g. Delta or Aetna.", "We also take cash, i.e. paper money, too."],
    ),
    (
        "a.m. mid sentence",
        "We open at 8 a.m. on weekdays. On Saturday we open a bit later.",
        {},
        ["We open at 8 a.m. on weekdays.", "On Saturday we open a bit later."],
    ),
    (
        "a.m. ends a sentence before a capital",
        "I have you at 9 a.m. See you then, and have a great day!",
        {"min_chars": 5},
        ["I have you at 9 a.m.", "See you then, and have a great day!"],
    ),
    (
        "p.m. followed by lower case",
        "Is 3 p.m. okay for you or is later better? Let me know please.",
        {},
        ["Is 3 p.m. okay for you or is later better?", "Let me know please."],
    ),
    (
        "p.m. then comma",
        "At 4 p.m., the office closes for lunch. We reopen at five.",
        {},
        ["At 4 p.m., the office closes for lunch.", "We reopen at five."],
    ),
    (
        "initials",
        "Your dentist is J. R. Smith on the second floor. Take the lift up there.",
        {},
        ["Your dentist is J. R. Smith on the second floor.", "Take the lift up there."],
    ),
    (
        "No. before a number",
        "Go to suite No. 5 please. No. We do not open on Sundays at all, sorry.",
        {},
        ["Go to suite No. 5 please.", "No. We do not open on Sundays at all, sorry."],
    ),
    (
        "No. as an answer",
        "No. That is not possible, I'm afraid. We are closed then.",
        {},
        ["No.", "That is not possible, I'm afraid.", "We are closed then."],
    ),
    (
        "etc. before lower case",
        "We do cleanings, fillings, etc. and also crowns. Anything else for today?",
        {},
        ["We do cleanings,", "fillings, etc. and also crowns.", "Anything else for today?"],
    ),
    (
        "url",
        "Visit https://riverside.example.com/book?x=1 to book. Or just ask me right now.",
        {},
        ["Visit https://riverside.example.com/book?x=1 to book.", "Or just ask me right now."],
    ),
    (
        "email",
        "Write to front.desk@riverside.example.com for forms. We answer within a day.",
        {},
        ["Write to front.desk@riverside.example.com for forms.", "We answer within a day."],
    ),
    (
        "question and exclamation",
        "Great! What time would you like on Tuesday? Morning or afternoon?",
        {},
        ["Great!", "What time would you like on Tuesday?", "Morning or afternoon?"],
    ),
    (
        "ellipsis",
        "Hmm... let me see what we have available for next week. One moment.",
        {},
        ["Hmm...", "let me see what we have available for next week.", "One moment."],
    ),
    (
        "unicode ellipsis",
        "Well… I can check that for you right away. One moment please.",
        {},
        ["Well…", "I can check that for you right away.", "One moment please."],
    ),
    (
        "closing quote stays with its sentence",
        'She said "see you soon." Then she left the office for the day.',
        {},
        ['She said "see you soon."', "Then she left the office for the day."],
    ),
    (
        "closing bracket",
        "Bring your card (the blue one.) We will scan it at the front desk.",
        {},
        ["Bring your card (the blue one.)", "We will scan it at the front desk."],
    ),
    (
        "newline is a sentence end",
        "Our hours\nMonday to Friday, eight to five, and Saturday mornings too",
        {},
        ["Our hours", "Monday to Friday, eight to five, and Saturday mornings too"],
    ),
    (
        "list markers are not sentences",
        "Options:\n1. Book an appointment today\n2. Cancel one you already have",
        {},
        ["Options:", "1. Book an appointment today", "2. Cancel one you already have"],
    ),
    (
        "whitespace collapses",
        "  Hello   there.\n\n  How   are\tyou doing on this fine day?  ",
        {},
        ["Hello there.", "How are you doing on this fine day?"],
    ),
    (
        "no terminator at the end",
        "Sure thing. I will let the front desk know about it",
        {},
        ["Sure thing.", "I will let the front desk know about it"],
    ),
    (
        "lone punctuation is never a chunk",
        "... Okay, so that is all set for you now. Bye.",
        {},
        ["... Okay, so that is all set for you now.", "Bye."],
    ),
    (
        "cap cuts at a word boundary",
        "one two three four five six seven eight nine ten",
        {"max_chars": 20, "min_chars": 20},
        ["one two three four", "five six seven eight", "nine ten"],
    ),
    (
        "cap prefers a late clause mark",
        "alpha beta gamma, delta epsilon zeta eta theta",
        {"max_chars": 30, "first_min_chars": 30, "min_chars": 30},
        ["alpha beta gamma,", "delta epsilon zeta eta theta"],
    ),
    (
        "cap ignores an early clause mark",
        "ab, cdefgh ijklmn opqrst uvwxyz abcdef",
        {"max_chars": 24, "first_min_chars": 24, "min_chars": 24},
        ["ab, cdefgh ijklmn opqrst", "uvwxyz abcdef"],
    ),
    (
        "a token longer than the cap stays whole",
        "see https://example.com/a/very/long/path/indeed now",
        {"max_chars": 10, "first_min_chars": 10, "min_chars": 10},
        ["see", "https://example.com/a/very/long/path/indeed", "now"],
    ),
    (
        "cap never splits a number",
        "call 555.123.4567 or 555.987.6543 today",
        {"max_chars": 17, "min_chars": 17},
        ["call 555.123.4567", "or 555.987.6543", "today"],
    ),
]


@pytest.mark.parametrize(("text", "kwargs", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_chunks(text: str, kwargs: dict[str, int], expected: list[str]) -> None:
    assert chunk_whole(text, **kwargs) == expected
    assert chunk_pieces(list(text), **kwargs) == expected
    for seed in range(5):
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, 4)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert chunk_pieces(pieces, **kwargs) == expected


def test_first_chunk_is_emitted_before_the_reply_ends() -> None:
    chunker = SentenceChunker()
    assert chunker.push("Thanks for calling Riverside") == []
    assert chunker.push(" Dental, how") == ["Thanks for calling Riverside Dental,"]
    assert chunker.push(" can I help you today?") == []  # a sentence end waits for the next character
    assert chunker.push(" ") == ["how can I help you today?"]
    assert chunker.flush() == []


def test_a_period_waits_for_what_follows() -> None:
    chunker = SentenceChunker()
    assert chunker.push("It costs 3.") == []
    assert chunker.push("5 dollars. ") == ["It costs 3.5 dollars."]
    assert chunker.push("See you at 9 a.m.") == []
    assert chunker.push(" ") == []  # a.m. needs the next word to decide
    assert chunker.pending == "See you at 9 a.m. "
    assert chunker.push("Bye") == []
    assert chunker.flush() == ["See you at 9 a.m. Bye"]  # min_chars keeps the short sentence attached


def test_flush_resets_for_the_next_reply() -> None:
    chunker = SentenceChunker()
    assert chunker.push("Hi. Fine. ") == ["Hi."]
    assert chunker.flush() == ["Fine."]
    assert chunker.pending == ""
    assert chunker.push("Yes. ") == ["Yes."]  # first chunk of a new reply again


@pytest.mark.parametrize(
    "kwargs", [{"first_min_chars": 0}, {"min_chars": 300}, {"max_chars": 10, "first_min_chars": 15}]
)
def test_rejects_inconsistent_limits(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="first_min_chars"):
        SentenceChunker(**kwargs)


LONG_REPLY = (
    "Thanks for calling Riverside Dental, this is Riley. We're open Monday to Friday, 8 a.m. to 5 p.m., "
    "and Saturdays from 9 to 1. Dr. Patel has openings on Tuesday at 10:30 and Thursday at 3 p.m. "
    "A cleaning is $89.50 without insurance; with insurance it's usually covered, e.g. by Delta Dental. "
    "Our address is 210 River St. in Springfield—there's free parking behind the building. "
    "You can also book online at riverside-dental.example.com or e-mail front.desk@riverside.example.com. "
    "Is there anything else? No. Okay! Have a great day… bye!\n1. Bring your card\n2. Arrive early"
)


def test_long_reply_char_by_char_matches_whole() -> None:
    whole = chunk_whole(LONG_REPLY)
    assert chunk_pieces(list(LONG_REPLY)) == whole
    assert whole[0] == "Thanks for calling Riverside Dental,"
    assert all(chunk and chunk == chunk.strip() for chunk in whole)
    assert all(len(chunk) <= 200 for chunk in whole)
    assert " ".join(whole) == " ".join(LONG_REPLY.split())


@settings(max_examples=300, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=len(LONG_REPLY)), max_size=40),
    max_chars=st.integers(min_value=30, max_value=250),
    min_chars=st.integers(min_value=1, max_value=30),
    first_min_chars=st.integers(min_value=1, max_value=30),
)
def test_random_splits_of_a_long_reply_match_whole(
    cuts: list[int], max_chars: int, min_chars: int, first_min_chars: int
) -> None:
    kwargs = {"max_chars": max_chars, "min_chars": min_chars, "first_min_chars": first_min_chars}
    bounds = sorted(set(cuts))
    pieces = [LONG_REPLY[a:b] for a, b in zip([0, *bounds], [*bounds, len(LONG_REPLY)], strict=True)]
    assert chunk_pieces(pieces, **kwargs) == chunk_whole(LONG_REPLY, **kwargs)


ALPHABET = st.sampled_from(
    [*list("ab Dr.Mr.a.m.p.m.No1234567890,;:!?…-—\n\"') $@e.g.etc"), "St.", "No. ", "a.m. ", "3.5", "10:30"]
)


@settings(max_examples=400, deadline=None)
@given(
    text=st.lists(ALPHABET, max_size=120).map("".join),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20),
    max_chars=st.integers(min_value=1, max_value=60),
    min_chars=st.integers(min_value=1, max_value=20),
)
def test_any_text_any_split_same_chunks(text: str, cuts: list[int], max_chars: int, min_chars: int) -> None:
    kwargs = {"max_chars": max_chars, "min_chars": min(min_chars, max_chars), "first_min_chars": min(12, max_chars)}
    bounds = sorted({c for c in cuts if c <= len(text)})
    pieces = [text[a:b] for a, b in zip([0, *bounds], [*bounds, len(text)], strict=True)]
    whole = chunk_whole(text, **kwargs)
    assert chunk_pieces(pieces, **kwargs) == whole
    assert chunk_pieces(list(text), **kwargs) == whole
    assert all(chunk and chunk == chunk.strip() for chunk in whole)
    assert "".join(whole).replace(" ", "") == "".join(text.split())
    long_tokens = [token for token in text.split() if len(token) > max_chars]
    assert all(len(chunk) <= max_chars or chunk in long_tokens or " " not in chunk for chunk in whole)
