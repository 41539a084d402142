"""The offline rules dialogue (Riverside Dental receptionist): multi-turn slot filling, ASR-style input, FAQs,
fallback escalation, hangup and transfer tool calls, DTMF, statelessness and YAML validation."""

from __future__ import annotations

import asyncio
import copy
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.errors import ConfigError
from parley.providers.base import LLMProvider, Message, TextDelta, ToolCall, ToolSpec, Usage
from parley.providers.rules_llm import RulesDialogue, load_dialogue
from parley.providers.rules_policy import normalize, parse_time

TOOLS = (
    ToolSpec("hangup", "End the call"),
    ToolSpec("transfer", "Transfer the call", {"type": "object", "properties": {"destination": {"type": "string"}}}),
)
GREETING = "Thanks for calling Riverside Dental, this is Riley. How can I help you today?"
ANYTHING_ELSE = "Is there anything else I can help you with?"
GOODBYE = "Thanks for calling Riverside Dental. Have a great day!"


@pytest.fixture(scope="module")
def brain() -> RulesDialogue:
    return RulesDialogue.builtin("receptionist")


@dataclass
class Turn:
    text: str
    deltas: list[str]
    tool_calls: list[ToolCall]
    usage: Usage


@dataclass
class Call:
    """Drives the brain like the engine would: history in, streamed reply out, reply appended to history."""

    brain: RulesDialogue
    tools: tuple[ToolSpec, ...] = TOOLS
    messages: list[Message] = field(default_factory=lambda: [Message("system", "You are Riley.")])

    async def reply(self) -> Turn:
        events = [event async for event in self.brain.stream(self.messages, self.tools)]
        assert isinstance(events[-1], Usage), "Usage comes last"
        deltas = [e.text for e in events if isinstance(e, TextDelta)]
        calls = [e for e in events if isinstance(e, ToolCall)]
        kinds = [type(e).__name__ for e in events]
        assert kinds == sorted(kinds, key=["TextDelta", "ToolCall", "Usage"].index), "text, then tool calls, then usage"
        turn = Turn("".join(deltas), deltas, calls, events[-1])
        self.messages.append(Message("assistant", turn.text, tool_calls=tuple(calls)))
        return turn

    async def say(self, utterance: str) -> Turn:
        self.messages.append(Message("user", utterance))
        return await self.reply()


async def test_greeting_streams_in_pieces_with_usage(brain: RulesDialogue) -> None:
    assert isinstance(brain, LLMProvider)
    assert (brain.name, brain.model) == ("rules", "riverside-dental-receptionist")
    turn = await Call(brain).reply()
    assert turn.text == GREETING
    assert len(turn.deltas) > 3 and all(len(d.split()) <= 3 for d in turn.deltas)
    assert turn.tool_calls == []
    assert turn.usage == Usage(
        provider="rules", model="riverside-dental-receptionist", kind="llm", input_tokens=3, output_tokens=14
    )


async def test_full_booking_across_turns(brain: RulesDialogue) -> None:
    call = Call(brain)
    await call.reply()
    turns = [
        ("uh I'd like to book a cleaning", "Sure, I can book that for you. What day works best for you?"),
        ("tuesday", "And what time on Tuesday?"),
        ("at three pm", "And what name should I put the appointment under?"),
        ("it's maria lopez", f"Perfect, Maria Lopez. You're booked for Tuesday at 3 PM. {ANYTHING_ELSE}"),
        ("no thanks", GOODBYE),
    ]
    for utterance, expected in turns:
        assert (await call.say(utterance)).text == expected
    last = call.messages[-1]
    assert last.tool_calls == (ToolCall("rules_5_hangup", "hangup", {}),)


async def test_one_utterance_can_fill_several_slots(brain: RulesDialogue) -> None:
    call = Call(brain)
    turn = await call.say("Hi, I'd like to book a checkup for Friday at 10:30 a.m. My name is John O'Brien.")
    assert (
        turn.text
        == f"Sure, I can book that for you. Perfect, John O'Brien. You're booked for Friday at 10:30 AM. {ANYTHING_ELSE}"
    )


