"""The offline "brain": a deterministic dialogue policy from a YAML file, behind the LLM interface.

Owns: loading and validating the dialogue YAML (every mistake is a :class:`~parley.errors.ConfigError`
naming the file, the key path and the problem) and presenting the policy of
:mod:`parley.providers.rules_policy` as an :class:`~parley.providers.base.LLMProvider`. It is **not a
language model**: ``name`` is ``"rules"`` and ``model`` is the YAML's ``name``. Must not know the call
engine, audio or any vendor.

Stateless like an LLM API: each :meth:`RulesDialogue.stream` replays the ``user`` messages of the
conversation through the policy from the greeting on, which rebuilds the state (the task in progress,
slots filled, a pending yes/no question, consecutive misses) exactly. The assistant turns in the history
are the policy's own earlier replies, possibly cut short at barge-in, so they are not needed and not
trusted for state; nothing hidden is ever put in spoken text. With no user turn yet, the reply is the
greeting. Caller key presses arrive as user messages ``[DTMF 1]`` (several keys: the whole string if
``dtmf:`` maps it, else the first key; a trailing ``#`` ends an entry).

The reply streams as word-group :class:`TextDelta` pieces, then at most one :class:`ToolCall`
(``hangup`` after the goodbye, ``transfer`` with ``{"destination": <target name>}``; each only when offered
in ``tools``, a transfer only to a name in the offered ``destination`` enum), then
``Usage(provider="rules", kind="llm")`` with whitespace-token counts of prompt and reply. A reply stopped
early (a barge-in) reports ``Usage(cancelled=True)``, with the words it did send, to the request's
``on_cancel`` (the ``stream()`` argument, or the call's sink via ``open()``: :class:`LLMRequests`, since
each request replays the whole conversation and shares nothing within a call).

YAML schema (``{slot}`` fields in texts are filled in; ``{agent}`` and ``{organization}`` everywhere)::

    name: riverside-dental          # required; reported as the model
    agent: {name: Riley, organization: Riverside Dental, persona: "..."}   # optional
    greeting: "Thanks for calling {organization}..."                     # required
    affirm: ["yes", yeah, sure]     # optional word lists (quote yes/no/on/off: YAML reads them as booleans)
    deny: ["no", nope]
    fillers: [uh, um]               # dropped before slot extraction
    slots:                          # optional; name -> one of:
      day: {type: choice, values: {Monday: [monday, mon]}, reject: {Sunday: "We're closed Sundays..."}}
      new_day: {type: choice, values: {...}, after: ["to", "move it to"]}   # only right after a cue (or asked)
      time: {type: time, assume_pm_before: 7}       # hours 1-6 without am/pm are PM
      name: {type: regex, patterns: ["my name is (?P<value>...)"], when_asked: ["^(?P<value>...)$"],
             format: title, exclude: ["yes", "no"]}
      phone: {type: digits, min_digits: 7, max_digits: 15}
      topic: {type: text, min_words: 1}             # whatever is said right after its prompt
    intents:                        # required; name -> spec, file order breaks priority ties
      book:
        keywords: [appointment, book*, check up]  # words/phrases, plural optional, trailing * = prefix
        patterns: ["\\bset up a visit\\b"]       # regexes on normalized text (lower case, no punctuation)
        priority: 10
        slots: [day, time, name]                 # asked in this order
        prompts: {day: "...", time: "What time on {day}?", name: "..."}   # one per slot, earlier slots only
        intro: "Sure, I can help with that."     # said when the task starts
        response: "You're booked for {day} at {time}."
        confirm: "Cancel {day} for {name}?"      # slots only: a yes/no question once every slot is filled
        declined: "Okay, I've left it."          # ... said on a no (a slot value in the answer re-confirms)
        action: none | hangup | transfer | repeat
        destination: front_desk                  # transfer only (required there): a transfer target name
        unavailable: "I can't transfer you..."   # said when the transfer it needs is not offered
        otherwise: take_message                  # ... and then run this intent instead
        follow_up: true                          # append the global follow_up question when done
        expect: {on_yes: book, on_no: goodbye}   # the response asks a yes/no question itself
    follow_up: {text: "Anything else I can help with?", on_yes: more, on_no: goodbye}   # optional
    capabilities: {text: "I can book...", without_transfer: "..."}   # {capabilities} in any text
    fallback:
      responses: ["Sorry, I can't help with that. {capabilities}", ...]   # a clear sentence; required, >= 1
      unclear: ["Sorry, I didn't catch that."]   # garbled: at most unclear_max_words words (fillers aside)
      unclear_max_words: 2
      in_task: ["Sorry, I didn't get that."]     # a sentence not understood while a slot is asked
      escalate: {text: "Shall I transfer you?", on_yes: transfer, on_no: retry}   # after the last
    dtmf: {"1": book, "0": transfer}

Behaviour: the highest-priority intent whose keyword or pattern matches wins (while a ``text`` slot is
asked, only repeat, hangup and transfer intents interrupt it); with none, a pending yes/no question routes
an affirm/deny word (the first one said counts), and a task in progress takes slot values. A task switch
drops the old task's slots. An intent without slots asked mid-task (an FAQ) is answered, then the pending
slot is asked again. ``response`` is required unless ``action: repeat`` (which says the previous reply
again and keeps its yes/no question open). An intent whose transfer (its own, or the one its yes/no
question offers) is not among the offered tool's ``destination`` enum says ``unavailable`` and runs
``otherwise``. Each not-understood turn in a row says the next ``unclear`` text for garbled input, the
next ``in_task`` text (plus the pending prompt) mid-task, else the next ``responses`` text; after the last
response comes ``escalate``, offered only if its ``on_yes`` intent is usable, else the last text again.
"""

