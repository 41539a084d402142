"""The pure conversation core: events in, commands out, no event loop, no sockets, no clock."""

from __future__ import annotations

import pytest

from parley.agent import core as c
from parley.agent.memory import Conversation
from parley.providers.base import ToolCall
from parley.turns import events as turns


def make() -> c.ConversationCore:
    core = c.ConversationCore(Conversation("system"))
    core.set_prompts("Are you still there?", "Goodbye.")
    return core


def kinds(cmds: list[c.Command]) -> list[str]:
    """Commands by name, with the machine event fed for FeedMachine (e.g. 'Feed:AgentTurnTaken')."""
    return [f"Feed:{type(x.event).__name__}" if isinstance(x, c.FeedMachine) else type(x).__name__ for x in cmds]


def one(cmds: list[c.Command], kind: type[c.Command]) -> c.Command:
    found = [x for x in cmds if isinstance(x, kind)]
    assert len(found) == 1, kinds(cmds)
    return found[0]


def caller_turn(core: c.ConversationCore, t0: float = 1.0, text: str | None = "book a cleaning") -> list[c.Command]:
    """Speech, a pause with a speculative transcript, end of turn; returns the commands of the pause."""
    assert kinds(core.handle(turns.UserSpeechStarted(t0 + 0.12, t0))) == ["SttOpen"]
    assert kinds(core.handle(turns.UserPaused(t0 + 1.1, 1, t0 + 1.0))) == ["SttSpeculate"]
    out = core.handle(c.SpeculativeText(t0 + 1.2, 1, text)) if text is not None else []
    return out


def reply_id(cmds: list[c.Command]) -> int:
    start = one(cmds, c.StartReply)
    assert isinstance(start, c.StartReply)
    return start.reply_id


# ---- speculation ---------------------------------------------------------------------------------------


def test_a_speculative_reply_is_held_then_committed_when_the_final_transcript_agrees() -> None:
    core = make()
    spec = caller_turn(core)
    assert kinds(spec) == ["Feed:TranscriptHint", "StartReply"]
    start = one(spec, c.StartReply)
    assert isinstance(start, c.StartReply) and start.held and start.messages is not None
    assert start.messages[-1].content == "book a cleaning"
    assert core.memory.messages == []  # nothing is remembered before the turn is confirmed
    assert kinds(core.handle(turns.EndOfTurn(2.2, 2.0, "smart_turn", 1.0))) == ["Feed:AgentTurnTaken", "SttFinalize"]
    out = core.handle(c.FinalText(2.3, "Book a cleaning."))
    assert kinds(out) == ["Feed:AgentTurnTaken", "CommitReply"]
    assert one(out, c.CommitReply) == c.CommitReply(start.reply_id)
    assert [m.content for m in core.memory.messages] == ["Book a cleaning."]
    assert core.turns[0].speculative and core.turns[0].caller == "Book a cleaning."


def test_a_wrong_guess_is_dropped_and_the_reply_is_made_from_the_final_transcript() -> None:
    core = make()
    spec_id = reply_id(caller_turn(core, text="book a"))
    core.handle(turns.EndOfTurn(2.2, 2.0, "smart_turn", 1.0))
    out = core.handle(c.FinalText(2.3, "book a cleaning please"))
    assert kinds(out) == ["CancelReply", "Feed:AgentTurnTaken", "StartReply"]
    assert one(out, c.CancelReply) == c.CancelReply(spec_id)
    start = one(out, c.StartReply)
    assert isinstance(start, c.StartReply) and not start.held and start.reply_id != spec_id
    assert not core.turns[0].speculative


def test_speech_resuming_in_the_pause_drops_the_speculation() -> None:
    core = make()
    spec_id = reply_id(caller_turn(core))
    assert kinds(core.handle(turns.UserResumed(2.0, 1, 1.9))) == ["CancelReply", "SttResume"]
    # a transcript for that pause arriving late is stale
    assert core.handle(c.SpeculativeText(2.1, 1, "book a cleaning")) == []
    assert core.replies[spec_id].done


def test_a_failed_speculation_costs_nothing_at_the_ear() -> None:
    core = make()
    spec_id = reply_id(caller_turn(core))
    assert core.handle(c.ReplyFailed(spec_id, 1.5, "boom")) == []
    assert not core.failed
    core.handle(turns.EndOfTurn(2.2, 2.0, "smart_turn", 1.0))
    assert "StartReply" in kinds(core.handle(c.FinalText(2.3, "book a cleaning")))