@pytest.mark.parametrize(
    ("utterances", "expected"),
    [
        (["i want to make an appointment", "tuesday at three pm"], "And what name should I put the appointment under?"),
        (["book me in", "TUESDAY AT THREE"], "And what name should I put the appointment under?"),
        (
            ["um can i come in on thursday", "three thirty", "sam lee"],
            "Perfect, Sam Lee. You're booked for Thursday at 3:30 PM.",
        ),
        (
            ["booking please", "uh wednesday", "half past nine", "yeah it's ana"],
            "Perfect, Ana. You're booked for Wednesday at 9:30 AM.",
        ),
        (
            ["schedule a cleaning for tomorrow", "ten in the morning"],
            "And what name should I put the appointment under?",
        ),
        (
            ["i need an appointment monday no wait friday", "noon", "jo"],
            "Perfect, Jo. You're booked for Friday at 12 PM.",
        ),
    ],
)
async def test_asr_style_input(brain: RulesDialogue, utterances: list[str], expected: str) -> None:
    call = Call(brain)
    for utterance in utterances:
        turn = await call.say(utterance)
    assert turn.text.startswith(expected)


@pytest.mark.parametrize(
    ("utterance", "intent"),
    [
        ("uh I'd like to book a cleaning", "book"),
        ("i wanna cancel my appointment", "cancel"),
        ("i cant make it on tuesday i need to cancel", "cancel"),
        ("what time do you close", "hours"),
        ("are you open on saturdays", "hours"),
        ("where are you located", "address"),
        ("is there parking", "parking"),
        ("does my insurance cover a cleaning", "insurance"),
        ("do you take aetna", "insurance"),
        ("i have a really bad toothache", "emergency"),
        ("can i talk to a real person", "transfer"),
        ("ok bye", "goodbye"),
        ("sorry can you repeat that", "repeat"),
        ("asdf qwerty", None),
    ],
)
def test_intents_from_noisy_text(brain: RulesDialogue, utterance: str, intent: str | None) -> None:
    assert brain.respond([Message("user", utterance)], TOOLS).intent == intent


@pytest.mark.parametrize(
    ("text", "asked", "expected"),
    [
        ("three pm", False, "3 PM"),
        ("at three", False, "3 PM"),
        ("at nine", False, "9 AM"),
        ("three", True, "3 PM"),
        ("three", False, None),
        ("three thirty", False, "3:30 PM"),
        ("nine forty five am", False, "9:45 AM"),
        ("half past two", False, "2:30 PM"),
        ("quarter to four", False, "3:45 PM"),
        ("quarter past eleven", False, "11:15 AM"),
        ("ten in the morning", False, "10 AM"),
        ("six in the evening", False, "6 PM"),
        ("noon", False, "12 PM"),
        ("10:30", False, "10:30 AM"),
        ("15:00", False, "3 PM"),
        ("4 pm", False, "4 PM"),
        ("at 11 am", False, "11 AM"),
        ("i have two kids", False, None),
        ("the one at three", True, "3 PM"),
        ("at 25", False, None),
    ],
)
def test_parse_time(text: str, asked: bool, expected: str | None) -> None:
    assert parse_time(normalize(text), asked=asked) == expected


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Uh, I'd like to BOOK a cleaning!", "uh i'd like to book a cleaning"),
        ("Tuesday at 3 p.m.", "tuesday at 3 pm"),
        ("10.30 A.M., please", "10:30 am please"),
        ("It’s ‘Maria’ — Maria Lopez-Smith", "it's maria maria lopez smith"),
    ],
)
def test_normalize(raw: str, normalized: str) -> None:
    assert normalize(raw) == normalized


async def test_faq_answers_and_faq_mid_booking_re_asks(brain: RulesDialogue) -> None:
    call = Call(brain)
    assert (await call.say("Where are you?")).text == (
        f"We're at 210 River Street in Springfield, across from the public library. {ANYTHING_ELSE}"
    )
    assert (await call.say("yes")).text == "Sure, what else can I help you with?"
    assert (await call.say("I'd like an appointment on friday")).text == (
        "Sure, I can book that for you. And what time on Friday?"
    )
    assert (await call.say("is there parking?")).text == (
        "There's free parking in the lot behind the building. The entrance is on Mill Lane. And what time on Friday?"
    )
    assert (await call.say("are you open saturday")).text.endswith(
        "We're closed on Sundays. And what time on Saturday?"
    )
    assert (await call.say("one pm")).text == "And what name should I put the appointment under?"


