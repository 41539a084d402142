"""The deterministic dialogue policy behind :class:`~parley.providers.rules_llm.RulesDialogue`.

Owns: the policy's data model (intents, slots, fallbacks, as validated by ``rules_llm``) and the state
machine that answers one caller utterance: slot filling across turns (several slots in one sentence),
confirming a task before it is done, FAQ answers that re-ask the pending question, yes/no follow-ups,
intents that need a transfer falling back to another intent when that transfer is not offered,
escalating fallbacks that tell a garbled utterance ("could you say that again?") from a clear sentence
the policy cannot handle (it says what it can do), transfer and hangup. Understanding the words is
:mod:`parley.providers.rules_language`. Pure: no asyncio, no I/O, no clock. Must not know about the LLM
interface, YAML or the call engine.

The policy keeps no memory between requests: :func:`replay` folds :func:`step` over the caller's turns
from the start of the call, which rebuilds the state exactly, since every step is deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, TypeAlias

from parley.providers.rules_language import (
    ChoiceSlot,
    DigitsSlot,
    RegexSlot,
    Slot,
    Span,
    TextSlot,
    TimeSlot,
    extract,
    first_at,
    found,
    keyword_pattern,
    normalize,
    parse_time,
    strip_annotations,
)

__all__ = [
    "Action", "ChoiceSlot", "DialogueConfig", "DialogueState", "DigitsSlot", "Intent", "Offer", "Prompted",
    "RegexSlot", "Reply", "Slot", "TextSlot", "TimeSlot", "YesNo", "keyword_pattern", "normalize", "parse_time",
    "replay", "step",
]  # fmt: skip

Action: TypeAlias = Literal["none", "hangup", "transfer", "repeat"]

_DTMF = re.compile(r"^\s*\[DTMF\s+([0-9A-D*#]+)\]\s*$", re.IGNORECASE)
_INTERRUPTS_FREE_TEXT = frozenset({"repeat", "hangup", "transfer"})
_DIGIT_FILLERS = frozenset({"oh", "o"})  # a filler elsewhere, a zero in a phone number


# ---- the data model -------------------------------------------------------------------------------------


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
    destination: str = ""  # transfer: the target name the transfer tool is called with
    unavailable: str = ""  # said when the transfer this intent needs is not offered
    otherwise: str = ""  # the intent to run instead when the transfer this intent needs is not offered
    confirm: str = ""  # a yes/no question asked once every slot is filled; yes completes the task
    declined: str = ""  # said when the caller answers ``confirm`` with a no
    follow_up: bool = True
    expect: YesNo | None = None


@dataclass(frozen=True, slots=True)
class DialogueConfig:
    name: str
    greeting: str
    intents: tuple[Intent, ...]
    fallbacks: tuple[str, ...]  # a clear sentence not understood (no task in progress)
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
    unclear: tuple[str, ...] = ()  # empty or garbled input (default: ``fallbacks``)
    in_task: tuple[str, ...] = ()  # a sentence not understood while a slot is asked (default: ``unclear``)
    unclear_max_words: int = 0  # utterances of at most this many words (fillers aside) count as garbled
    capabilities: str = ""  # {capabilities} in any text
    capabilities_without_transfer: str = ""  # ... when the transfer tool is not offered

    def intent(self, name: str) -> Intent:
        return next(intent for intent in self.intents if intent.name == name)

    def render(self, template: str, slots: Mapping[str, str] | None = None, *, transfer: bool = True) -> str:
        can_do = self.capabilities if transfer else self.capabilities_without_transfer or self.capabilities
        return template.format_map(
            {"agent": self.agent_name, "organization": self.organization, "capabilities": can_do, **(slots or {})}
        )


@dataclass(frozen=True, slots=True)
class Offer:
    """The tools offered with this request, and the transfer target names offered (None: any)."""

    tools: frozenset[str] = frozenset()
    destinations: frozenset[str] | None = None

    def can_transfer(self, destination: str) -> bool:
        return "transfer" in self.tools and (self.destinations is None or destination in self.destinations)


@dataclass(frozen=True, slots=True)
class DialogueState:
    """What the policy knows after some caller turns."""

    offer: Offer = field(default_factory=Offer)
    task: str | None = None  # the intent whose slots are being filled
    slots: Mapping[str, str] = field(default_factory=dict)
    asking: str | None = None  # the slot the last reply asked for
    confirming: bool = False  # the last reply asked the task's confirm question
    expect: YesNo | None = None  # the last reply asked a yes/no question
    misses: int = 0  # consecutive turns not understood
    last_reply: str = ""


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    intent: str | None = None  # None: not understood (a fallback)
    tool: Literal["hangup", "transfer"] | None = None
    arguments: Mapping[str, object] = field(default_factory=dict)


# ---- reading the utterance against the state -----------------------------------------------------------


def _yes_no(cfg: DialogueConfig, text: str) -> bool | None:
    """A yes (True), a no (False), or neither; when both are said, the first one counts ("no, that's not right")."""
    yes, no = first_at(cfg.affirm, text), first_at(cfg.deny, text)
    if yes is None or no is None:
        return True if yes is not None else False if no is not None else None
    return yes < no


def _cued(slot: Slot) -> bool:
    return isinstance(slot, ChoiceSlot) and slot.after is not None


def _fill(cfg: DialogueConfig, intent: Intent, state: DialogueState, text: str) -> tuple[dict[str, str], str | None]:
    """The task's slots after this utterance, and a refusal message if a value was refused. Slots that need
    a cue ("to thursday") read first, then the asked slot if it is one of them, then the others, then the
    asked slot: no words fill two slots, so "move my tuesday appointment to thursday" fills both days."""
    digits_text = " ".join(w for w in text.split() if w not in cfg.fillers or w in _DIGIT_FILLERS)
    text = " ".join(w for w in text.split() if w not in cfg.fillers)
    same = state.task == intent.name
    slots = dict(state.slots) if same else {}
    asking = state.asking if same and state.asking in intent.slots else None
    cued = [n for n in intent.slots if _cued(cfg.slots[n])]
    plain = [n for n in intent.slots if n not in cued and n != asking]
    order = [(n, False) for n in cued if n != asking]
    order += [(asking, True)] if asking in cued else []
    order += [(n, False) for n in plain]
    order += [(asking, True)] if asking is not None and asking not in cued else []
    taken: list[Span] = []
    refusal: str | None = None
    heard_other = False
    for name, is_asked in order:
        slot = cfg.slots[name]
        lenient = is_asked and (isinstance(slot, TextSlot | ChoiceSlot) or not heard_other)
        digits = isinstance(slot, DigitsSlot)
        got = extract(slot, digits_text if digits else text, lenient, taken)
        if got.value is None and got.refusal is None:
            continue
        if not digits:  # its span is in another text: digits never overlap days, times or names anyway
            taken.append(got.span)
        heard_other = heard_other or not is_asked
        refusal = refusal or got.refusal
        if got.value is not None:
            slots[name] = got.value
    return slots, refusal


def _match(cfg: DialogueConfig, state: DialogueState, text: str) -> Intent | None:
    hits = [i for i in cfg.intents if found(i.keywords, text) or found(i.patterns, text)]
    if state.task is not None and state.asking is not None and isinstance(cfg.slots[state.asking], TextSlot):
        hits = [i for i in hits if i.action in _INTERRUPTS_FREE_TEXT]  # free text is the answer, not a request
    return max(hits, key=lambda i: i.priority) if hits else None  # max keeps the first of equals


def _available(cfg: DialogueConfig, intent: Intent, offer: Offer) -> bool:
    """Whether the transfer an intent needs (its own, or the one its yes/no question offers) is offered."""
    if intent.action == "transfer":
        return offer.can_transfer(intent.destination)
    if intent.expect is not None and intent.expect.yes is not None:
        target = cfg.intent(intent.expect.yes)
        return target.action != "transfer" or offer.can_transfer(target.destination)
    return True


# ---- the state machine --------------------------------------------------------------------------------


def _text(cfg: DialogueConfig, state: DialogueState, template: str, slots: Mapping[str, str] | None = None) -> str:
    return cfg.render(template, slots, transfer="transfer" in state.offer.tools)


def _say(
    state: DialogueState,
    parts: Sequence[str],
    intent: str | None,
    tool: Literal["hangup", "transfer"] | None = None,
    arguments: Mapping[str, object] | None = None,
) -> tuple[DialogueState, Reply]:
    text = " ".join(part.strip() for part in parts if part.strip())
    return replace(state, last_reply=text), Reply(text, intent, tool, arguments or {})


def _close(cfg: DialogueConfig, state: DialogueState, intent: Intent, parts: list[str]) -> tuple[DialogueState, Reply]:
    """A finished answer: ask the intent's own yes/no question, else offer more help."""
    if intent.expect is not None:
        state = replace(state, expect=intent.expect)
    elif intent.follow_up and cfg.follow_up is not None and intent.action == "none":
        parts = [*parts, _text(cfg, state, cfg.follow_up.text)]
        state = replace(state, expect=cfg.follow_up.expect)
    return _say(state, parts, intent.name)