# ---- taking an end of turn back --------------------------------------------------------------------------


def answered(core: c.ConversationCore, text: str = "my name is", t0: float = 1.0) -> int:
    caller_turn(core, t0, text=None)
    core.handle(turns.EndOfTurn(t0 + 1.2, t0 + 1.0, "smart_turn", t0))
    return reply_id(core.handle(c.FinalText(t0 + 1.3, text)))


def test_the_caller_going_on_before_the_reply_is_audible_cancels_it_silently_and_the_turn_continues() -> None:
    core = make()
    rid = answered(core, "my name is")
    core.handle(c.ReplyAudio(rid, "Sorry, I didn't catch that.", 400.0))
    out = core.handle(turns.TurnResumed(2.6, 2.5, 1.0))
    assert kinds(out) == ["CancelReply", "SttOpen"]  # not queued yet: nothing to break, nothing recorded
    assert one(out, c.SttOpen) == c.SttOpen(1.0)  # STT hears the whole turn again, from its first word
    assert core.caller_turn_open and core.turns[0].resumed == 1
    assert core.memory.messages == []  # the premature user message is taken back too
    core.handle(turns.EndOfTurn(4.0, 3.8, "smart_turn", 1.0))
    out = core.handle(c.FinalText(4.1, "my name is Sarah Johnson"))
    assert core.turns[0].caller == "my name is Sarah Johnson"
    assert [m.content for m in core.memory.messages] == ["my name is Sarah Johnson"]
    assert "StartReply" in kinds(out) and "RecordTurn" not in kinds(out)


def test_a_queued_but_unheard_reply_is_flushed_and_not_recorded_when_the_turn_goes_on() -> None:
    core = make()
    rid = answered(core)
    core.handle(c.ReplyQueued(rid, 2.4))
    out = core.handle(turns.TurnResumed(2.45, 2.4, 1.0))
    assert kinds(out) == ["CancelReply", "BreakPlayback", "SttOpen"]
    out = core.handle(c.BreakDone(2.5, 2.46, None, {rid: 0.0}))
    assert kinds(out) == ["Feed:AgentDone"]  # the turn is still open: recorded when it is answered


def test_a_final_transcript_still_on_its_way_for_a_resumed_turn_is_dropped() -> None:
    core = make()
    caller_turn(core, text=None)
    core.handle(turns.EndOfTurn(2.2, 2.0, "smart_turn", 1.0))
    out = core.handle(turns.BargeIn(2.5, 2.25))  # old-style: no reply yet, the final not back
    assert kinds(out) == ["SttOpen"]
    assert core.handle(c.FinalText(2.6, "my name is")) == []  # the fragment's final: dropped
    core.handle(turns.EndOfTurn(4.0, 3.8, "silence", 1.0))
    core.handle(c.FinalText(4.1, "my name is Sarah"))  # the whole turn, transcribed again
    assert core.turns[0].caller == "my name is Sarah"


# ---- barge-in and superseded replies -----------------------------------------------------------------


def audible(core: c.ConversationCore, rid: int) -> None:
    core.handle(c.ReplyAudio(rid, "Sure, I can book that.", 1000.0))
    core.handle(c.ReplyAudio(rid, "What day works best for you?", 1200.0))
    core.handle(c.ReplyText(rid, "Sure, I can book that. What day works best for you?"))
    core.handle(c.ReplyQueued(rid, 2.35))
    assert kinds(core.handle(c.ReplyStarted(rid, 2.4, 2.415))) == ["Feed:AgentSpeaking"]


def test_barge_in_on_an_audible_reply_keeps_what_was_heard() -> None:
    core = make()
    rid = answered(core, "book a cleaning")
    audible(core, rid)
    assert kinds(core.handle(turns.BargeIn(4.0, 3.75))) == ["CancelReply", "BreakPlayback"]
    out = core.handle(c.BreakDone(4.05, 4.01, 4.04, {rid: 1300.0}))
    assert kinds(out) == ["RecordTurn", "Feed:AgentDone"]
    turn = core.turns[0]
    assert turn.barge_in and turn.agent == "Sure, I can book that. What"
    assert turn.barge is not None and turn.barge.agent_silent == 4.04
    assert core.memory.messages[-1].content == "Sure, I can book that. What"