async def test_refused_day_is_asked_again(brain: RulesDialogue) -> None:
    call = Call(brain)
    await call.say("book an appointment")
    assert (await call.say("sunday")).text == "Sorry, we're closed on Sundays. Which other day did you have in mind?"
    assert (await call.say("monday then")).text == "And what time on Monday?"


async def test_cancel_flow(brain: RulesDialogue) -> None:
    call = Call(brain)
    assert (await call.say("I need to cancel my appointment")).text == (
        "I can help you cancel. What name is the appointment under?"
    )
    assert (await call.say("sarah jones")).text == "Thanks, Sarah Jones. And what day is the appointment?"
    assert (await call.say("wednesday")).text == (
        "Just to confirm, you'd like to cancel the Wednesday appointment for Sarah Jones?"
    )
    assert (await call.say("yes please")).text == (
        f"Okay, Sarah Jones, I've cancelled your Wednesday appointment. {ANYTHING_ELSE}"
    )


async def test_fallbacks_escalate_to_a_transfer_offer(brain: RulesDialogue) -> None:
    call = Call(brain)
    first = await call.say("blah blah")
    second = await call.say("mmm fish")
    third = await call.say("zzz")
    assert first.text == "Sorry, I didn't catch that. Could you say that again?"
    assert second.text == "Sorry, I still didn't catch that. Could you say it another way?"
    assert third.text == "I'm having trouble understanding. Would you like me to transfer you to the front desk?"
    fourth = await call.say("yes please")
    assert fourth.text == "Sure, I'll put you through to the front desk now. One moment, please."
    assert fourth.tool_calls == [ToolCall("rules_4_transfer", "transfer", {"destination": "front_desk"})]


async def test_declined_transfer_offer_and_recovery(brain: RulesDialogue) -> None:
    call = Call(brain)
    for noise in ("blah", "blah blah", "blah blah blah"):
        await call.say(noise)
    assert (await call.say("no")).text.startswith("No problem, let's try again.")
    assert (await call.say("what are your hours")).text.startswith("We're open Monday to Friday")


async def test_fallback_during_booking_re_asks_and_understanding_resets_the_count(brain: RulesDialogue) -> None:
    call = Call(brain)
    await call.say("book an appointment")
    assert (await call.say("hmm")).text == (
        "Sorry, I didn't catch that. Could you say that again? What day works best for you?"
    )
    assert (await call.say("thursday")).text == "And what time on Thursday?"
    assert (
        await call.say("purple")
    ).text == "Sorry, I didn't catch that. Could you say that again? And what time on Thursday?"


async def test_no_transfer_offer_when_transfer_is_not_offered(brain: RulesDialogue) -> None:
    call = Call(brain, tools=(TOOLS[0],))
    texts = [(await call.say(noise)).text for noise in ("blah", "blah blah", "blah blah blah")]
    assert texts[2] == (
        "Sorry, I'm still not sure what you need. I can help you book, reschedule or cancel an appointment, "
        "tell you our hours or address, or take a message for billing or the front desk."
    )


async def test_goodbye_emits_hangup_after_the_text(brain: RulesDialogue) -> None:
    events = [e async for e in brain.stream([Message("user", "okay goodbye")], TOOLS)]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == GOODBYE
    assert isinstance(events[-2], ToolCall) and events[-2] == ToolCall("rules_1_hangup", "hangup", {})
    assert isinstance(events[-1], Usage) and events[-1].output_tokens == len(GOODBYE.split())
    no_tool = brain.respond([Message("user", "okay goodbye")], ())
    assert (no_tool.text, no_tool.tool) == (GOODBYE, None)


async def test_transfer_only_when_the_tool_is_offered(brain: RulesDialogue) -> None:
    offered = await Call(brain).say("can I speak to someone at the front desk")
    assert offered.tool_calls == [ToolCall("rules_1_transfer", "transfer", {"destination": "front_desk"})]
    not_offered = await Call(brain, tools=(TOOLS[0],)).say("can I speak to someone at the front desk")
    assert not_offered.tool_calls == []
    assert not_offered.text == (
        "I can't put calls through right now, but someone can call you back. "
        "I'll take a message for the front desk. What's your name, please?"
    )


