"""The shipped receptionist answers what callers ask: every intent, the multi-turn flows (reschedule,
cancel with confirmation, billing message or transfer, "a person" with and without transfer targets), what
it says when it does not understand, and speech-to-text quirks of 8 kHz phone audio. Table tests on the
pure policy (history in, reply out), as the engine drives it."""

from __future__ import annotations

import pytest

from parley.providers.base import Message, ToolSpec
from parley.providers.rules_language import DigitsSlot, extract, normalize, strip_annotations
from parley.providers.rules_llm import RulesDialogue
from parley.providers.rules_policy import Reply


def transfer_spec(*names: str) -> ToolSpec:
    return ToolSpec(
        "transfer",
        "Transfer the caller",
        {"type": "object", "properties": {"destination": {"type": "string", "enum": list(names)}}},
    )


HANGUP = ToolSpec("hangup", "End the call")
BOTH = (HANGUP, transfer_spec("front_desk", "billing"))  # the shipped example's targets
DESK_ONLY = (HANGUP, transfer_spec("front_desk"))
NO_TRANSFER = (HANGUP,)

ANYTHING_ELSE = "Is there anything else I can help you with?"
CAN_DO = (
    "I can help you book, reschedule or cancel an appointment, tell you our hours or address, take a message "
    "for billing, or put you through to the front desk."
)
CAN_DO_WITHOUT_TRANSFER = (
    "I can help you book, reschedule or cancel an appointment, tell you our hours or address, or take a "
    "message for billing or the front desk."
)
BILLING_OFFER = (
    "I can put you through to our billing team, or take a message and they'll call you back. "
    "Would you like me to put you through?"
)
BILLING_MESSAGE = "I can take a message for our billing team, and they'll call you back. What's your name, please?"
DESK_MESSAGE = (
    "I can't put calls through right now, but someone can call you back. I'll take a message for the front desk. "
    "What's your name, please?"
)


@pytest.fixture(scope="module")
def brain() -> RulesDialogue:
    return RulesDialogue.builtin("receptionist")


def conversation(brain: RulesDialogue, utterances: list[str], tools: tuple[ToolSpec, ...] = BOTH) -> list[Reply]:
    history: list[Message] = []
    replies = []
    for utterance in utterances:
        history.append(Message("user", utterance))
        reply = brain.respond(history, tools)
        history.append(Message("assistant", reply.text))
        replies.append(reply)
    return replies


def flow(brain: RulesDialogue, turns: list[tuple[str, str]], tools: tuple[ToolSpec, ...] = BOTH) -> list[Reply]:
    replies = conversation(brain, [caller for caller, _ in turns], tools)
    assert [(caller, reply.text) for (caller, _), reply in zip(turns, replies, strict=True)] == turns
    return replies


# ---- one utterance, one intent ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("utterance", "intent"),
    [
        ("i need to reschedule my appointment", "reschedule"),
        ("can i move my tuesday appointment to thursday", "reschedule"),
        ("I can't make it on Tuesday, can I move it to Wednesday?", "reschedule"),
        ("uh could we push back my cleaning", "reschedule"),
        ("i need a different time for my appointment", "reschedule"),
        ("i need to cancel", "cancel"),
        ("i won't be able to come on friday", "cancel"),
        ("i have a question about my bill", "billing"),
        ("I got a bill and I don't understand the charges.", "billing"),
        ("why was i charged twice", "billing"),
        ("can i set up a payment plan", "billing"),
        ("i'd like a refund", "billing"),
        ("can i talk to someone in billing", "billing_transfer"),
        ("can i speak to someone about my bill", "billing_transfer"),
        ("put me through to the billing department", "billing_transfer"),
        ("let me talk to a person", "transfer"),
        ("um can i speak with a real person please", "transfer"),
        ("i want to talk to the receptionist", "transfer"),
        ("operator", "transfer"),
        ("can i leave a message", "message"),
        ("how much is a cleaning", "prices"),
        ("what does a filling cost", "prices"),
        ("do you take cigna", "insurance"),
        ("are you taking new patients", "new_patients"),
        ("what can you do", "capabilities"),
        ("hello are you there", "hello"),
        ("when do you open on saturday", "hours"),
        ("whats your address", "address"),
        ("where do i park", "parking"),
        ("my tooth hurts really bad", "emergency"),
        ("i'd like to book a cleaning", "book"),
        ("thanks bye", "goodbye"),
    ],
)
def test_intent(brain: RulesDialogue, utterance: str, intent: str) -> None:
    assert brain.respond([Message("user", utterance)], BOTH).intent == intent