def _done(
    cfg: DialogueConfig, state: DialogueState, intent: Intent, slots: Mapping[str, str], lead: list[str], text: str
) -> tuple[DialogueState, Reply]:
    state = replace(state, task=None, slots={}, asking=None, confirming=False)
    return _close(cfg, state, intent, [*lead, _text(cfg, state, text, slots)])


def _advance(
    cfg: DialogueConfig,
    state: DialogueState,
    intent: Intent,
    slots: dict[str, str],
    lead: list[str],
    refusal: str | None,
) -> tuple[DialogueState, Reply]:
    """Ask for the task's next missing slot, or its confirm question, or complete it."""
    missing = [name for name in intent.slots if name not in slots]
    if missing:
        text = refusal or _text(cfg, state, intent.prompts[missing[0]], slots)
        state = replace(state, task=intent.name, slots=slots, asking=missing[0], confirming=False)
        return _say(state, [*lead, text], intent.name)
    if intent.confirm:
        state = replace(state, task=intent.name, slots=slots, asking=None, confirming=True)
        return _say(state, [*lead, refusal or "", _text(cfg, state, intent.confirm, slots)], intent.name)
    return _done(cfg, state, intent, slots, lead, intent.response)


def _reprompt(cfg: DialogueConfig, state: DialogueState) -> list[str]:
    if state.task is None:
        return []
    task = cfg.intent(state.task)
    if state.confirming:
        return [_text(cfg, state, task.confirm, state.slots)]
    return [_text(cfg, state, task.prompts[state.asking], state.slots)] if state.asking else []