async def test_dtmf(brain: RulesDialogue) -> None:
    call = Call(brain)
    assert (await call.say("[DTMF 1]")).text == "Sure, I can book that for you. What day works best for you?"
    assert (await call.say("friday")).text == "And what time on Friday?"
    assert (await call.say("[DTMF 9]")).text == "And what time on Friday?"
    missed = await call.say("[DTMF 7]")
    assert missed.text == "Sorry, I didn't catch that. Could you say that again? And what time on Friday?"
    assert (await call.say("[DTMF 93]")).text == missed.text  # unmapped "93": its first key, 9 = repeat
    assert (await call.say("[dtmf 0#]")).tool_calls[0].name == "transfer"


async def test_repeat_keeps_a_yes_no_question_open(brain: RulesDialogue) -> None:
    call = Call(brain)
    question = await call.say("I have a toothache")
    assert (await call.say("sorry, could you repeat that?")).text == question.text
    assert (await call.say("yes")).tool_calls[0].name == "transfer"


async def test_state_comes_from_user_turns_only(brain: RulesDialogue) -> None:
    """Assistant turns may be cut at barge-in or missing: the reply is the same, and repeatable."""
    users = ["book a cleaning", "tuesday", "at 4"]
    with_cut_replies = [Message("user", users[0]), Message("assistant", "Sure, I can"), Message("user", users[1]),
                        Message("assistant", "And what"), Message("user", users[2])]  # fmt: skip
    bare = [Message("user", u) for u in users]
    first = brain.respond(with_cut_replies, TOOLS)
    assert first == brain.respond(bare, TOOLS) == brain.respond(with_cut_replies, TOOLS)
    assert first.text == "And what name should I put the appointment under?"


async def test_nothing_to_say_after_a_tool_result(brain: RulesDialogue) -> None:
    messages = [
        Message("user", "transfer me"),
        Message("assistant", "Sure...", tool_calls=(ToolCall("t1", "transfer", {"destination": "front_desk"}),)),
        Message("tool", "ok", tool_call_id="t1"),
    ]
    events = [e async for e in brain.stream(messages, TOOLS)]
    assert len(events) == 1 and isinstance(events[0], Usage) and events[0].output_tokens == 0


async def test_closing_the_stream_early_emits_nothing_more(brain: RulesDialogue) -> None:
    stream = brain.stream([], TOOLS)
    assert isinstance(await anext(stream), TextDelta)
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


def cut_short(words: int) -> Usage:
    """The usage of the greeting (3 prompt tokens) stopped after ``words`` words were handed over."""
    return Usage("rules", "riverside-dental-receptionist", "llm", input_tokens=3, output_tokens=words, cancelled=True)


async def test_a_barge_in_reports_the_words_sent_to_the_calls_sink(brain: RulesDialogue) -> None:
    sink: list[Usage] = []
    call = await brain.open(sink.append)
    stream = call.stream([Message("system", "You are Riley.")], TOOLS)
    first_two = [await anext(stream), await anext(stream)]
    assert first_two == [TextDelta("Thanks for calling "), TextDelta("Riverside Dental, this ")]
    assert sink == []
    await stream.aclose()  # the barge-in: the generator can yield nothing more
    assert sink == [cut_short(6)]
    await call.close()


async def test_a_finished_reply_of_the_call_reports_its_usage_in_the_stream_not_the_sink(brain: RulesDialogue) -> None:
    sink: list[Usage] = []
    call = await brain.open(sink.append)
    events = [e async for e in call.stream([Message("system", "You are Riley.")], TOOLS)]
    assert events[-1] == Usage("rules", "riverside-dental-receptionist", "llm", input_tokens=3, output_tokens=14)
    assert sink == []


async def test_a_cancelled_request_reports_to_its_own_on_cancel(brain: RulesDialogue) -> None:
    cancelled: list[Usage] = []
    got_first = asyncio.Event()

    async def consume() -> None:
        stream = brain.stream([Message("system", "You are Riley.")], TOOLS, on_cancel=cancelled.append)
        async with aclosing(stream):
            async for _ in stream:
                got_first.set()
                await asyncio.Event().wait()  # the consumer is busy when the barge-in cancels it

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_first.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled == [cut_short(3)]