def test_a_resume_after_the_reply_became_audible_is_not_a_take_back() -> None:
    core = make()
    rid = answered(core)
    audible(core, rid)
    assert core.handle(turns.TurnResumed(3.0, 2.9, 1.0)) == []


@pytest.mark.parametrize("newer", ["dtmf", "idle"])
def test_a_newer_reply_never_plays_behind_an_older_one(newer: str) -> None:
    core = make()
    rid = answered(core)
    audible(core, rid)
    if newer == "dtmf":
        out = core.handle(c.DtmfInput(5.0, "1"))
        assert kinds(out)[:2] == ["CancelReply", "BreakPlayback"]
    else:
        out = core.handle(turns.IdlePrompt(5.0, 1))
        assert kinds(out) == ["CancelReply", "BreakPlayback", "Feed:AgentTurnTaken", "StartReply"]
    brk = one(out, c.BreakPlayback)
    assert isinstance(brk, c.BreakPlayback) and brk.reply_ids == (rid,)
    # the break comes before the new reply's start, so the new audio is queued behind it
    assert kinds(out).index("BreakPlayback") < kinds(out).index("StartReply")


def test_a_superseded_reply_is_recorded_with_what_was_heard_of_it() -> None:
    core = make()
    rid = answered(core)
    audible(core, rid)
    core.handle(turns.IdlePrompt(5.0, 1))
    out = core.handle(c.BreakDone(5.05, 5.01, 5.04, {rid: 1000.0}))
    rec = one(out, c.RecordTurn)
    assert isinstance(rec, c.RecordTurn) and rec.outcome == "superseded"
    assert rec.turn.agent == "Sure, I can book that."
    assert core.memory.messages[-1].content == "Sure, I can book that."


# ---- ends of replies and calls --------------------------------------------------------------------


def test_a_reply_heard_to_the_end_is_recorded_and_its_tools_run() -> None:
    core = make()
    rid = answered(core, "goodbye")
    hang = ToolCall("1", "hangup", {})
    core.handle(c.ReplyAudio(rid, "Goodbye!", 500.0))
    core.handle(c.ReplyText(rid, "Goodbye!", (hang,)))
    out = core.handle(c.ReplyPlayed(rid, 3.0, 500.0, complete=True))
    assert kinds(out) == ["Feed:AgentDone", "RecordTurn", "RunTools"]
    tools = one(out, c.RunTools)
    assert isinstance(tools, c.RunTools) and tools.calls == (hang,)
    assert core.turns[0].agent == "Goodbye!"


def test_a_failed_reply_asks_for_the_apology() -> None:
    core = make()
    rid = answered(core)
    assert kinds(core.handle(c.ReplyFailed(rid, 2.5, "provider down"))) == ["Apologise"]
    assert core.failed


def test_an_empty_transcript_drops_the_turn_and_frees_the_floor() -> None:
    core = make()
    caller_turn(core, text=None)
    core.handle(turns.EndOfTurn(2.2, 2.0, "silence", 1.0))
    assert kinds(core.handle(c.FinalText(2.3, ""))) == ["Feed:AgentDone"]
    assert core.turns == []


def test_hanging_up_mid_sentence_and_mid_reply_records_both_as_they_stand() -> None:
    core = make()
    rid = answered(core, "book a cleaning")
    audible(core, rid)
    core.handle(turns.BargeIn(4.0, 3.75))
    core.handle(turns.UserSpeechStarted(4.0, 3.75))  # the interruption opens a new caller turn
    core.handle(c.FinalText(4.5, "actually wait"))  # the last words, finalized at hangup
    out = core.handle(c.CallEnded(5.0, {rid: 1000.0}))
    recs = [x for x in out if isinstance(x, c.RecordTurn)]
    assert [(r.turn.index, r.outcome) for r in recs] == [(1, "hangup"), (2, "hung up mid-sentence")]
    assert recs[0].turn.agent == "Sure, I can book that."
    assert recs[1].turn.caller == "actually wait"


def test_the_greeting_is_not_a_caller_turn() -> None:
    core = make()
    out = core.greet(0.0, "Hello!")
    start = one(out, c.StartReply)
    assert isinstance(start, c.StartReply) and start.fixed_text == "Hello!" and not start.held
    assert core.turns == []


