"""The deterministic dialogue policy behind :class:`~parley.providers.rules_llm.RulesDialogue`.

Owns: the policy's data model (intents, slots, fallbacks, as validated by ``rules_llm``), understanding
one caller utterance (normalizing ASR text, matching intents, extracting slot values such as days,
times, names and digit strings) and the state machine that answers it: slot filling across turns, FAQ
answers that re-ask the pending question, yes/no follow-ups, escalating fallbacks, transfer and hangup.
Pure: no asyncio, no I/O, no clock. Must not know about the LLM interface, YAML or the call engine.

The policy keeps no memory between requests: :func:`replay` folds :func:`step` over the caller's turns
from the start of the call, which rebuilds the state exactly, since every step is deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, TypeAlias

Action: TypeAlias = Literal["none", "hangup", "transfer", "repeat"]

_DTMF = re.compile(r"^\s*\[DTMF\s+([0-9A-D*#]+)\]\s*$", re.IGNORECASE)


# ---- the data model -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChoiceSlot:
    """One of a fixed set of values, each recognized by synonyms; some values may be refused."""

    name: str
    values: tuple[tuple[str, tuple[re.Pattern[str], ...]], ...]
    reject: Mapping[str, str] = field(default_factory=dict)


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


Slot: TypeAlias = ChoiceSlot | TimeSlot | RegexSlot | DigitsSlot


@dataclass(frozen=True, slots=True)
class YesNo:
    """Where a yes or a no goes after a yes/no question (intent names)."""

    yes: str | None
    no: str | None


@dataclass(frozen=True, slots=True)
class Prompted:
    """Text that asks a yes/no question, with where the answers go."""

    text: str
    expect: YesNo


@dataclass(frozen=True, slots=True)
class Intent:
    name: str
    response: str = ""
    priority: int = 0
    keywords: tuple[re.Pattern[str], ...] = ()
    patterns: tuple[re.Pattern[str], ...] = ()
    slots: tuple[str, ...] = ()
    prompts: Mapping[str, str] = field(default_factory=dict)
    intro: str = ""
    action: Action = "none"
    destination: str = ""
    unavailable: str = ""
    follow_up: bool = True
    expect: YesNo | None = None


@dataclass(frozen=True, slots=True)
class DialogueConfig:
    name: str
    greeting: str
    intents: tuple[Intent, ...]
    fallbacks: tuple[str, ...]
    slots: Mapping[str, Slot] = field(default_factory=dict)
    agent_name: str = ""
    organization: str = ""
    persona: str = ""
    affirm: tuple[re.Pattern[str], ...] = ()
    deny: tuple[re.Pattern[str], ...] = ()
    fillers: frozenset[str] = frozenset()
    escalation: Prompted | None = None
    follow_up: Prompted | None = None
    dtmf: Mapping[str, str] = field(default_factory=dict)

    def intent(self, name: str) -> Intent:
        return next(intent for intent in self.intents if intent.name == name)

    def render(self, template: str, slots: Mapping[str, str] | None = None) -> str:
        return template.format_map({"agent": self.agent_name, "organization": self.organization, **(slots or {})})


@dataclass(frozen=True, slots=True)
class DialogueState:
    """What the policy knows after some caller turns."""

    task: str | None = None  # the intent whose slots are being filled
    slots: Mapping[str, str] = field(default_factory=dict)
    asking: str | None = None  # the slot the last reply asked for
    expect: YesNo | None = None  # the last reply asked a yes/no question
    misses: int = 0  # consecutive turns not understood
    last_reply: str = ""


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    intent: str | None = None  # None: not understood (a fallback)
    tool: Literal["hangup", "transfer"] | None = None
    arguments: Mapping[str, object] = field(default_factory=dict)


# ---- understanding one utterance ----------------------------------------------------------------------


def normalize(text: str) -> str:
    """ASR or typed text as the patterns see it: lower case, "p.m." -> "pm", punctuation -> spaces
    (apostrophes inside words and colons inside times stay), single spaces."""
    text = text.lower().replace("’", "'")
    text = re.sub(r"\b([ap])\.\s?m\b\.?", r"\1m", text)
    text = re.sub(r"(?<=\d)[:.](?=\d\d\b)", "\x00", text)
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)
    text = re.sub(r"[^a-z0-9'\x00]+", " ", text).replace("\x00", ":")
    return text.strip()


def keyword_pattern(keyword: str) -> re.Pattern[str]:
    """A keyword or phrase matched on word boundaries, plural "s" optional; a trailing ``*`` is a prefix."""
    stem = normalize(keyword.rstrip("*"))
    tail = r"[a-z']*" if keyword.endswith("*") else "s?"
    return re.compile(r"(?<![a-z0-9'])" + re.escape(stem).replace(r"\ ", r"\s+") + tail + r"(?![a-z0-9'])")


def _found(patterns: Iterable[re.Pattern[str]], text: str) -> bool:
    return any(p.search(text) for p in patterns)


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


def parse_time(text: str, *, asked: bool = False, assume_pm_before: int = 7) -> str | None:
    """The best-evidenced clock time in normalized ``text`` ("3 PM", "10:30 AM"), or None. A bare hour
    ("three") counts only after "at"/"around"/... or when the caller was just asked for a time."""
    best: tuple[int, str] | None = None
    for m in _TIME.finditer(text):
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
            best = (evidence, f"{spoken} {'PM' if pm else 'AM'}")
    return best[1] if best else None


_DIGIT_WORDS = {"zero": "0", "oh": "0", "o": "0"} | {w: str(n) for w, n in _UNITS.items()}


def _digits(text: str, slot: DigitsSlot) -> str | None:
    runs: list[str] = [""]
    for token in text.split():
        if token.isdigit():
            runs[-1] += token
        elif token in _DIGIT_WORDS:
            runs[-1] += _DIGIT_WORDS[token]
        elif runs[-1]:
            runs.append("")
    fitting = [run for run in runs if slot.min_digits <= len(run) <= slot.max_digits]
    return " ".join(fitting[-1]) if fitting else None


def _extract(slot: Slot, text: str, asked: bool) -> tuple[str | None, str | None]:
    """(value, refusal message) for ``slot`` in normalized ``text``."""
    match slot:
        case ChoiceSlot():
            hits = [(m.start(), value) for value, synonyms in slot.values for p in synonyms for m in p.finditer(text)]
            if not hits:
                return None, None
            value = max(hits)[1]  # the last one mentioned: callers correct themselves
            return (None, slot.reject[value]) if value in slot.reject else (value, None)
        case TimeSlot():
            return parse_time(text, asked=asked, assume_pm_before=slot.assume_pm_before), None
        case DigitsSlot():
            return _digits(text, slot), None
        case RegexSlot():
            for pattern in slot.patterns + (slot.when_asked if asked else ()):
                m = pattern.search(text)
                if m is None:
                    continue
                raw = (m.groupdict().get("value") or (m.group(1) if pattern.groups else m.group())).strip()
                if not raw or raw in slot.exclude:
                    continue
                formats = {"title": raw.title(), "upper": raw.upper(), "lower": raw.lower()}
                return formats.get(slot.format, raw), None
            return None, None


def _fill(cfg: DialogueConfig, intent: Intent, state: DialogueState, text: str) -> tuple[dict[str, str], str | None]:
    """The task's slots after this utterance, and a refusal message if a value was refused."""
    words = [w for w in text.split() if w not in cfg.fillers]
    text = " ".join(words)
    slots = dict(state.slots) if state.task == intent.name else {}
    refusal: str | None = None
    heard_other = False
    for name in intent.slots:
        if name == state.asking:
            continue
        value, refused = _extract(cfg.slots[name], text, asked=False)
        heard_other = heard_other or value is not None or refused is not None
        refusal = refusal or refused
        if value is not None:
            slots[name] = value
    if state.asking in intent.slots and state.task == intent.name:
        value, refused = _extract(cfg.slots[state.asking], text, asked=not heard_other)
        refusal = refusal or refused
        if value is not None:
            slots[state.asking] = value
    return slots, refusal