UTTERANCES = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["[DTMF 1]", "[DTMF 0]", "[DTMF #]", "yes", "no", "tuesday", "at 3", "my name is ann", "bye",
                     "book", "cancel", "hours", "repeat that", "sunday", "transfer me", "um", ""]),
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(utterances=st.lists(UTTERANCES, min_size=1, max_size=8), offered=st.sampled_from([(), TOOLS[:1], TOOLS]))
def test_any_conversation_gets_a_spoken_reply(utterances: list[str], offered: tuple[ToolSpec, ...]) -> None:
    brain = RulesDialogue.builtin()
    messages = [Message("user", u) for u in utterances]
    reply = brain.respond(messages, offered)
    assert reply.text.strip(), "every caller turn gets something said back"
    assert reply == brain.respond(messages, offered)
    assert reply.tool is None or reply.tool in {t.name for t in offered}


def test_digits_slot_and_custom_dialogue() -> None:
    brain = RulesDialogue.from_yaml(
        """
name: callback
greeting: Hi.
slots:
  phone: {type: digits, min_digits: 7, max_digits: 11}
intents:
  callback:
    keywords: [call me back, callback]
    slots: [phone]
    prompts: {phone: "What number should we call?"}
    response: We'll call you at {phone}.
    follow_up: false
fallback: {responses: ["Pardon?"]}
"""
    )
    messages = [Message("user", "please call me back"), Message("user", "it's five five five, 1234 thanks")]
    assert brain.respond(messages[:1]).text == "What number should we call?"
    assert brain.respond(messages).text == "We'll call you at 5 5 5 1 2 3 4."
    assert brain.respond([messages[0], Message("user", "oh 1 2")]).text == "Pardon? What number should we call?"


# ---- YAML validation ----------------------------------------------------------------------------------

BASE: dict[str, object] = {
    "name": "t",
    "greeting": "Hello from {organization}.",
    "agent": {"name": "Riley", "organization": "Clinic"},
    "slots": {"day": {"type": "choice", "values": {"Monday": ["mon"]}}, "time": {"type": "time"}},
    "intents": {
        "book": {
            "keywords": ["book"],
            "slots": ["day", "time"],
            "prompts": {"day": "Which day?", "time": "What time on {day}?"},
            "response": "Booked {day} at {time}.",
        },
        "transfer": {"keywords": ["human"], "action": "transfer", "destination": "desk", "response": "Okay."},
        "info": {"keywords": ["info"], "response": "Info.", "expect": {"on_yes": "book"}},
    },
    "fallback": {"responses": ["Sorry?"], "escalate": {"text": "Transfer?", "on_yes": "transfer"}},
    "dtmf": {1: "book"},
}


def mutated(path: str, value: object) -> str:
    document = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node: dict[str, object] = document
    for key in parents:
        node = node[key]  # type: ignore[assignment]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return yaml.safe_dump(document, sort_keys=False)


DELETE = object()


