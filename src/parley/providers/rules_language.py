"""Understanding one caller utterance for the offline rules brain (:mod:`parley.providers.rules_policy`).

Owns: normalizing speech-to-text output of phone audio (lower case, no punctuation, "3pm" -> "3 pm",
stage directions such as "[BLANK_AUDIO]" or "(coughs)" dropped), keyword patterns, and recognizing slot
values: days and other fixed choices, clock times said as words or digits, digit strings ("five five
five, one two three four", "double two", "to" between digits), names and free text. Each recognized
value comes with the span of text it was read from, so two slots of one kind (the appointment's day and
the day to move it to) never take the same words. Pure: no I/O, no state. Must not know the dialogue.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

Span: TypeAlias = tuple[int, int]

_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*|[♪♫]")


@dataclass(frozen=True, slots=True)
class ChoiceSlot:
    """One of a fixed set of values, each recognized by synonyms; some values may be refused. With
    ``after``, a mention counts only right after one of those patterns ("move it *to* thursday"), unless
    the caller was just asked for this slot."""

    name: str
    values: tuple[tuple[str, tuple[re.Pattern[str], ...]], ...]
    reject: Mapping[str, str] = field(default_factory=dict)
    after: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class TimeSlot:
    """A clock time ("3 pm", "10:30", "three thirty", "half past two", "noon"), spoken back as "3:30 PM"."""

    name: str
    assume_pm_before: int = 7


@dataclass(frozen=True, slots=True)
class RegexSlot:
    """Free text captured by patterns (group ``value``, else group 1); ``when_asked`` patterns apply only
    right after the slot's prompt."""

    name: str
    patterns: tuple[re.Pattern[str], ...]
    when_asked: tuple[re.Pattern[str], ...] = ()
    format: Literal["title", "upper", "lower", "none"] = "none"
    exclude: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class DigitsSlot:
    """A digit string spoken as digits or words ("five five five, one two three four")."""

    name: str
    min_digits: int = 7
    max_digits: int = 15


@dataclass(frozen=True, slots=True)
class TextSlot:
    """Whatever the caller says right after the slot's prompt ("what is it about?"), fillers dropped."""

    name: str
    min_words: int = 1


Slot: TypeAlias = ChoiceSlot | TimeSlot | RegexSlot | DigitsSlot | TextSlot


@dataclass(frozen=True, slots=True)
class Found:
    """What :func:`extract` read for a slot: a value, or a refusal to say, and the words it came from."""

    value: str | None
    refusal: str | None = None
    span: Span = (0, 0)


def strip_annotations(text: str) -> str:
    """ASR stage directions removed: "[BLANK_AUDIO]", "(coughs)", "*laughs*", music notes."""
    return _ANNOTATION.sub(" ", text)


def normalize(text: str) -> str:
    """ASR or typed text as the patterns see it: lower case, "p.m." -> "pm", "3pm" -> "3 pm", punctuation
    -> spaces (apostrophes inside words and colons inside times stay), single spaces, "at to pm" -> "at two pm"."""
    text = text.lower().replace("’", "'")
    text = re.sub(r"\b([ap])\.\s?m\b\.?", r"\1m", text)
    text = re.sub(r"(?<=\d)(?=[ap]m\b)", " ", text)
    text = re.sub(r"(?<=\d)[:.](?=\d\d\b)", "\x00", text)
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)
    text = re.sub(r"[^a-z0-9'\x00]+", " ", text).replace("\x00", ":")
    return _homophones(text.strip())


_SAID_AS = {"to": "two", "too": "two", "for": "four"}


def _homophones(text: str) -> str:
    """ "two"/"four" as speech-to-text writes them in times: "at to pm", "at for o'clock", "at too"."""
    text = re.sub(r"\b(to|too|for)(?= (?:am|pm|o'clock|oclock)\b)", lambda m: _SAID_AS[m[1]], text)
    return re.sub(r"\b(at|around|by) (to|too|for)$", lambda m: f"{m[1]} {_SAID_AS[m[2]]}", text)