def _match(cfg: DialogueConfig, text: str) -> Intent | None:
    hits = [i for i in cfg.intents if _found(i.keywords, text) or _found(i.patterns, text)]
    return max(hits, key=lambda i: i.priority) if hits else None  # max keeps the first of equals


# ---- the state machine --------------------------------------------------------------------------------


def _available(intent: Intent, tools: frozenset[str]) -> bool:
    return intent.action != "transfer" or "transfer" in tools


def _advance(
    cfg: DialogueConfig,
    state: DialogueState,
    intent: Intent,
    slots: dict[str, str],
    lead: list[str],
    refusal: str | None,
) -> tuple[DialogueState, Reply]:
    """Ask for the task's next missing slot, or complete it."""
    missing = [name for name in intent.slots if name not in slots]
    if missing:
        text = refusal or cfg.render(intent.prompts[missing[0]], slots)
        state = replace(state, task=intent.name, slots=slots, asking=missing[0])
        return _say(state, [*lead, text], intent.name)
    state = replace(state, task=None, slots={}, asking=None)
    return _close(cfg, state, intent, [*lead, cfg.render(intent.response, slots)])


def _close(cfg: DialogueConfig, state: DialogueState, intent: Intent, parts: list[str]) -> tuple[DialogueState, Reply]:
    """A finished answer: ask the intent's own yes/no question, else offer more help."""
    if intent.expect is not None:
        state = replace(state, expect=intent.expect)
    elif intent.follow_up and cfg.follow_up is not None and intent.action == "none":
        parts = [*parts, cfg.render(cfg.follow_up.text)]
        state = replace(state, expect=cfg.follow_up.expect)
    return _say(state, parts, intent.name)