def _miss(cfg: DialogueConfig, state: DialogueState, unclear: bool) -> tuple[DialogueState, Reply]:
    state = replace(state, misses=state.misses + 1)
    escalation = cfg.escalation
    if state.misses > len(cfg.fallbacks) and escalation is not None:
        target = escalation.expect.yes
        if target is None or _available(cfg, cfg.intent(target), state.offer):
            return _say(replace(state, expect=escalation.expect), [_text(cfg, state, escalation.text)], None)
    garbled = cfg.unclear or cfg.fallbacks
    texts = garbled if unclear else (cfg.in_task or garbled) if state.task is not None else cfg.fallbacks
    text = _text(cfg, state, texts[min(state.misses, len(texts)) - 1])
    return _say(state, [text, *_reprompt(cfg, state)], None)


def _run(
    cfg: DialogueConfig, state: DialogueState, intent: Intent, text: str, lead: Sequence[str] = (), depth: int = 0
) -> tuple[DialogueState, Reply]:
    state = replace(state, misses=0)
    if not _available(cfg, intent, state.offer):
        unavailable = [_text(cfg, state, intent.unavailable)] if intent.unavailable else []
        if intent.otherwise and depth < len(cfg.intents):
            return _run(cfg, state, cfg.intent(intent.otherwise), text, [*lead, *unavailable], depth + 1)
        return _say(state, [*lead, *unavailable, *_reprompt(cfg, state)], intent.name)
    if intent.slots:
        intro = [] if state.task == intent.name else [_text(cfg, state, intent.intro)]
        slots, refusal = _fill(cfg, intent, state, text)
        return _advance(cfg, replace(state, asking=None), intent, slots, [*lead, *intro], refusal)
    if intent.action in ("transfer", "hangup"):
        state = replace(state, task=None, slots={}, asking=None, confirming=False)
        tool = intent.action if intent.action in state.offer.tools else None
        arguments = {"destination": intent.destination} if intent.action == "transfer" else {}
        return _say(state, [*lead, _text(cfg, state, intent.response)], intent.name, tool, arguments)
    answer = [*lead, _text(cfg, state, intent.response, state.slots)]
    if state.task is not None and intent.expect is None:  # an FAQ mid-task: answer, take any slot given, re-ask
        task = cfg.intent(state.task)
        slots, refusal = _fill(cfg, task, state, text)
        return _advance(cfg, state, task, slots, answer, refusal)
    state = replace(state, task=None, slots={}, asking=None, confirming=False)
    return _close(cfg, state, intent, answer)