from __future__ import annotations

import asyncio
import re
import string
from collections.abc import AsyncGenerator, Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import TypeVar, cast

import yaml

from parley.errors import ConfigError
from parley.providers.base import (
    Lifecycle,
    LLMEvent,
    LLMRequests,
    Message,
    TextDelta,
    ToolCall,
    ToolSpec,
    Usage,
    UsageSink,
)
from parley.providers.rules_language import ChoiceSlot, DigitsSlot, RegexSlot, Slot, TextSlot, TimeSlot, keyword_pattern
from parley.providers.rules_policy import Action, DialogueConfig, Intent, Offer, Prompted, Reply, YesNo, replay

__all__ = ["RulesDialogue", "load_dialogue"]

_T = TypeVar("_T")
_GLOBAL_FIELDS = frozenset({"agent", "organization", "capabilities"})
_TARGET_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")  # a transfer target name, as the operator's config has it
_DEFAULT_AFFIRM = ["yes", "yeah", "yep", "sure", "okay", "ok", "correct", "please", "that's right", "sounds good"]
_DEFAULT_DENY = ["no", "nope", "nah", "not really", "that's all", "that's it", "i'm good", "all set"]
_DEFAULT_FILLERS = ["uh", "um", "er", "erm", "hmm", "ah"]
_WORDS_PER_DELTA = 3


