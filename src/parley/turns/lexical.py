"""Does the caller's sentence so far look unfinished? A pure, lexical end-of-turn signal.

Owns: :func:`unfinished_reason`, which reads the speculative transcript of a turn at a pause (whisper's
decode of the audio up to the pause) and says why it cannot be the end of the turn, or ``None`` when
nothing in the words says so. The turn machine uses it to hold the turn longer and to distrust a
"complete" verdict from smart-turn (which hears falling pitch in "My name is..." and votes complete).
Must not know about audio, timers or the machine; no I/O. English only, like the bundled recogniser.

It only ever argues for waiting: an empty or unknown text is not evidence, so the acoustic signals decide.
Rules (checked in order):
- the last word is a conjunction, preposition, article, possessive, copula, contraction that needs a
  complement ("it's", "I'm") or a filler ("um", "uh");
- the text ends in "to <verb>" for a verb that needs an object ("I'd like to book");
- the text ends in a verb that introduces a clause or an object ("I think", "I need", "I was wondering");
- the whole text is one word that starts sentences ("It" when the recogniser lost the "'s");
- the last few words ask the agent to hold ("let me check my calendar", "hold on", "one moment");
- a digit sequence is still coming: the trailing run of digits (numerals or spoken digits, "double five"
  counts two) is shorter than a phone number, and either has at least 3 digits or the text talks about a
  number ("my number is five five five").
"""

from __future__ import annotations

import re

PHONE_DIGITS = 10  # a North American number; a run this long is complete

TRAILING_WORDS = frozenset(
    "and or but because to for of with at on in into from by about than as if when where which who whose "
    "the a an my your our his her their its this these those some any another every "
    "is are was were am be been being it's i'm i'd i'll we're they're you're he's she's that's there's "
    "um uh er erm hmm like".split()
)
OBJECT_VERBS = frozenset(
    "book make schedule cancel change reschedule move get see speak talk ask know bring add find "
    "set arrange confirm leave give pay tell".split()
)
CLAUSE_VERBS = frozenset("think guess mean believe hope wonder wondering need want wanted would could".split())
STARTERS = frozenset("it i so well we they he she what can could would do does is are".split())  # alone
HOLD_PHRASES = ("let me check", "let me see", "let me think", "let me look", "hold on", "one moment",
                "one second", "one sec", "just a second", "just a moment", "give me a second")
NUMBER_WORDS = frozenset("number phone digits code extension".split())
DIGIT_WORDS = {"zero": 1, "oh": 1, "o": 1, "one": 1, "two": 1, "three": 1, "four": 1, "five": 1, "six": 1,
               "seven": 1, "eight": 1, "nine": 1}
REPEATS = {"double": 2, "triple": 3}

_TOKEN = re.compile(r"[a-z]+(?:['’][a-z]+)*(?:-[a-z]+)*|\d+")


def words(text: str) -> list[str]:
    """Lower-case words and digit groups; punctuation (whisper's "..." and ".") is dropped."""
    return [w.replace("’", "'") for w in _TOKEN.findall(text.lower())]


def trailing_digits(ws: list[str]) -> int:
    """How many digits the trailing run of digit tokens spells ("five five five" 3, "555 12" 5)."""
    n = 0
    for w in reversed(ws):
        if w.isdigit():
            n += len(w)
        elif w in DIGIT_WORDS:
            n += DIGIT_WORDS[w]
        elif w in REPEATS and n:
            n += REPEATS[w] - 1  # "double five": the five is already counted once
        else:
            break
    return n


def unfinished_reason(text: str) -> str | None:
    """Why ``text`` cannot end the caller's turn, or None."""
    ws = words(text)
    if not ws:
        return None
    last = ws[-1]
    if last in TRAILING_WORDS:
        return f"ends with {last!r}"
    if len(ws) >= 2 and ws[-2] == "to" and last in OBJECT_VERBS:
        return f"ends with 'to {last}'"
    if last in CLAUSE_VERBS and len(ws) >= 2:
        return f"ends with {last!r}"
    if len(ws) == 1 and last in STARTERS:
        return f"only {last!r} so far"
    tail = " ".join(ws[-6:])
    if hold := next((h for h in HOLD_PHRASES if h in tail), None):
        return f"announces more: {hold!r}"
    digits = trailing_digits(ws)
    if 0 < digits < PHONE_DIGITS and (digits >= 3 or NUMBER_WORDS.intersection(ws)):
        return f"{digits} digits so far"
    return None


def looks_unfinished(text: str) -> bool:
    return unfinished_reason(text) is not None