def keyword_pattern(keyword: str) -> re.Pattern[str]:
    """A keyword or phrase matched on word boundaries, plural "s" optional; a trailing ``*`` is a prefix."""
    stem = normalize(keyword.rstrip("*"))
    tail = r"[a-z']*" if keyword.endswith("*") else "s?"
    return re.compile(r"(?<![a-z0-9'])" + re.escape(stem).replace(r"\ ", r"\s+") + tail + r"(?![a-z0-9'])")


def found(patterns: Iterable[re.Pattern[str]], text: str) -> bool:
    return any(p.search(text) for p in patterns)


def first_at(patterns: Iterable[re.Pattern[str]], text: str) -> int | None:
    """Where the earliest match of any pattern starts, or None."""
    starts = [m.start() for p in patterns if (m := p.search(text)) is not None]
    return min(starts) if starts else None


_HOURS = "one two three four five six seven eight nine ten eleven twelve".split()
_UNITS = {word: n for n, word in enumerate(_HOURS[:9], start=1)}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50}
_MINUTE_WORDS = {"ten": 10, "fifteen": 15, **_TENS} | {
    f"{t} {u}": _TENS[t] + n for t in _TENS for u, n in _UNITS.items()
}
_MINUTE_WORDS |= {f"{oh} {u}": n for oh in ("oh", "o") for u, n in _UNITS.items()}
_MINUTE_ALT = "|".join(sorted(map(re.escape, _MINUTE_WORDS), key=len, reverse=True))
_HOUR_ALT = "|".join(_HOURS) + r"|\d{1,2}"
_MERIDIEM = r"am|pm|a m|p m|in the morning|in the afternoon|in the evening|at night|o'clock|oclock"
_TIME = re.compile(
    rf"(?:\b(?P<prefix>at|around|about|by|after|before)\s+)?"
    rf"(?:\b(?P<noon>noon|midday)\b"
    rf"|\b(?P<rel>half past|quarter past|quarter after|quarter to)\s+(?P<rhour>{_HOUR_ALT})\b"
    rf"|\b(?P<hour>{_HOUR_ALT})(?::(?P<mm>\d\d)|\s+(?P<mword>{_MINUTE_ALT}))?\b)"
    rf"(?:\s*(?P<mer>{_MERIDIEM})\b)?"
)


def _overlaps(span: Span, taken: Sequence[Span]) -> bool:
    return any(span[0] < end and start < span[1] for start, end in taken)


def find_time(text: str, *, asked: bool = False, assume_pm_before: int = 7, taken: Sequence[Span] = ()) -> Found:
    """The best-evidenced clock time in normalized ``text`` ("3 PM", "10:30 AM") outside ``taken``. A bare
    hour ("three") counts only after "at"/"around"/... or when the caller was just asked for a time."""
    best: tuple[int, str, Span] | None = None
    for m in _TIME.finditer(text):
        if _overlaps(m.span(), taken):
            continue
        hour_text = m["rhour"] or m["hour"]
        if m["noon"]:
            hour, minute = 12, 0
        else:
            hour = int(hour_text) if hour_text.isdigit() else _HOURS.index(hour_text) + 1
            minute = int(m["mm"]) if m["mm"] else _MINUTE_WORDS.get(m["mword"] or "", 0)
        if m["rel"] == "half past":
            minute = 30
        elif m["rel"] in ("quarter past", "quarter after"):
            minute = 15
        elif m["rel"] == "quarter to":
            hour, minute = (hour - 2) % 12 + 1, 45
        evidence = 3 * bool(m["mer"] or m["noon"]) + 2 * bool(m["mm"] or m["mword"] or m["rel"]) + bool(m["prefix"])
        if not 0 <= minute < 60 or not (1 <= hour <= 12 or (13 <= hour <= 23 and not m["mer"])):
            continue
        if evidence == 0 and not asked:
            continue
        mer = m["mer"] or ""
        if hour > 12:
            pm, hour = True, hour - 12
        elif mer.startswith(("a", "in the m")):
            pm = False
        elif mer.startswith(("p", "in the a", "in the e", "at n")) or m["noon"]:
            pm = True
        else:
            pm = hour == 12 or hour < assume_pm_before
        spoken = f"{hour}:{minute:02d}" if minute else f"{hour}"
        if best is None or evidence > best[0]:
            best = (evidence, f"{spoken} {'PM' if pm else 'AM'}", m.span())
    return Found(best[1], None, best[2]) if best else Found(None)


