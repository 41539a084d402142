"""The conversation core of one call: turn and reply bookkeeping, pure. Events in, commands out.

Owns: which caller turn is open, which reply has the floor, what each reply has said and what the caller
heard of it, the conversation memory given to the brain, and when a turn is recorded. It decides:

- a reply made *speculatively* from the transcript at a pause is held back (nothing queued at
  FreeSWITCH) and made audible only if the final transcript says the same; otherwise it is dropped (its
  usage still counts) and a reply is made from the final transcript;
- the caller going on before the reply reached their ear takes the end of turn back: the reply is
  cancelled silently (queued audio flushed) and the caller's turn continues, text and all;
- the caller talking over an *audible* reply is a barge-in: the reply stops, and memory keeps what the
  PLAYBACK events say was heard;
- a newer reply never plays behind an older one: anything still queued or playing is broken first.

Must not know asyncio, sockets, clocks, audio samples, providers or FreeSWITCH: the shell
(:mod:`parley.agent.session`) carries out the commands and reports back with events, each stamped with
its time. The turn machine (:mod:`parley.turns.machine`) stays the only place turns are decided; this
core reacts to its actions and tells the shell what to feed it back (who holds the floor).

Its vocabulary lives in :mod:`parley.agent.core_events`. This module is over the house's 400-line aim on
purpose: it is one state machine whose transitions (speculation, take-back, barge-in, supersede, resume)
share the same few fields, and splitting it would spread one invariant ("nothing of an older reply is
heard after a newer one starts") over several files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from parley.agent.core_events import (
    Apologise,
    BreakDone,
    BreakPlayback,
    CallEnded,
    CancelReply,
    Command,
    CommitReply,
    CoreEvent,
    DtmfInput,
    FeedMachine,
    FinalText,
    RecordTurn,
    ReplyAudio,
    ReplyFailed,
    ReplyMark,
    ReplyPlayed,
    ReplyQueued,
    ReplyStarted,
    ReplyText,
    RunTools,
    Score,
    SpeculativeText,
    StartReply,
    SttFinalize,
    SttOpen,
    SttResume,
    SttSpeculate,
)
from parley.agent.memory import Conversation, SpokenSegment, heard_text
from parley.agent.turn import TurnRecord
from parley.observe import timings as tm
from parley.providers.base import Message, ToolCall
from parley.turns import events as turns

__all__ = [
    "BACKCHANNELS",
    "Apologise",
    "BreakDone",
    "BreakPlayback",
    "CallEnded",
    "CancelReply",
    "Command",
    "CommitReply",
    "ConversationCore",
    "CoreEvent",
    "DtmfInput",
    "FeedMachine",
    "FinalText",
    "RecordTurn",
    "Reply",
    "ReplyAudio",
    "ReplyFailed",
    "ReplyMark",
    "ReplyPlayed",
    "ReplyQueued",
    "ReplyStarted",
    "ReplyText",
    "RunTools",
    "Score",
    "SpeculativeText",
    "StartReply",
    "SttFinalize",
    "SttOpen",
    "SttResume",
    "SttSpeculate",
    "heard_of",
    "is_backchannel",
    "same_words",
]

# ------------------------------------------------------------------------------------------------ state


@dataclass(slots=True)
class Reply:
    id: int
    turn: TurnRecord
    answers: str | None  # the caller text it answers (None: a fixed text such as the greeting)
    held: bool
    then_hangup: bool = False
    timings: tm.TurnTimings = field(default_factory=tm.TurnTimings)
    segments: list[SpokenSegment] = field(default_factory=list)
    current_text: str = ""
    current_ms: float = 0.0
    text: str | None = None  # the whole reply, once the brain is done
    tool_calls: tuple[ToolCall, ...] = ()
    queued: bool = False
    audible: bool = False
    breaking: bool = False  # a uuid_break for it is on its way
    done: bool = False  # played out, broken, cancelled or failed
    in_memory: bool = False
    # barge-in: the caller's onset and when it was detected
    barge: tuple[float, float] | None = None
    remember_as: str | None = None  # the text memory keeps for it (a resumed reply: the whole sentence)

    def spoken(self) -> list[SpokenSegment]:
        out = list(self.segments)
        if self.current_text:
            out.append(SpokenSegment(self.current_text, self.current_ms))
        return out


_WORD = re.compile(r"[a-z0-9']+")
# What a listener says without taking the turn; after a barge-in, a turn of only these (or no words at all:
# a cough, a door) was a false interruption and the agent resumes its sentence.
BACKCHANNELS = frozenset({
    "uh", "huh", "uh-huh", "mm", "mhm", "hmm", "mm-hmm", "mmhmm", "um", "ah", "oh",
    "yeah", "yep", "yes", "ok", "okay", "right", "sure", "alright",
})


def is_backchannel(text: str) -> bool:
    """No words, or only backchannel words ("uh-huh", "yeah", "okay")."""
    return all(w.strip("'") in BACKCHANNELS for w in re.findall(r"[a-z'-]+|[0-9]+", text.lower()))


def same_words(a: str, b: str) -> bool:
    """Do two transcripts say the same (case, punctuation and spacing aside)?"""
    return _WORD.findall(a.lower()) == _WORD.findall(b.lower())


class ConversationCore:
    """One call's conversation state. ``handle(event)`` returns the commands to carry out, in order."""

    def __init__(self, memory: Conversation, *, speculate: bool = True) -> None:
        self.memory = memory
        self.speculate = speculate
        self.turns: list[TurnRecord] = []
        self.replies: dict[int, Reply] = {}
        self.failed = False
        self.ended = False
        self._next_id = 0
        self._caller: TurnRecord | None = None  # the open caller turn
        self._parts: list[str] = []  # its words from before an end of turn was taken back
        self._ending: TurnRecord | None = None  # ended turn waiting for its final transcript
        self._pause: int | None = None  # the pause the caller is in, if any
        self._spec: Reply | None = None  # the held speculative reply
        self._current: Reply | None = None  # the reply that has the floor
        self._recorded: set[int] = set()
        # the reply a barge-in just cut mid-sentence, what to say to resume it, and what was said before it
        self._cut: tuple[Reply, str, str] | None = None
        self._onset: dict[int, float] = {}  # each caller turn's first speech (by id of its record)
        self._final_pending = False  # an ended turn's final transcript has been asked for, not received
        self._stale_finals = 0  # finals still on their way for turns whose end was taken back
        self._hold = False  # the last EndOfTurn's reply may not be heard until ReleaseReply
        self._waiting: Reply | None = None  # the reply waiting for that release (held)

    # ---- queries ---------------------------------------------------------------------------------

    @property
    def caller_turn_open(self) -> bool:
        return self._caller is not None

    @property
    def pause_id(self) -> int | None:
        """The pause the caller is in (a speculative transcript now belongs to it), if any."""
        return self._pause if self._caller is not None else None

    @property
    def current(self) -> Reply | None:
        return self._current

    def reply(self, reply_id: int) -> Reply | None:
        return self.replies.get(reply_id)

    def live_replies(self) -> list[Reply]:
        return [r for r in self.replies.values() if not r.done and not r.held and not r.breaking]

    # ---- entry points ----------------------------------------------------------------------------

    def greet(self, t: float, text: str) -> list[Command]:
        if not text:
            return []
        return self._start(t, TurnRecord(index=0), fixed_text=text)

    def handle(self, ev: CoreEvent) -> list[Command]:
        match ev:
            case turns.UserSpeechStarted(onset_t=onset):
                if self._caller is not None:
                    return []
                self._caller = self.new_turn()
                self._parts = []
                self._onset[id(self._caller)] = onset
                return [SttOpen(onset)]
            case turns.UserPaused(pause_id=pid):
                self._pause = pid
                return [SttSpeculate(pid)]
            case turns.UserResumed():
                self._pause = None
                return [*self._drop_speculation(), SttResume()]
            case turns.ScoreTurn(pause_id=pid):
                return [Score(pid)]
            case turns.EndOfTurn(t=t, speech_end_t=end, reason=reason, release_t=release):
                return self._end_of_turn(t, end, reason, release)
            case turns.ReleaseReply(t=t):
                return self._released(t)
            case turns.BargeIn(t=t, onset_t=onset):
                return self._interrupted(t, onset)
            case turns.IdlePrompt(t=t):
                return self._start(t, self.new_turn(), fixed_text=self._idle_prompt)
            case turns.IdleHangup(t=t):
                return self._start(t, self.new_turn(), fixed_text=self._goodbye, then_hangup=True)
            case SpeculativeText():
                return self._speculative(ev)
            case FinalText():
                return self._final(ev)
            case ReplyMark(reply_id=rid, stage=stage, t=t, provider_s=ps):
                if (r := self.replies.get(rid)) is not None:
                    self._mark(r, stage, t, ps)
                return []
            case ReplyAudio(reply_id=rid, text=text, ms=ms):
                if (r := self.replies.get(rid)) is not None:
                    if r.current_text and r.current_text != text:
                        r.segments.append(SpokenSegment(r.current_text, r.current_ms))
                        r.current_ms = 0.0
                    r.current_text = text
                    r.current_ms += ms
                return []
            case ReplyText():
                return self._reply_text(ev)
            case ReplyQueued(reply_id=rid, t=t):
                if (r := self.replies.get(rid)) is not None:
                    r.queued = True
                    self._mark(r, tm.PLAYBACK_COMMAND, t)
                return []
            case ReplyStarted(reply_id=rid, t=t, audible_t=audible):
                return self._started(rid, t, audible)
            case ReplyPlayed():
                return self._played(ev)
            case ReplyFailed():
                return self._failed(ev)
            case BreakDone():
                return self._broken(ev)
            case DtmfInput(t=t, digits=digits):
                return self._dtmf(t, digits)
            case CallEnded():
                return self._call_ended(ev)
            case turns.TurnResumed(t=t, onset_t=onset):
                return self._interrupted(t, onset, resumed=True)

    # settings the shell may replace (the engine's conversation settings)
    _idle_prompt = "Are you still there?"
    _goodbye = "Goodbye."

    def set_prompts(self, idle_prompt: str, goodbye: str) -> None:
        self._idle_prompt, self._goodbye = idle_prompt, goodbye

    # ---- caller turns ------------------------------------------------------------------------------

    def new_turn(self) -> TurnRecord:
        turn = TurnRecord(index=len(self.turns) + 1)
        self.turns.append(turn)
        return turn

    def _end_of_turn(self, t: float, speech_end: float, reason: str, release_t: float | None) -> list[Command]:
        turn, self._caller, self._pause = self._caller, None, None
        if turn is None:
            return []
        turn.endpoint_reason = reason
        turn.timings.mark(tm.SPEECH_END, speech_end)
        turn.timings.mark(tm.ENDPOINT, t)
        self._ending = turn
        self._final_pending = True
        self._hold = release_t is not None
        return [FeedMachine(turns.AgentTurnTaken(t)), SttFinalize()]

    def _speculative(self, ev: SpeculativeText) -> list[Command]:
        if self._caller is None or self._pause != ev.pause_id:
            return []  # stale: speech resumed, or the turn already ended
        out: list[Command] = []
        text = " ".join([*self._parts, ev.text]).strip()
        out.append(FeedMachine(turns.TranscriptHint(ev.t, ev.pause_id, text)))
        if self.speculate and text and (self._spec is None or not same_words(self._spec.answers or "", text)):
            out += self._drop_speculation()
            messages = (*self.memory.for_llm(), Message("user", text))
            r = self._reply_for(self._caller, answers=text, held=True)
            self._spec = r
            out.append(StartReply(r.id, messages, None, held=True))
        return out

    def _final(self, ev: FinalText) -> list[Command]:
        turn = self._ending
        if turn is None:
            if self._stale_finals > 0:
                self._stale_finals -= 1  # a fragment of a turn that went on: STT hears the whole turn again
            elif ev.text and self._caller is not None:  # the last words, finalized as the call ends
                self._parts.append(ev.text)
            return []
        self._final_pending = False
        self._ending = None
        turn.timings.mark(tm.STT_FINAL, ev.t)
        text = " ".join([*self._parts, ev.text]).strip()
        self._parts = []
        turn.caller = text
        spec, self._spec = self._spec, None
        cut, self._cut = self._cut, None
        if cut is not None and is_backchannel(text) and turn.resumed == 0:
            return [*([CancelReply(spec.id)] if spec is not None else []), *self._resume_cut(ev.t, turn, cut)]
        if not text:
            if turn in self.turns:
                self.turns.remove(turn)
            out: list[Command] = [CancelReply(spec.id)] if spec is not None else []
            if spec is not None:
                spec.done = True
            return [*out, FeedMachine(turns.AgentDone(ev.t))]
        self.memory.add_user(text)
        if spec is not None and same_words(spec.answers or "", text):
            turn.speculative = True
            if self._hold:
                self._waiting = spec  # the machine holds a short turn's reply back a little (ReleaseReply)
                return []
            return self._go_live(ev.t, spec)
        out = []
        if spec is not None:
            spec.done = True
            out.append(CancelReply(spec.id))
        if self._hold:
            r = self._reply_for(turn, answers=text, held=True)
            self._waiting = r
            return [*out, StartReply(r.id, tuple(self.memory.for_llm()), None, held=True)]
        return [*out, *self._start(ev.t, turn, messages=tuple(self.memory.for_llm()), answers=text)]

    def _go_live(self, t: float, r: Reply) -> list[Command]:
        """A held reply (speculative, or waiting out a short turn's hold) becomes the one the caller hears."""
        r.held = False
        for stage, at in r.timings.marks.items():
            r.turn.timings.mark(stage, at)
        for stage, secs in r.timings.provider_s.items():
            r.turn.timings.add_provider_time(stage, secs)
        cmds = self._take_floor(t, r)
        if r.text is not None:
            r.turn.agent_full = r.text
            r.turn.tool_calls = list(r.tool_calls)
            self._remember(r)
        return [*cmds, CommitReply(r.id)]

    def _released(self, t: float) -> list[Command]:
        self._hold = False
        r, self._waiting = self._waiting, None
        return [] if r is None or r.done else self._go_live(t, r)

    def _resume_cut(self, t: float, turn: TurnRecord, cut: tuple[Reply, str, str]) -> list[Command]:
        """A barge-in that was only a cough or an "uh-huh": say the interrupted sentence again, and the rest."""
        r, resume, before = cut
        msgs = self.memory.messages
        if msgs and msgs[-1].role == "assistant" and msgs[-1].content == r.turn.agent:
            msgs.pop()  # the heard part goes; the whole reply comes back when it is said
        if turn.caller:
            self.memory.add_user(turn.caller)
        turn.endpoint_reason = turn.endpoint_reason or "false_interruption"
        cmds = self._start(t, turn, fixed_text=resume)
        start = cmds[-1]
        assert isinstance(start, StartReply)
        self.replies[start.reply_id].remember_as = f"{before} {resume}".strip()
        return cmds

    def _drop_speculation(self) -> list[Command]:
        spec, self._spec = self._spec, None
        if spec is None:
            return []
        spec.done = True
        return [CancelReply(spec.id)]

    # ---- replies -----------------------------------------------------------------------------------

    def _reply_for(self, turn: TurnRecord, *, answers: str | None, held: bool, then_hangup: bool = False) -> Reply:
        self._next_id += 1
        r = Reply(self._next_id, turn, answers, held, then_hangup)
        self.replies[r.id] = r
        return r

    def _start(
        self,
        t: float,
        turn: TurnRecord,
        *,
        fixed_text: str | None = None,
        messages: tuple[Message, ...] | None = None,
        answers: str | None = None,
        then_hangup: bool = False,
    ) -> list[Command]:
        r = self._reply_for(turn, answers=answers, held=False, then_hangup=then_hangup)
        cmds = self._take_floor(t, r)
        return [*cmds, StartReply(r.id, messages, fixed_text, held=False)]

    def _take_floor(self, t: float, r: Reply) -> list[Command]:
        """``r`` becomes the reply that speaks: nothing of an older reply may be heard after it."""
        out: list[Command] = []
        stale = [o for o in self.live_replies() if o is not r]
        for o in stale:
            out.append(CancelReply(o.id))
            if not o.queued:
                o.done = True
                out += self._record(o.turn, "superseded", o)
        breaking = tuple(o.id for o in stale if o.queued)
        if breaking:
            out.append(self._break(*stale))
        self._current = r
        out.append(FeedMachine(turns.AgentTurnTaken(t)))
        return out

    def _mark(self, r: Reply, stage: str, t: float, provider_s: float | None = None) -> None:
        r.timings.mark(stage, t)
        if provider_s is not None:
            r.timings.add_provider_time(stage, provider_s)
        if not r.held:
            r.turn.timings.mark(stage, t)
            if provider_s is not None and stage not in r.turn.timings.provider_s:
                r.turn.timings.add_provider_time(stage, provider_s)

    def _remember(self, r: Reply) -> None:
        if not r.in_memory:
            self.memory.add_assistant(r.remember_as or r.text or "", r.tool_calls)
            r.in_memory = True

    def _break(self, *replies: Reply) -> BreakPlayback:
        ids = []
        for r in replies:
            if r.queued and not r.breaking:
                r.breaking = True
                ids.append(r.id)
        return BreakPlayback(tuple(ids))

    def _reply_text(self, ev: ReplyText) -> list[Command]:
        r = self.replies.get(ev.reply_id)
        if r is None or r.done:
            return []
        r.text = ev.text.strip()
        r.tool_calls = ev.tool_calls
        if not r.held:
            r.turn.agent_full = r.text
            r.turn.tool_calls = list(ev.tool_calls)
            if r is self._current:
                self._remember(r)
        return []

    def _started(self, rid: int, t: float, audible: float) -> list[Command]:
        r = self.replies.get(rid)
        if r is None:
            return []
        self._mark(r, tm.PLAYBACK_START, t)
        self._mark(r, tm.FIRST_AUDIBLE, audible)
        r.audible = True
        if r is self._current:
            return [FeedMachine(turns.AgentSpeaking(audible))]
        return []

    def _played(self, ev: ReplyPlayed) -> list[Command]:
        r = self.replies.get(ev.reply_id)
        if r is None or r.done:
            return []
        r.done = True
        turn = r.turn
        if r.held:
            return []
        turn.agent_audio_end = ev.t
        if r.text is not None:
            turn.agent_full = r.text
        turn.agent = turn.agent_full if ev.complete else heard_text(r.spoken(), ev.heard_ms)[0]
        out: list[Command] = []
        if r is self._current:
            self._current = None
            out.append(FeedMachine(turns.AgentDone(ev.t)))
        out += self._record(turn, "", r)
        if r.tool_calls or r.then_hangup:
            out.append(RunTools(turn, r.tool_calls, r.then_hangup))
        return out

    def _failed(self, ev: ReplyFailed) -> list[Command]:
        r = self.replies.get(ev.reply_id)
        if r is None or r.done:
            return []
        r.done = True
        if r.held:
            if self._spec is r:
                self._spec = None  # the reply made after the turn ends will try again (and apologise)
            return []
        if r is self._current:
            self._current = None
        if self.ended:
            return self._record(r.turn, "failed", r)
        self.failed = True
        self._recorded.add(id(r.turn))  # the apology records it
        return [Apologise(r.turn)]

    # ---- interruptions -----------------------------------------------------------------------------

    def _interrupted(self, t: float, onset: float, *, resumed: bool = False) -> list[Command]:
        """The caller talks while the agent has the floor (the machine's ``BargeIn``, or ``TurnResumed``:
        speech soon after an end of turn, before the reply was audible)."""
        r = self._current
        if (r is None or r.done) and self._waiting is not None:
            return self._take_back(onset, self._waiting)
        if r is None or r.done:
            return self._reopen(onset) if self._ending is not None else []
        if not r.audible:
            return self._take_back(onset, r)
        if resumed:
            return []  # already audible: only a barge-in (with its longer minimum speech) stops it
        r.barge = (onset, t)
        r.turn.barge_in = True
        self._current = None
        return [CancelReply(r.id), self._break(r)]

    def _take_back(self, onset: float, r: Reply) -> list[Command]:
        """The caller went on before hearing anything of ``r``: cancel it silently; if it answered the last
        caller turn, that turn continues (its words so far are kept)."""
        self._current = None
        out: list[Command] = [CancelReply(r.id)]
        if r.queued:
            out.append(self._break(r))  # flushes what is queued; heard ms come back in BreakDone
        else:
            r.done = True
        turn = r.turn
        if r.answers is None or turn.index == 0 or self._caller is not None or turn.caller.startswith("[DTMF"):
            if not r.queued:
                out += self._record(turn, "superseded", r)
            return out
        if r.in_memory:
            self._forget_last("assistant")
            r.in_memory = False
        self._forget_last("user")
        self._recorded.add(id(r))  # this reply is not the turn's record
        self._ending = turn
        return [*out, *self._reopen(onset)]

    def _reopen(self, onset: float) -> list[Command]:
        """The turn that just ended goes on: its end of turn is taken back."""
        turn, self._ending = self._ending, None
        self._hold, self._waiting = False, None
        if turn is None:
            return []
        out = self._drop_speculation()
        turn.resumed += 1
        if self._final_pending:
            self._stale_finals += 1
            self._final_pending = False
        # STT hears the whole turn again from its first word: a fragment transcribed on its own loses words
        # ("Tues-" / "-day, please" came back as "two." / "stay"), and the new final covers all of it
        self._parts = []
        onset = self._onset.get(id(turn), onset)
        turn.caller = ""
        turn.agent = turn.agent_full = ""
        turn.timings = tm.TurnTimings()
        turn.endpoint_reason = ""
        turn.speculative = False
        self._caller = turn
        return [*out, SttOpen(onset)]

    def _forget_last(self, role: str) -> None:
        msgs = self.memory.messages
        if msgs and msgs[-1].role == role:
            msgs.pop()

    def _broken(self, ev: BreakDone) -> list[Command]:
        out: list[Command] = []
        for rid, heard in ev.heard_ms.items():
            r = self.replies.get(rid)
            if r is None:
                continue
            r.done = True
            spoken = r.spoken()
            turn = r.turn
            if r.queued:
                turn.agent_audio_end = ev.stopped or ev.written
            said, _complete = heard_text(spoken, heard)
            if r.barge is not None:
                turn.agent = said
                if r.text is None:
                    turn.agent_full = " ".join(s.text for s in spoken).strip()
                if r.in_memory:
                    self._forget_last("assistant")
                    r.in_memory = False
                self.memory.add_interrupted(spoken, heard)
                onset, detected = r.barge
                turn.barge = tm.BargeInTimings(onset, detected, ev.written, ev.stopped, heard, agent_silent=ev.stopped)
                out += self._record(turn, "", r)
                self._cut = _resumable(r, spoken, heard)
            elif id(r) not in self._recorded:
                # superseded or taken back while queued: only what reached the caller counts
                if r.in_memory:
                    self._forget_last("assistant")
                    r.in_memory = False
                    if said:
                        self.memory.add_assistant(said)
                turn.agent = said
                if not turn.agent_full:
                    turn.agent_full = " ".join(s.text for s in spoken).strip()
                out += self._record(turn, "superseded", r)
        if self._current is None or self._current.done:
            out.append(FeedMachine(turns.AgentDone(ev.t)))
        return out

    def stop_current(self, t: float) -> list[Command]:
        """Stop the reply that has the floor (a key press): a barge-in if it was audible, silently if not."""
        r = self._current
        if r is None or r.done:
            return []
        if r.audible:
            return self._interrupted(t, t)
        self._current = None
        if r.queued:
            return [CancelReply(r.id), self._break(r)]
        r.done = True
        return [CancelReply(r.id), *self._record(r.turn, "superseded", r)]

    def _dtmf(self, t: float, digits: str) -> list[Command]:
        out = self.stop_current(t)
        turn = self.new_turn()
        turn.caller = f"[DTMF {digits}]"
        for stage in (tm.SPEECH_END, tm.ENDPOINT, tm.STT_FINAL):
            turn.timings.mark(stage, t)
        self.memory.add_user(turn.caller)
        return [*out, *self._start(t, turn, messages=tuple(self.memory.for_llm()), answers=turn.caller)]

    # ---- the end -----------------------------------------------------------------------------------

    def _call_ended(self, ev: CallEnded) -> list[Command]:
        self.ended = True
        out: list[Command] = []
        for r in list(self.replies.values()):
            if r.done or r.held:
                continue
            r.done = True
            if r.turn.index == 0 or id(r) in self._recorded:
                continue
            heard = ev.heard_ms.get(r.id, 0.0)
            if r.text is not None:
                r.turn.agent_full = r.text
            elif not r.turn.agent_full:
                r.turn.agent_full = " ".join(s.text for s in r.spoken()).strip()
            r.turn.agent = heard_text(r.spoken(), heard)[0]
            out += self._record(r.turn, "hangup", r)
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.done:  # hung up during a short turn's hold: heard nothing
            waiting.done = True
            out += self._record(waiting.turn, "hangup", waiting)
        turn = self._caller or self._ending
        self._caller = self._ending = None
        if turn is not None and id(turn) not in self._recorded:
            text = " ".join([*self._parts, turn.caller]).strip()
            if text:
                turn.caller = text
                turn.endpoint_reason = turn.endpoint_reason or "hangup"
                out += self._record(turn, "hung up mid-sentence")
            elif turn in self.turns:
                self.turns.remove(turn)
        return out

    def _record(self, turn: TurnRecord, outcome: str, r: Reply | None = None) -> list[Command]:
        if r is not None:
            if id(r) in self._recorded:
                return []
            self._recorded.add(id(r))
        if id(turn) in self._recorded or turn is self._caller:
            return []
        self._recorded.add(id(turn))
        return [RecordTurn(turn, outcome)]


def _resumable(r: Reply, spoken: Sequence[SpokenSegment], heard_ms: float) -> tuple[Reply, str, str] | None:
    """Where to pick ``r`` up again if its interruption was false: from the start of the sentence the caller
    cut into (never mid-sentence), to the end of the reply. None when it was heard to the end."""
    before: list[str] = []
    remaining = heard_ms
    for i, seg in enumerate(spoken):
        if remaining >= seg.audio_ms - 1e-6:
            before.append(seg.text)
            remaining -= seg.audio_ms
            continue
        rest = [s.text for s in spoken[i:]]
        said = " ".join([*before, *rest])
        if r.text is not None and r.text.startswith(said.strip()) and len(r.text) > len(said.strip()):
            rest.append(r.text[len(said.strip()):].strip())  # what the brain said that was not yet voiced
        return r, " ".join(x for x in rest if x).strip(), " ".join(before).strip()
    return None


def heard_of(replies: Sequence[Reply], heard_ms: Mapping[int, float]) -> dict[int, str]:
    """What the caller heard of each reply (for logs and tests)."""
    return {r.id: heard_text(r.spoken(), heard_ms.get(r.id, 0.0))[0] for r in replies}