@pytest.mark.parametrize(("a", "b", "same"), [
    ("Book a cleaning.", "book a cleaning", True),
    ("Tuesday, please", "tuesday please", True),
    ("Tuesday", "Tuesday please", False),
    ("", "", True),
])
def test_same_words(a: str, b: str, same: bool) -> None:
    assert c.same_words(a, b) is same


# ---- a false interruption ---------------------------------------------------------------------------


@pytest.mark.parametrize("said", ["", "uh-huh", "Yeah.", "mm hmm okay"])
def test_after_a_false_interruption_the_agent_resumes_the_sentence_it_was_cut_in(said: str) -> None:
    core = make()
    rid = answered(core, "book a cleaning")
    audible(core, rid)
    core.handle(turns.BargeIn(4.0, 3.75))
    core.handle(turns.UserSpeechStarted(4.0, 3.75))
    core.handle(c.BreakDone(4.05, 4.01, 4.04, {rid: 1300.0}))  # cut inside "What day works best for you?"
    core.handle(turns.EndOfTurn(4.6, 4.3, "silence", 3.75))
    out = core.handle(c.FinalText(4.7, said))
    start = one(out, c.StartReply)
    assert isinstance(start, c.StartReply) and start.fixed_text == "What day works best for you?"
    # memory keeps the whole reply once it is said again, not the fragment plus a repeat
    core.handle(c.ReplyText(start.reply_id, "What day works best for you?"))
    assert core.memory.messages[-1].content == "Sure, I can book that. What day works best for you?"
    assert core.turns[1].caller == said.strip()


def test_a_real_answer_after_a_barge_in_gets_a_real_reply() -> None:
    core = make()
    rid = answered(core, "book a cleaning")
    audible(core, rid)
    core.handle(turns.BargeIn(4.0, 3.75))
    core.handle(turns.UserSpeechStarted(4.0, 3.75))
    core.handle(c.BreakDone(4.05, 4.01, 4.04, {rid: 1300.0}))
    core.handle(turns.EndOfTurn(5.6, 5.3, "smart_turn", 3.75))
    out = core.handle(c.FinalText(5.7, "Tuesday at three"))
    start = one(out, c.StartReply)
    assert isinstance(start, c.StartReply) and start.fixed_text is None
    assert core.memory.messages[-2].content == "Sure, I can book that. What"  # what was heard stays


@pytest.mark.parametrize(("text", "yes"), [("", True), ("uh-huh", True), ("Okay.", True), ("yeah right", True),
                                            ("Tuesday", False), ("yes Tuesday", False), ("no", False)])
def test_is_backchannel(text: str, yes: bool) -> None:
    assert c.is_backchannel(text) is yes


# ---- a short turn's hold ---------------------------------------------------------------------------


def held_turn(core: c.ConversationCore, text: str = "at three") -> int:
    spec = reply_id(caller_turn(core, text=text))
    core.handle(turns.EndOfTurn(2.2, 2.0, "smart_turn", 1.0, release_t=2.4))
    assert core.handle(c.FinalText(2.25, text)) == []  # the speculative reply stays held: not heard yet
    return spec


def test_a_short_turns_reply_goes_live_when_the_machine_releases_it() -> None:
    core = make()
    spec = held_turn(core)
    core.handle(c.ReplyText(spec, "And what name should I put it under?"))
    out = core.handle(turns.ReleaseReply(2.4))
    assert kinds(out) == ["Feed:AgentTurnTaken", "CommitReply"]
    assert core.turns[0].agent_full == "And what name should I put it under?"
    assert core.memory.messages[-1].content == "And what name should I put it under?"


def test_speech_during_the_hold_takes_the_turn_back_and_nothing_was_heard() -> None:
    core = make()
    spec = held_turn(core)
    out = core.handle(turns.TurnResumed(2.3, 2.28, 1.0))
    assert kinds(out) == ["CancelReply", "SttOpen"]  # nothing queued: nothing to break
    assert core.replies[spec].done and core.caller_turn_open and core.memory.messages == []
    assert core.handle(turns.ReleaseReply(2.4)) == []  # a late release has nothing to release


def test_a_caller_who_hangs_up_during_the_hold_still_has_their_turn_recorded() -> None:
    core = make()
    held_turn(core, "no")
    recs = [x for x in core.handle(c.CallEnded(2.3)) if isinstance(x, c.RecordTurn)]
    assert [(r.turn.caller, r.outcome, r.turn.agent) for r in recs] == [("no", "hangup", "")]