def parse_time(text: str, *, asked: bool = False, assume_pm_before: int = 7) -> str | None:
    """:func:`find_time`'s value alone."""
    return find_time(text, asked=asked, assume_pm_before=assume_pm_before).value


_DIGIT_WORDS = {"zero": "0", "oh": "0", "o": "0"} | {w: str(n) for w, n in _UNITS.items()}
_REPEATS = {"double": 2, "triple": 3}


def _digits(text: str, slot: DigitsSlot) -> Found:
    """The last digit run of a fitting length: words or digits, "double five", and "to"/"too" between digits
    (speech-to-text writes "two" as "to")."""
    runs: list[tuple[str, int, int]] = []
    run, start, end, repeat = "", 0, 0, 1
    tokens = [(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    for n, (token, at, stop) in enumerate(tokens):
        nxt = tokens[n + 1][0] if n + 1 < len(tokens) else ""
        digit = token if token.isdigit() else _DIGIT_WORDS.get(token)
        if digit is None and token in ("to", "too") and run and (nxt.isdigit() or nxt in _DIGIT_WORDS):
            digit = "2"
        if digit is None and token in _REPEATS and (nxt.isdigit() or nxt in _DIGIT_WORDS):
            repeat = _REPEATS[token]
            start = start if run else at
            continue
        if digit is not None:
            start = start if run else at
            run, end, repeat = run + digit * repeat, stop, 1
        elif run:
            runs.append((run, start, end))
            run, repeat = "", 1
    if run:
        runs.append((run, start, end))
    fitting = [r for r in runs if slot.min_digits <= len(r[0]) <= slot.max_digits]
    if not fitting:
        return Found(None)
    value, at, stop = fitting[-1]
    return Found(" ".join(value), None, (at, stop))


def extract(slot: Slot, text: str, asked: bool, taken: Sequence[Span] = ()) -> Found:
    """``slot``'s value in normalized ``text``, ignoring the words in ``taken``."""
    match slot:
        case ChoiceSlot():
            hits = [
                (m.start(), m.end(), value)
                for value, synonyms in slot.values
                for p in synonyms
                for m in p.finditer(text)
                if not _overlaps(m.span(), taken)
                and (asked or slot.after is None or slot.after.search(text[: m.start()]) is not None)
            ]
            if not hits:
                return Found(None)
            start, end, value = max(hits)  # the last one mentioned: callers correct themselves
            if value in slot.reject:
                return Found(None, slot.reject[value], (start, end))
            return Found(value, None, (start, end))
        case TimeSlot():
            return find_time(text, asked=asked, assume_pm_before=slot.assume_pm_before, taken=taken)
        case DigitsSlot():
            return _digits(text, slot)
        case TextSlot():
            if asked and len(text.split()) >= slot.min_words:
                return Found(text, None, (0, len(text)))
            return Found(None)
        case RegexSlot():
            for pattern in slot.patterns + (slot.when_asked if asked else ()):
                m = pattern.search(text)
                if m is None:
                    continue
                group = "value" if "value" in pattern.groupindex else (1 if pattern.groups else 0)
                raw = m.group(group).strip()
                if not raw or raw in slot.exclude or _overlaps(m.span(group), taken):
                    continue
                formats = {"title": raw.title(), "upper": raw.upper(), "lower": raw.lower()}
                return Found(formats.get(slot.format, raw), None, m.span(group))
            return Found(None)