def test_base_yaml_is_valid() -> None:
    config = load_dialogue(mutated("name", "t"), "t.yaml")
    assert [i.name for i in config.intents] == ["book", "transfer", "info"]
    assert config.dtmf == {"1": "book"}


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("name", DELETE, "t.yaml: missing required key 'name'"),
        (
            "greting",
            "x",
            "t.yaml: unknown key 'greting'; expected one of affirm, agent, capabilities, deny, dtmf, fallback, "
            "fillers, follow_up, greeting, intents, name, slots",
        ),
        ("greeting", "", "t.yaml: greeting: expected a non-empty string, got ''"),
        ("greeting", "Hi {nme}", "t.yaml: greeting: unknown field {nme}; available here: "),
        (
            "greeting",
            "Hi {",
            "t.yaml: greeting: bad template (Single '{' encountered in format string); write a "
            "literal brace as {{ or }}",
        ),
        (
            "intents.info.respone",
            "x",
            "t.yaml: intents.info: unknown key 'respone'; expected one of action, confirm, declined, "
            "destination, expect, follow_up, intro, keywords, otherwise, patterns, priority, prompts, "
            "response, slots, unavailable",
        ),
        ("intents.info.response", DELETE, "t.yaml: intents.info: missing required key 'response' (action none)"),
        ("intents.book.slots", ["dya"], "t.yaml: intents.book.slots[0]: unknown slot 'dya'; slots are day, time"),
        ("intents.book.prompts", {"day": "Which day?"}, "t.yaml: intents.book.prompts: no prompt for slot 'time'"),
        (
            "intents.book.prompts",
            {"day": "Which day at {time}?", "time": "When?"},
            "t.yaml: intents.book.prompts.day: unknown field {time}; available here: ",
        ),
        (
            "intents.book.response",
            "Booked {dya}.",
            "t.yaml: intents.book.response: unknown field {dya}; available here: day, time",
        ),
        (
            "intents.info.patterns",
            ["(unclosed"],
            "t.yaml: intents.info.patterns[0]: invalid regex '(unclosed': missing ), unterminated subpattern at position 0",
        ),
        (
            "intents.transfer.destination",
            DELETE,
            "t.yaml: intents.transfer: missing required key 'destination' (action transfer)",
        ),
        (
            "intents.info.action",
            "dance",
            "t.yaml: intents.info.action: expected one of none, hangup, transfer, repeat, got 'dance'",
        ),
        (
            "intents.info.priority",
            "high",
            "t.yaml: intents.info.priority: expected an integer from -1000 to 1000, got 'high'",
        ),
        (
            "intents.info.expect",
            {"on_yes": "boook"},
            "t.yaml: intents.info.expect.on_yes: unknown intent 'boook'; intents are book, info, transfer",
        ),
        (
            "intents.info.keywords",
            [True],
            "t.yaml: intents.info.keywords[0]: expected a non-empty string, got True "
            "(quote yes/no/on/off: YAML reads them as booleans)",
        ),
        ("intents", {}, "t.yaml: intents: needs at least one intent"),
        ("slots.day.type", "date", "t.yaml: slots.day.type: expected one of choice, time, regex, digits, text, got 'date'"),
        ("slots.day.reject", {"Funday": "No."}, "t.yaml: slots.day.reject.Funday: not one of the values (Monday)"),
        (
            "slots.time.assume_pm_before",
            30,
            "t.yaml: slots.time.assume_pm_before: expected an integer from 1 to 13, got 30",
        ),
        ("slots.day", ["Monday"], "t.yaml: slots.day: expected a mapping, got list"),
        ("fallback.responses", [], "t.yaml: fallback.responses: needs at least one response"),
        (
            "fallback.escalate",
            {"text": "Transfer?", "on_yes": "human"},
            "t.yaml: fallback.escalate.on_yes: unknown intent 'human'; intents are book, info, transfer",
        ),
        (
            "dtmf",
            {"5": "nowhere"},
            "t.yaml: dtmf.5: expected key of 0-9, *, #, A-D mapped to an intent, got '5': 'nowhere'",
        ),
    ],
)
def test_yaml_validation_errors_are_precise(path: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_dialogue(mutated(path, value), "t.yaml")
    assert str(info.value) == message


def test_unquoted_yes_in_a_word_list() -> None:
    text = mutated("name", "t") + "affirm: [yes, sure]\n"
    with pytest.raises(ConfigError, match=r"affirm\[0\]: expected a non-empty string, got True \(quote yes/no"):
        load_dialogue(text, "t.yaml")


def test_regex_slot_needs_patterns_and_yaml_must_parse(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^t.yaml: slots.name: missing required key 'patterns'$"):
        load_dialogue(mutated("slots.name", {"type": "regex"}), "t.yaml")
    with pytest.raises(ConfigError, match=r"^t.yaml: not valid YAML: "):
        load_dialogue("name: [unclosed", "t.yaml")
    with pytest.raises(ConfigError, match="cannot read dialogue file"):
        RulesDialogue.from_path(tmp_path / "missing.yaml")
    for name in ("nope", "../data/receptionist"):
        with pytest.raises(ConfigError, match="no built-in dialogue named"):
            RulesDialogue.builtin(name)
    path = tmp_path / "d.yaml"
    path.write_text(mutated("name", "from-file"))
    assert RulesDialogue.from_path(path).model == "from-file"