@pytest.mark.parametrize(
    ("utterance", "reply"),
    [
        ("how much is a cleaning", "A cleaning and exam is 120 dollars without insurance"),
        ("what can you do", CAN_DO),
        ("hello?", "Hi, I'm here. How can I help you today?"),
        ("i have a question about my bill", BILLING_OFFER),
        ("are you taking new patients", "Yes, we're happy to see new patients. Would you like to book a first visit?"),
    ],
)
def test_answers(brain: RulesDialogue, utterance: str, reply: str) -> None:
    assert brain.respond([Message("user", utterance)], BOTH).text.startswith(reply)


# ---- not understood: say what it can do; ask to repeat only garbled input -------------------------------


@pytest.mark.parametrize(
    ("utterance", "tools", "reply"),
    [
        ("what's the weather like today", BOTH, f"Sorry, I can't help with that over the phone. {CAN_DO}"),
        (
            "can you order me a pizza",
            NO_TRANSFER,
            f"Sorry, I can't help with that over the phone. {CAN_DO_WITHOUT_TRANSFER}",
        ),
        ("", BOTH, "Sorry, I didn't catch that. Could you say that again?"),
        ("um uh", BOTH, "Sorry, I didn't catch that. Could you say that again?"),
        ("[BLANK_AUDIO]", BOTH, "Sorry, I didn't catch that. Could you say that again?"),
        ("(coughs) hmm", BOTH, "Sorry, I didn't catch that. Could you say that again?"),
        ("mmm fish", BOTH, "Sorry, I didn't catch that. Could you say that again?"),
    ],
)
def test_what_it_says_when_it_does_not_understand(
    brain: RulesDialogue, utterance: str, tools: tuple[ToolSpec, ...], reply: str
) -> None:
    answer = brain.respond([Message("user", utterance)], tools)
    assert (answer.text, answer.intent) == (reply, None)


def test_a_sentence_not_understood_mid_task_re_asks_without_a_menu(brain: RulesDialogue) -> None:
    flow(
        brain,
        [
            ("book a cleaning", "Sure, I can book that for you. What day works best for you?"),
            ("whenever the dentist has time", "Sorry, I didn't quite get that. What day works best for you?"),
            ("friday", "And what time on Friday?"),
        ],
    )


def test_the_retry_after_a_declined_escalation_says_what_it_can_do(brain: RulesDialogue) -> None:
    replies = conversation(brain, ["blah", "blah blah", "what is the meaning of life", "no"])
    assert replies[2].text == "I'm having trouble understanding. Would you like me to transfer you to the front desk?"
    assert replies[3].text == f"No problem, let's try again. {CAN_DO}"


# ---- rescheduling -------------------------------------------------------------------------------------


def test_reschedule_one_slot_at_a_time(brain: RulesDialogue) -> None:
    replies = flow(
        brain,
        [
            (
                "hi um i need to reschedule my appointment",
                "Sure, I can move your appointment. What name is the appointment under?",
            ),
            ("sarah miller", "Thanks, Sarah Miller. What day is your appointment now?"),
            ("it's on tuesday", "And what day would you like to move it to?"),
            ("thursday", "And what time on Thursday?"),
            ("at 3", "Just to confirm, Sarah Miller, you'd like to move your Tuesday appointment to Thursday at 3 PM?"),
            (
                "yes",
                f"All set, Sarah Miller. Your appointment is moved from Tuesday to Thursday at 3 PM. {ANYTHING_ELSE}",
            ),
            ("no thanks", "Thanks for calling Riverside Dental. Have a great day!"),
        ],
    )
    assert replies[-1].tool == "hangup"


@pytest.mark.parametrize(
    ("utterances", "last"),
    [
        (
            ["i'd like to move my tuesday appointment to thursday at two", "my name is sarah miller"],
            "Just to confirm, Sarah Miller, you'd like to move your Tuesday appointment to Thursday at 2 PM?",
        ),
        (
            ["can i change my appointment from monday to friday please", "it's john lee", "ten thirty"],
            "Just to confirm, John Lee, you'd like to move your Monday appointment to Friday at 10:30 AM?",
        ),
        (
            ["I can't make it on Tuesday, can I move it to Wednesday?", "Sarah", "4 p.m."],
            "Just to confirm, Sarah, you'd like to move your Tuesday appointment to Wednesday at 4 PM?",
        ),
        (
            ["Um, I need to reschedule.", "Sarah Miller.", "Tuesday.", "Thursday at 2 PM."],
            "Just to confirm, Sarah Miller, you'd like to move your Tuesday appointment to Thursday at 2 PM?",
        ),
        (
            ["reschedule please", "name's ana, it's on monday", "sunday"],
            "Sorry, we're closed on Sundays. Which other day would suit you?",
        ),
    ],
)
def test_reschedule_takes_both_days_from_one_sentence(brain: RulesDialogue, utterances: list[str], last: str) -> None:
    assert conversation(brain, utterances)[-1].text == last