def _say(
    state: DialogueState,
    parts: Sequence[str],
    intent: str | None,
    tool: Literal["hangup", "transfer"] | None = None,
    arguments: Mapping[str, object] | None = None,
) -> tuple[DialogueState, Reply]:
    text = " ".join(part.strip() for part in parts if part.strip())
    return replace(state, last_reply=text), Reply(text, intent, tool, arguments or {})


def _reprompt(cfg: DialogueConfig, state: DialogueState) -> list[str]:
    if state.task is None or state.asking is None:
        return []
    return [cfg.render(cfg.intent(state.task).prompts[state.asking], state.slots)]


def _miss(cfg: DialogueConfig, state: DialogueState, tools: frozenset[str]) -> tuple[DialogueState, Reply]:
    state = replace(state, misses=state.misses + 1)
    escalation = cfg.escalation
    if state.misses > len(cfg.fallbacks) and escalation is not None:
        target = escalation.expect.yes
        if target is None or _available(cfg.intent(target), tools):
            return _say(replace(state, expect=escalation.expect), [cfg.render(escalation.text)], None)
    text = cfg.render(cfg.fallbacks[min(state.misses, len(cfg.fallbacks)) - 1])
    return _say(state, [text, *_reprompt(cfg, state)], None)


def _run(
    cfg: DialogueConfig, state: DialogueState, intent: Intent, text: str, tools: frozenset[str]
) -> tuple[DialogueState, Reply]:
    state = replace(state, misses=0)
    if intent.slots:
        lead = [] if state.task == intent.name else [cfg.render(intent.intro)]
        slots, refusal = _fill(cfg, intent, state, text)
        return _advance(cfg, replace(state, asking=None), intent, slots, lead, refusal)
    if intent.action == "transfer":
        if "transfer" not in tools:
            return _say(state, [cfg.render(intent.unavailable), *_reprompt(cfg, state)], intent.name)
        state = replace(state, task=None, slots={}, asking=None)
        return _say(state, [cfg.render(intent.response)], intent.name, "transfer", {"destination": intent.destination})
    if intent.action == "hangup":
        state = replace(state, task=None, slots={}, asking=None)
        return _say(state, [cfg.render(intent.response)], intent.name, "hangup" if "hangup" in tools else None)
    answer = [cfg.render(intent.response, state.slots)]
    if state.task is not None:  # an FAQ in the middle of a task: answer, take any slot given, re-ask
        task = cfg.intent(state.task)
        slots, refusal = _fill(cfg, task, state, text)
        return _advance(cfg, state, task, slots, answer, refusal)
    return _close(cfg, state, intent, answer)


def step(
    cfg: DialogueConfig, state: DialogueState, utterance: str, tools: frozenset[str]
) -> tuple[DialogueState, Reply]:
    """Answer one caller utterance (or a ``[DTMF n]`` key press)."""
    expect, state = state.expect, replace(state, expect=None)
    if (dtmf := _DTMF.match(utterance)) is not None:
        keys = dtmf.group(1).upper()
        keys = keys[:-1] if len(keys) > 1 and keys.endswith("#") else keys  # "#" ends an entry
        text, target = "", cfg.dtmf.get(keys, cfg.dtmf.get(keys[0]))  # several keys: the whole, else the first
        intent = cfg.intent(target) if target else None
    else:
        text = normalize(utterance)
        intent = _match(cfg, text)
        if intent is None and expect is not None:
            if expect.yes and _found(cfg.affirm, text):
                intent = cfg.intent(expect.yes)
            elif expect.no and _found(cfg.deny, text):
                intent = cfg.intent(expect.no)
    if intent is not None and intent.action == "repeat":
        return _say(replace(state, expect=expect), [state.last_reply], intent.name)  # the question still stands
    if intent is not None:
        return _run(cfg, state, intent, text, tools)
    if state.task is not None and text:
        task = cfg.intent(state.task)
        slots, refusal = _fill(cfg, task, state, text)
        if slots != state.slots or refusal is not None:
            return _advance(cfg, replace(state, misses=0, asking=None), task, slots, [], refusal)
    return _miss(cfg, state, tools)


def replay(cfg: DialogueConfig, utterances: Iterable[str], tools: frozenset[str]) -> tuple[DialogueState, Reply]:
    """The state after the caller's turns so far, and the reply to the last one (the greeting if none)."""
    state = DialogueState(last_reply=cfg.render(cfg.greeting))
    reply = Reply(state.last_reply, "greeting")
    for utterance in utterances:
        state, reply = step(cfg, state, utterance, tools)
    return state, reply