class _Reader:
    """Typed access to parsed YAML with errors that name the file and the key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {path}: {problem}" if path else f"{self.source}: {problem}")

    def mapping(
        self, value: object, path: str, allowed: set[str], required: frozenset[str] = frozenset()
    ) -> dict[str, object]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {type(value).__name__}")
        for key in value:
            if not isinstance(key, str) or key not in allowed:
                raise self.fail(path, f"unknown key {key!r}; expected one of {', '.join(sorted(allowed))}")
        if missing := sorted(required - set(value)):
            raise self.fail(path, f"missing required key {missing[0]!r}")
        return value

    def named(self, value: object, path: str) -> dict[str, object]:
        """A mapping from free names (slot, intent, dtmf key) to specs."""
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {type(value).__name__}")
        out: dict[str, object] = {}
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise self.fail(path, f"key {key!r} must be a string")
            out[str(key)] = item
        return out

    def text(self, value: object, path: str, *, fields: frozenset[str] = frozenset()) -> str:
        if not isinstance(value, str) or not value.strip():
            hint = " (quote yes/no/on/off: YAML reads them as booleans)" if isinstance(value, bool) else ""
            raise self.fail(path, f"expected a non-empty string, got {value!r}{hint}")
        try:
            used = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as exc:
            raise self.fail(path, f"bad template ({exc}); write a literal brace as {{{{ or }}}}") from exc
        if unknown := sorted(used - fields - _GLOBAL_FIELDS):
            raise self.fail(path, f"unknown field {{{unknown[0]}}}; available here: {', '.join(sorted(fields))}")
        return value

    def texts(self, value: object, path: str, *, template: bool = True) -> list[str]:
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list, got {type(value).__name__}")
        if not template:  # patterns, not texts to say: braces are regex repetition, not fields
            for n, item in enumerate(value):
                self.text(item.replace("{", "").replace("}", "") if isinstance(item, str) else item, f"{path}[{n}]")
            return list(value)
        return [self.text(item, f"{path}[{n}]") for n, item in enumerate(value)]

    def regexes(self, value: object, path: str) -> tuple[re.Pattern[str], ...]:
        out = []
        for n, pattern in enumerate(self.texts(value, path, template=False)):
            try:
                out.append(re.compile(pattern))
            except re.error as exc:
                raise self.fail(f"{path}[{n}]", f"invalid regex {pattern!r}: {exc}") from exc
        return tuple(out)

    def integer(self, value: object, path: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(path, f"expected an integer from {low} to {high}, got {value!r}")
        return value

    def choice(self, value: object, path: str, options: Sequence[_T]) -> _T:
        if value not in options:
            raise self.fail(path, f"expected one of {', '.join(map(str, options))}, got {value!r}")
        return cast(_T, value)


def _slot(r: _Reader, name: str, spec: object, path: str) -> Slot:
    if not isinstance(spec, dict):
        raise r.fail(path, f"expected a mapping, got {type(spec).__name__}")
    kind = r.choice(spec.get("type"), f"{path}.type", ["choice", "time", "regex", "digits", "text"])
    if kind == "text":
        d = r.mapping(spec, path, {"type", "min_words"})
        return TextSlot(name, r.integer(d.get("min_words", 1), f"{path}.min_words", 1, 50))
    if kind == "choice":
        d = r.mapping(spec, path, {"type", "values", "reject", "after"}, frozenset({"values"}))
        values = r.named(d["values"], f"{path}.values")
        if not values:
            raise r.fail(f"{path}.values", "needs at least one value")
        pairs = tuple(
            (value, tuple(keyword_pattern(s) for s in [value, *r.texts(synonyms or [], f"{path}.values.{value}")]))
            for value, synonyms in values.items()
        )
        reject = r.named(d.get("reject", {}), f"{path}.reject")
        for value in reject:
            if value not in values:
                raise r.fail(f"{path}.reject.{value}", f"not one of the values ({', '.join(values)})")
        after = None
        if "after" in d:
            cues = r.regexes(d["after"], f"{path}.after")
            after = re.compile(r"(?<![a-z0-9'])(?:" + "|".join(c.pattern for c in cues) + r")\s+$") if cues else None
        return ChoiceSlot(name, pairs, {k: r.text(v, f"{path}.reject.{k}") for k, v in reject.items()}, after)
    if kind == "time":
        d = r.mapping(spec, path, {"type", "assume_pm_before"})
        return TimeSlot(name, r.integer(d.get("assume_pm_before", 7), f"{path}.assume_pm_before", 1, 13))
    if kind == "digits":
        d = r.mapping(spec, path, {"type", "min_digits", "max_digits"})
        low = r.integer(d.get("min_digits", 7), f"{path}.min_digits", 1, 30)
        return DigitsSlot(name, low, r.integer(d.get("max_digits", max(low, 15)), f"{path}.max_digits", low, 30))
    d = r.mapping(spec, path, {"type", "patterns", "when_asked", "format", "exclude"}, frozenset({"patterns"}))
    return RegexSlot(
        name,
        r.regexes(d["patterns"], f"{path}.patterns"),
        r.regexes(d.get("when_asked", []), f"{path}.when_asked"),
        r.choice(d.get("format", "none"), f"{path}.format", ["title", "upper", "lower", "none"]),
        frozenset(t.lower() for t in r.texts(d.get("exclude", []), f"{path}.exclude")),
    )


def _yes_no(r: _Reader, d: Mapping[str, object], path: str, intents: set[str]) -> YesNo:
    ends = [d.get(key) for key in ("on_yes", "on_no")]
    for key, target in zip(("on_yes", "on_no"), ends, strict=True):
        if target is not None and target not in intents:
            raise r.fail(f"{path}.{key}", f"unknown intent {target!r}; intents are {', '.join(sorted(intents))}")
    return YesNo(*(cast(str | None, target) for target in ends))


_INTENT_KEYS = {"keywords", "patterns", "priority", "slots", "prompts", "intro", "response", "action",
                "destination", "unavailable", "otherwise", "confirm", "declined", "follow_up", "expect"}  # fmt: skip


def _intent(r: _Reader, name: str, spec: object, path: str, slots: Mapping[str, Slot], names: set[str]) -> Intent:
    d = r.mapping(spec, path, _INTENT_KEYS)
    action: Action = r.choice(d.get("action", "none"), f"{path}.action", ["none", "hangup", "transfer", "repeat"])
    slot_names = tuple(r.texts(d.get("slots", []), f"{path}.slots"))
    for n, slot in enumerate(slot_names):
        if slot not in slots:
            raise r.fail(f"{path}.slots[{n}]", f"unknown slot {slot!r}; slots are {', '.join(sorted(slots)) or 'none'}")
    prompts = r.named(d.get("prompts", {}), f"{path}.prompts")
    for key in prompts:
        if key not in slot_names:
            raise r.fail(f"{path}.prompts.{key}", "not one of this intent's slots")
    checked: dict[str, str] = {}
    for n, slot in enumerate(slot_names):
        if slot not in prompts:
            raise r.fail(f"{path}.prompts", f"no prompt for slot {slot!r}")
        checked[slot] = r.text(prompts[slot], f"{path}.prompts.{slot}", fields=frozenset(slot_names[:n]))
    if action in ("none", "hangup", "transfer") and "response" not in d:
        raise r.fail(path, f"missing required key 'response' (action {action})")
    if action == "transfer" and "destination" not in d:
        raise r.fail(path, "missing required key 'destination' (action transfer)")
    if action != "transfer" and "destination" in d:
        raise r.fail(path, "'destination' only applies to action transfer")
    expect = None
    if "expect" in d:
        expect = _yes_no(r, r.mapping(d["expect"], f"{path}.expect", {"on_yes", "on_no"}), f"{path}.expect", names)
    if ("unavailable" in d or "otherwise" in d) and action != "transfer" and (expect is None or expect.yes is None):
        raise r.fail(path, "'unavailable' and 'otherwise' only apply to action transfer or an expect with on_yes")
    if action != "none" and slot_names:
        raise r.fail(f"{path}.slots", f"an intent with action {action} cannot have slots")
    if ("confirm" in d or "declined" in d) and not slot_names:
        raise r.fail(path, "'confirm' and 'declined' only apply to an intent with slots")
    if ("confirm" in d) != ("declined" in d):
        raise r.fail(path, "'confirm' needs 'declined' (said when the caller answers no) and the other way round")
    otherwise = d.get("otherwise", "")
    if otherwise and (otherwise not in names or otherwise == name):
        others = ", ".join(sorted(names - {name}))
        raise r.fail(f"{path}.otherwise", f"unknown intent {otherwise!r}; intents are {others}")
    destination = r.text(d["destination"], f"{path}.destination") if "destination" in d else ""
    if destination and not _TARGET_NAME.fullmatch(destination):
        raise r.fail(f"{path}.destination", f"{destination!r} is not a transfer target name (like front_desk)")
    follow_up = d.get("follow_up", True)
    if not isinstance(follow_up, bool):
        raise r.fail(f"{path}.follow_up", f"expected true or false, got {follow_up!r}")
    default_unavailable = "Sorry, I can't transfer calls right now." if action == "transfer" and not otherwise else ""
    fields = frozenset(slot_names)
    return Intent(
        name=name,
        response=r.text(d["response"], f"{path}.response", fields=fields) if "response" in d else "",
        priority=r.integer(d.get("priority", 0), f"{path}.priority", -1000, 1000),
        keywords=tuple(keyword_pattern(k) for k in r.texts(d.get("keywords", []), f"{path}.keywords")),
        patterns=r.regexes(d.get("patterns", []), f"{path}.patterns"),
        slots=slot_names,
        prompts=checked,
        intro=r.text(d["intro"], f"{path}.intro") if "intro" in d else "",
        action=action,
        destination=destination,
        unavailable=r.text(d["unavailable"], f"{path}.unavailable") if "unavailable" in d else default_unavailable,
        otherwise=str(otherwise),
        confirm=r.text(d["confirm"], f"{path}.confirm", fields=fields) if "confirm" in d else "",
        declined=r.text(d["declined"], f"{path}.declined", fields=fields) if "declined" in d else "",
        follow_up=follow_up,
        expect=expect,
    )


def _prompted(r: _Reader, value: object, path: str, intents: set[str]) -> Prompted:
    d = r.mapping(value, path, {"text", "on_yes", "on_no"}, frozenset({"text"}))
    return Prompted(r.text(d["text"], f"{path}.text"), _yes_no(r, d, path, intents))


def load_dialogue(text: str, source: str = "<dialogue>") -> DialogueConfig:
    """Parse and validate a dialogue YAML document (see the module docstring for the schema)."""
    r = _Reader(source)
    try:
        document: object = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise r.fail("", f"not valid YAML: {exc}") from exc
    top_keys = {"name", "agent", "greeting", "affirm", "deny", "fillers", "slots", "intents", "fallback",
                "follow_up", "dtmf", "capabilities"}  # fmt: skip
    d = r.mapping(document, "", top_keys, frozenset({"name", "greeting", "intents", "fallback"}))
    agent = r.mapping(d.get("agent", {}), "agent", {"name", "organization", "persona"})
    slots = {k: _slot(r, k, v, f"slots.{k}") for k, v in r.named(d.get("slots", {}), "slots").items()}
    specs = r.named(d["intents"], "intents")
    if not specs:
        raise r.fail("intents", "needs at least one intent")
    names = set(specs)
    intents = tuple(_intent(r, k, v, f"intents.{k}", slots, names) for k, v in specs.items())
    fallback_keys = {"responses", "unclear", "in_task", "unclear_max_words", "escalate"}
    fallback = r.mapping(d["fallback"], "fallback", fallback_keys, frozenset({"responses"}))
    responses = tuple(r.texts(fallback["responses"], "fallback.responses"))
    if not responses:
        raise r.fail("fallback.responses", "needs at least one response")
    capabilities = r.mapping(d.get("capabilities", {}), "capabilities", {"text", "without_transfer"})
    dtmf = r.named(d.get("dtmf", {}), "dtmf")
    for key, target in dtmf.items():
        if not re.fullmatch(r"[0-9A-D*#]+", key.upper()) or target not in names:
            raise r.fail(f"dtmf.{key}", f"expected key of 0-9, *, #, A-D mapped to an intent, got {key!r}: {target!r}")

    def words(key: str, default: list[str]) -> tuple[re.Pattern[str], ...]:
        return tuple(keyword_pattern(w) for w in r.texts(d.get(key, default), key))

    return DialogueConfig(
        name=r.text(d["name"], "name"),
        greeting=r.text(d["greeting"], "greeting"),
        intents=intents,
        fallbacks=responses,
        slots=slots,
        agent_name=r.text(agent["name"], "agent.name") if "name" in agent else "",
        organization=r.text(agent["organization"], "agent.organization") if "organization" in agent else "",
        persona=r.text(agent["persona"], "agent.persona") if "persona" in agent else "",
        affirm=words("affirm", _DEFAULT_AFFIRM),
        deny=words("deny", _DEFAULT_DENY),
        fillers=frozenset(w.lower() for w in r.texts(d.get("fillers", _DEFAULT_FILLERS), "fillers")),
        escalation=_prompted(r, fallback["escalate"], "fallback.escalate", names) if "escalate" in fallback else None,
        follow_up=_prompted(r, d["follow_up"], "follow_up", names) if "follow_up" in d else None,
        dtmf={key.upper(): cast(str, target) for key, target in dtmf.items()},
        unclear=tuple(r.texts(fallback.get("unclear", []), "fallback.unclear")),
        in_task=tuple(r.texts(fallback.get("in_task", []), "fallback.in_task")),
        unclear_max_words=r.integer(fallback.get("unclear_max_words", 0), "fallback.unclear_max_words", 0, 10),
        capabilities=r.text(capabilities["text"], "capabilities.text") if "text" in capabilities else "",
        capabilities_without_transfer=(
            r.text(capabilities["without_transfer"], "capabilities.without_transfer")
            if "without_transfer" in capabilities
            else ""
        ),
    )


def _offer(tools: Sequence[ToolSpec]) -> Offer:
    """The tools as the policy sees them: names, and the transfer destinations offered (an ``enum``)."""
    destinations: frozenset[str] | None = None
    for tool in tools:
        properties = tool.parameters.get("properties") if tool.name == "transfer" else None
        spec = properties.get("destination") if isinstance(properties, dict) else None
        enum = spec.get("enum") if isinstance(spec, dict) else None
        if isinstance(enum, list):
            destinations = frozenset(v for v in enum if isinstance(v, str))
    return Offer(frozenset(tool.name for tool in tools), destinations)


def _tokens(text: str) -> int:
    return len(text.split())


class RulesDialogue(Lifecycle, LLMRequests):
    """A deterministic dialogue policy presented as an :class:`~parley.providers.base.LLMProvider`."""

    name = "rules"

    def __init__(self, config: DialogueConfig) -> None:
        self.config = config
        self.model = config.name

    @classmethod
    def from_yaml(cls, text: str, source: str = "<dialogue>") -> RulesDialogue:
        return cls(load_dialogue(text, source))

    @classmethod
    def from_path(cls, path: str | Path) -> RulesDialogue:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read dialogue file: {exc.strerror}") from exc
        return cls.from_yaml(text, str(path))

    @classmethod
    def builtin(cls, name: str = "receptionist") -> RulesDialogue:
        """A dialogue shipped in ``parley/agent/data`` (``receptionist``: Riverside Dental)."""
        resource = files("parley.agent").joinpath(f"data/{name}.yaml")
        if not re.fullmatch(r"[a-z0-9_-]+", name) or not resource.is_file():
            raise ConfigError(f"no built-in dialogue named {name!r}")
        return cls.from_yaml(resource.read_text(encoding="utf-8"), f"parley/agent/data/{name}.yaml")

    def respond(self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()) -> Reply:
        """The policy's reply to the conversation so far (pure)."""
        if any(m.role == "user" for m in messages) and messages[-1].role != "user":
            return Reply("")  # e.g. a tool result after a hangup or transfer: nothing to say
        return replay(self.config, (m.content for m in messages if m.role == "user"), _offer(tools))[1]

    async def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = (), *, on_cancel: UsageSink | None = None
    ) -> AsyncGenerator[LLMEvent, None]:
        reply = self.respond(messages, tools)
        prompt = sum(_tokens(m.content) for m in messages)
        words = reply.text.split()
        sent = 0
        ended = False
        try:
            for start in range(0, len(words), _WORDS_PER_DELTA):
                piece = " ".join(words[start : start + _WORDS_PER_DELTA])
                sent = min(start + _WORDS_PER_DELTA, len(words))  # words handed to the consumer so far
                yield TextDelta(piece if sent >= len(words) else piece + " ")
                await asyncio.sleep(0)  # let a barge-in cancel us between pieces, like a real stream
            if reply.tool is not None:
                turn = sum(m.role == "user" for m in messages)
                yield ToolCall(f"rules_{turn}_{reply.tool}", reply.tool, dict(reply.arguments))
            ended = True
        finally:
            if not ended and on_cancel is not None:  # stopped early: the consumer will take nothing more
                on_cancel(Usage(provider=self.name, model=self.model, kind="llm", input_tokens=prompt,
                                output_tokens=sent, cancelled=True))  # fmt: skip
        yield Usage(provider=self.name, model=self.model, kind="llm", input_tokens=prompt,
                    output_tokens=len(words))  # fmt: skip