def test_reschedule_correction_at_the_confirmation_and_a_no(brain: RulesDialogue) -> None:
    replies = conversation(brain, ["move my monday appointment to friday", "john lee", "ten thirty"])
    assert replies[-1].text.endswith("move your Monday appointment to Friday at 10:30 AM?")
    flow_rest = conversation(
        brain, ["move my monday appointment to friday", "john lee", "ten thirty", "no, make it friday at eleven", "no"]
    )
    assert (
        flow_rest[3].text == "Just to confirm, John Lee, you'd like to move your Monday appointment to Friday at 11 AM?"
    )
    assert flow_rest[4].text == f"Okay, I've left your Monday appointment as it is. {ANYTHING_ELSE}"


# ---- cancelling ---------------------------------------------------------------------------------------


def test_cancel_confirms_name_and_day_then_cancels(brain: RulesDialogue) -> None:
    flow(
        brain,
        [
            ("Hi, I need to cancel my appointment.", "I can help you cancel. What name is the appointment under?"),
            ("Sarah Miller.", "Thanks, Sarah Miller. And what day is the appointment?"),
            ("It's on Tuesday.", "Just to confirm, you'd like to cancel the Tuesday appointment for Sarah Miller?"),
            (
                "sorry could you repeat that",
                "Just to confirm, you'd like to cancel the Tuesday appointment for Sarah Miller?",
            ),
            (
                "hmm",
                "Sorry, I didn't catch that. Could you say that again? Just to confirm, you'd like to cancel the "
                "Tuesday appointment for Sarah Miller?",
            ),
            ("yes cancel it", f"Okay, Sarah Miller, I've cancelled your Tuesday appointment. {ANYTHING_ELSE}"),
        ],
    )


@pytest.mark.parametrize(
    ("answer", "reply"),
    [
        ("no", f"Okay, I haven't cancelled anything. Your Tuesday appointment stays as it is. {ANYTHING_ELSE}"),
        ("no don't", f"Okay, I haven't cancelled anything. Your Tuesday appointment stays as it is. {ANYTHING_ELSE}"),
        (
            "no that's not right",
            f"Okay, I haven't cancelled anything. Your Tuesday appointment stays as it is. {ANYTHING_ELSE}",
        ),
        ("no it's wednesday", "Just to confirm, you'd like to cancel the Wednesday appointment for Sarah?"),
        ("yeah", f"Okay, Sarah, I've cancelled your Tuesday appointment. {ANYTHING_ELSE}"),
        (
            "what are your hours",
            "We're open Monday to Friday from 8 AM to 5 PM, and Saturday from 9 AM to 1 PM. "
            "We're closed on Sundays. Just to confirm, you'd like to cancel the Tuesday appointment "
            "for Sarah?",
        ),
    ],
)
def test_answers_to_the_cancel_confirmation(brain: RulesDialogue, answer: str, reply: str) -> None:
    replies = conversation(brain, ["i need to cancel", "Tuesday at 3 please, name's Sarah", answer])
    assert replies[1].text == "Just to confirm, you'd like to cancel the Tuesday appointment for Sarah?"
    assert replies[2].text == reply


# ---- billing ------------------------------------------------------------------------------------------


def test_billing_question_ends_in_a_transfer_to_billing(brain: RulesDialogue) -> None:
    replies = flow(
        brain,
        [
            ("i have a question about my bill", BILLING_OFFER),
            ("yes please", "Sure, I'll put you through to our billing team now. One moment, please."),
        ],
    )
    assert (replies[-1].tool, dict(replies[-1].arguments)) == ("transfer", {"destination": "billing"})


def test_billing_question_ends_in_a_message(brain: RulesDialogue) -> None:
    replies = flow(
        brain,
        [
            ("I got a bill and I don't understand the charges.", BILLING_OFFER),
            ("no just take a message", BILLING_MESSAGE),
            ("sarah miller", "Thanks, Sarah Miller. What's the best number to call you back on?"),
            ("it's five five five, oh one two, three four five six", "And briefly, what's it about?"),
            (
                "i think i was charged twice for my cleaning on tuesday",
                "Thanks, Sarah Miller. I've passed your message to our billing team, and they'll call you back at "
                f"5 5 5 0 1 2 3 4 5 6. {ANYTHING_ELSE}",
            ),
        ],
    )
    assert all(reply.tool is None for reply in replies)