def _confirming(cfg: DialogueConfig, state: DialogueState, text: str) -> tuple[DialogueState, Reply] | None:
    """The answer to a task's confirm question: a correction re-confirms, yes completes, no declines."""
    assert state.task is not None
    task = cfg.intent(state.task)
    slots, refusal = _fill(cfg, task, replace(state, asking=None), text)
    if slots != state.slots or refusal is not None:
        return _advance(cfg, replace(state, misses=0), task, slots, [], refusal)
    answer = _yes_no(cfg, text)
    if answer is True:
        return _done(cfg, replace(state, misses=0), task, slots, [], task.response)
    if answer is False:
        return _done(cfg, replace(state, misses=0), task, slots, [], task.declined)
    return None


def step(cfg: DialogueConfig, state: DialogueState, utterance: str) -> tuple[DialogueState, Reply]:
    """Answer one caller utterance (or a ``[DTMF n]`` key press)."""
    expect, state = state.expect, replace(state, expect=None)
    if (dtmf := _DTMF.match(utterance)) is not None:
        keys = dtmf.group(1).upper()
        keys = keys[:-1] if len(keys) > 1 and keys.endswith("#") else keys  # "#" ends an entry
        text, target = "", cfg.dtmf.get(keys, cfg.dtmf.get(keys[0]))  # several keys: the whole, else the first
        intent = cfg.intent(target) if target else None
    else:
        text = normalize(strip_annotations(utterance))
        intent = _match(cfg, state, text)
        if state.confirming and (intent is None or intent.name == state.task):
            if (answered := _confirming(cfg, state, text)) is not None:
                return answered
            intent = None if intent is not None and intent.name == state.task else intent
        if intent is None and expect is not None:
            answer = _yes_no(cfg, text)
            target = expect.yes if answer is True else expect.no if answer is False else None
            intent = cfg.intent(target) if target else None
    if intent is not None and intent.action == "repeat":
        return _say(replace(state, expect=expect), [state.last_reply], intent.name)  # the question still stands
    if intent is not None:
        return _run(cfg, state, intent, text)
    if state.task is not None and text and not state.confirming:
        task = cfg.intent(state.task)
        slots, refusal = _fill(cfg, task, state, text)
        if slots != state.slots or refusal is not None:
            return _advance(cfg, replace(state, misses=0, asking=None), task, slots, [], refusal)
    words = [w for w in text.split() if w not in cfg.fillers]
    return _miss(cfg, state, unclear=len(words) <= cfg.unclear_max_words)


def replay(cfg: DialogueConfig, utterances: Iterable[str], offer: Offer) -> tuple[DialogueState, Reply]:
    """The state after the caller's turns so far, and the reply to the last one (the greeting if none)."""
    state = DialogueState(offer=offer, last_reply=_text(cfg, DialogueState(offer=offer), cfg.greeting))
    reply = Reply(state.last_reply, "greeting")
    for utterance in utterances:
        state, reply = step(cfg, state, utterance)
    return state, reply