@pytest.mark.parametrize("tools", [DESK_ONLY, NO_TRANSFER])
def test_billing_without_a_billing_target_takes_a_message(brain: RulesDialogue, tools: tuple[ToolSpec, ...]) -> None:
    flow(
        brain,
        [
            ("can i talk to someone in billing", BILLING_MESSAGE),
            ("Bob.", "Thanks, Bob. What's the best number to call you back on?"),
            ("it's 5 5 5", "Sorry, I didn't quite get that. Thanks, Bob. What's the best number to call you back on?"),
            ("555-012-3456", "And briefly, what's it about?"),
            (
                "a refund",
                f"Thanks, Bob. I've passed your message to our billing team, and they'll call you back at "
                f"5 5 5 0 1 2 3 4 5 6. {ANYTHING_ELSE}",
            ),
        ],
        tools,
    )


# ---- a person -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "utterance", ["let me talk to a person", "Hi, I'd like to talk to a person, please.", "[DTMF 0]", "representative"]
)
def test_a_person_is_a_transfer_to_the_front_desk(brain: RulesDialogue, utterance: str) -> None:
    reply = brain.respond([Message("user", utterance)], BOTH)
    assert reply.text == "Sure, I'll put you through to the front desk now. One moment, please."
    assert (reply.tool, dict(reply.arguments)) == ("transfer", {"destination": "front_desk"})


def test_a_person_without_transfer_takes_a_message(brain: RulesDialogue) -> None:
    flow(
        brain,
        [
            ("let me talk to a person", DESK_MESSAGE),
            ("bob", "Thanks, Bob. What's the best number to call you back on?"),
            ("my number is 0 7 7 0 0 9 0 0 1 2 3", "And briefly, what's it about?"),
            (
                "can i book an appointment",
                "Thanks, Bob. I've passed your message on, and someone from the front desk "
                f"will call you back at 0 7 7 0 0 9 0 0 1 2 3. {ANYTHING_ELSE}",
            ),
        ],
        NO_TRANSFER,
    )


def test_emergency_without_transfer_offers_a_booking(brain: RulesDialogue) -> None:
    replies = conversation(brain, ["i have a terrible toothache", "yes"], NO_TRANSFER)
    assert replies[0].text.endswith("Would you like me to book you in?")
    assert replies[1].text == "Sure, I can book that for you. What day works best for you?"


def test_a_transfer_target_not_offered_is_never_called(brain: RulesDialogue) -> None:
    for tools in (DESK_ONLY, NO_TRANSFER):
        for utterances in (["put me through to billing"], ["question about my bill", "yes"]):
            assert all(reply.tool is None for reply in conversation(brain, utterances, tools))


# ---- phone speech-to-text -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("utterances", "last"),
    [
        (["book a cleaning", "Tuesday at 3 please, name's Sarah"], "Perfect, Sarah. You're booked for Tuesday at 3 PM."),
        (["book a cleaning", "TUESDAY AT 3PM"], "And what name should I put the appointment under?"),
        (["book me for tuesday at to pm", "ann"], "Perfect, Ann. You're booked for Tuesday at 2 PM."),
        (["um book uh friday", "at for", "jo"], "Perfect, Jo. You're booked for Friday at 4 PM."),
        (["i'd like an appointment", "uh thursday at ten thirty in the morning my name is li wei"],
         "Perfect, Li Wei. You're booked for Thursday at 10:30 AM."),
    ],
)  # fmt: skip
def test_phone_transcripts(brain: RulesDialogue, utterances: list[str], last: str) -> None:
    assert conversation(brain, utterances)[-1].text.startswith(last)


@pytest.mark.parametrize(
    ("text", "digits"),
    [
        ("five five five one two three four", "5 5 5 1 2 3 4"),
        ("555-123-4567", "5 5 5 1 2 3 4 5 6 7"),
        ("double five five one to three four", "5 5 5 1 2 3 4"),
        ("oh seven seven triple oh nine", "0 7 7 0 0 0 9"),
        ("it's 555 1234 thanks", "5 5 5 1 2 3 4"),
        ("i want to go to 123", None),
        ("one two", None),
    ],
)
def test_phone_numbers(text: str, digits: str | None) -> None:
    assert extract(DigitsSlot("phone"), normalize(text), asked=True).value == digits


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("[BLANK_AUDIO]", ""),
        ("(coughs) yes", "yes"),
        ("*laughs* okay ♪", "okay"),
        ("Tuesday at 3pm.", "tuesday at 3 pm"),
    ],
)
def test_stage_directions_and_glued_meridiem(raw: str, clean: str) -> None:
    assert normalize(strip_annotations(raw)) == clean
