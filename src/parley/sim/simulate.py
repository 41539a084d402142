"""``parley simulate``: a scripted caller phones the agent through the fake FreeSWITCH, over real sockets.

Owns: scenario files (YAML), the scripted caller (lines spoken with a local voice other than the agent's,
pauses, waiting for the agent, talking over it at a given offset, DTMF, silence, hangup), and the result:
both sides' transcript, per-turn timings, and a stereo recording (caller left, what the caller heard
right). parley runs exactly as ``parley serve`` runs it: the same bridge, session and providers.

Scenario schema::

    name: receptionist-booking
    description: ...
    caller: {voice: hibari-low}      # hibari-low (default) | espeak | piper | hibari
    conversation: {...}              # optional overrides of the conversation settings (e.g. turn: {...})
    timeout_s: 90
    steps:                           # run in order
      - wait_agent: true             # until the agent has been quiet for quiet_ms (default 500)
      - pause_ms: 300
      - say: "Hi, I'd like to book a cleaning."
      - say: ["My name is", {pause_ms: 600}, "Sarah Johnson"]   # ONE turn with a designed pause inside
      - say: "Sorry, what are your hours?"
        barge_in_at_ms: 900          # start talking 900 ms after the agent's next reply starts playing
      - dtmf: "1"
      - silence_s: 20                # say nothing (the idle prompt and goodbye happen here)
      - hangup: true

A ``say`` list is one caller turn: its text pieces are spoken with the given pauses between their audible
edges (each piece's own leading/trailing silence is cut there, so the pause is the designed one).

The result is measured at the caller's ear too (:mod:`parley.sim.ear`): each scripted turn's true speech
end is its last audible sample, on the session's clock (the media time of the frame it went out in), and
the agent's audio is what FreeSWITCH played to the caller. ``as_dict()`` reports both parley's own figures
and the ear's, and how far apart they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
import uuid as uuidlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from parley import app
from parley.agent.engine import Engine
from parley.agent.realtime import RealtimeSession
from parley.agent.session import CallSession
from parley.audio.pcm import Int16Array
from parley.audio.wav import write_stereo_wav
from parley.config import (
    AudioStreamSettings,
    ConversationSettings,
    EslSettings,
    FreeSwitchSettings,
    PlaybackSettings,
    RecordsSettings,
    Settings,
    apply_env,
    settings_from_mapping,
)
from parley.errors import ConfigError
from parley.freeswitch.stream_token import stream_token
from parley.observe import timings as tm
from parley.observe.metrics import Metrics
from parley.observe.timings import percentiles
from parley.observe.tracing import CallTracer
from parley.providers.base import TTSProvider
from parley.sim.ear import CallerTurnAudio, EarTurn, match_turns, measure_ear, silent_at_ear
from parley.sim.echo_call import free_port
from parley.sim.fake_freeswitch import FakeCall, FakeFreeSwitch
from parley.sim.scripted_caller import PHONE_RATE, Pause, SayPiece, ScriptedCaller

_STEP_KEYS = {"say", "say_ms", "pause_ms", "wait_agent", "quiet_ms", "barge_in_at_ms", "silence_s", "hangup", "dtmf"}


@dataclass(frozen=True, slots=True)
class Step:
    say: str | tuple[SayPiece, ...] | None = None
    say_ms: float | None = None  # cut the line off after this much audio (a caller who hangs up mid-sentence)
    pause_ms: float = 0.0
    wait_agent: bool = False
    quiet_ms: float = 500.0
    barge_in_at_ms: float | None = None
    silence_s: float = 0.0
    hangup: bool = False
    dtmf: str | None = None

    def say_pieces(self) -> tuple[SayPiece, ...]:
        if self.say is None:
            return ()
        return (self.say,) if isinstance(self.say, str) else self.say


def _say(raw: object, where: str) -> str | tuple[SayPiece, ...]:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list) and raw:
        pieces: list[SayPiece] = []
        for item in raw:
            if isinstance(item, str):
                pieces.append(item)
            elif isinstance(item, dict) and set(item) == {"pause_ms"} and isinstance(item["pause_ms"], int | float):
                pieces.append(Pause(float(item["pause_ms"])))
            else:
                raise ConfigError(f"{where}: a say list holds text and {{pause_ms: <ms>}} items, not {item!r}")
        if any(isinstance(p, str) for p in pieces):
            return tuple(pieces)
    raise ConfigError(f"{where}: say must be text or a list of text and {{pause_ms: <ms>}} items")


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    steps: tuple[Step, ...]
    caller_voice: str = "hibari-low"
    conversation: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 120.0


def load_scenario(path: Path | str) -> Scenario:
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"scenario {p}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
        raise ConfigError(f"scenario {p}: needs a mapping with a 'steps' list")
    steps = []
    for i, raw in enumerate(doc["steps"]):
        if not isinstance(raw, dict) or not set(raw) <= _STEP_KEYS:
            raise ConfigError(f"scenario {p}: steps[{i}] must be a mapping of {sorted(_STEP_KEYS)}")
        if "say" in raw:
            raw = {**raw, "say": _say(raw["say"], f"scenario {p}: steps[{i}]")}
        steps.append(Step(**raw))
    caller = doc.get("caller") or {}
    return Scenario(
        name=str(doc.get("name") or p.stem),
        description=str(doc.get("description") or ""),
        steps=tuple(steps),
        caller_voice=str(caller.get("voice", "espeak")),
        conversation=dict(doc.get("conversation") or {}),
        timeout_s=float(doc.get("timeout_s", 120)),
    )


def shipped_scenarios() -> list[Path]:
    folder = Path(__file__).resolve().parent / "scenarios"
    return sorted(folder.glob("*.yaml"))


@dataclass(slots=True)
class SimulationResult:
    scenario: Scenario
    session: CallSession | RealtimeSession  # a pipeline conversation, or a speech-to-speech one
    fake_call: FakeCall
    caller_track: Int16Array  # on the call timeline, 8 kHz
    heard_track: Int16Array  # what the caller heard, at the call's codec rate, sample 0 = ``origin``
    spool_left: int
    commands: list[bytes] = field(default_factory=list)  # every ESL command parley sent
    caller_turns: list[CallerTurnAudio] = field(default_factory=list)  # what the script said, when
    origin: float = 0.0  # the call timeline's sample 0 (the answer), on the session's clock

    def ear(self) -> list[EarTurn]:
        """Each scripted caller turn as the caller experienced it (from the rendered audio)."""
        return measure_ear(self.caller_turns, self.heard_track, self.fake_call.codec_rate, self.origin)

    def as_dict(self) -> dict[str, object]:
        """parley's own figures per session turn (``timings_ms``, ``voice_to_voice_ms``...) with an ``ear``
        block when the turn belongs to a scripted caller turn; at the top, voice-to-voice at the ear
        (``voice_to_voice_ms``), parley's own (``parley_voice_to_voice_ms``), cut-ins, talk-over and how
        far parley's figure is from the ear's (``agreement``)."""
        records = list(self.session.turns)
        turns = [t.as_dict() for t in records]
        ear = self.ear()
        match = match_turns([t.timings.marks.get(tm.SPEECH_END) for t in records], ear)
        primary = {k: max(i for i, m in enumerate(match) if m == k) for k in set(match) if k is not None}
        disagreement: list[float] = []
        for i, (rec, d) in enumerate(zip(records, turns, strict=True)):
            k = match[i]
            d["ear"] = None if k is None else self._ear_block(rec.timings, ear[k], primary[k] == i,
                                                             match.count(k), disagreement)
            if rec.barge is not None:
                d["ear_barge_in"] = self._barge_block(rec.barge, ear)
        v2v = [float(t["voice_to_voice_ms"]) for t in turns if t.get("voice_to_voice_ms") is not None]  # type: ignore[arg-type]
        overhead = [float(t["overhead_ms"]) for t in turns if t.get("overhead_ms") is not None]  # type: ignore[arg-type]
        starts = [v for r in records if (v := r.timings.playback_start_ms) is not None]
        at_ear = [v for e in ear if (v := e.first_audible_ms) is not None]
        barges = [v for e in ear if (v := e.silent_ms) is not None]
        return {
            "scenario": self.scenario.name,
            "turns": turns,
            "voice_to_voice_ms": _pcts(at_ear),  # at the ear: caller's true speech end -> first audible sample
            "parley_voice_to_voice_ms": _pcts(v2v),  # parley's own (its speech end -> its FIRST_AUDIBLE mark)
            "playback_start_ms": _pcts(starts),  # parley's speech end -> PLAYBACK_START (a stage)
            "overhead_ms": percentiles(overhead),
            "cut_ins": sum(e.cut_in for e in ear),
            "talk_over_ms": round(sum(e.talk_over_ms for e in ear if not e.barge_in), 1),
            "talk_over_barge_in_ms": round(sum(e.talk_over_ms for e in ear if e.barge_in), 1),
            "barge_in_silent_at_ear_ms": barges,
            "split_turns": sum(1 for k in primary if match.count(k) > 1),
            "dropped_turns": sum(1 for k in range(len(ear)) if k not in primary),
            "agreement": {"per_turn_ms": disagreement, "max_ms": max(disagreement) if disagreement else None},
            "caller_turns": [e.as_dict(self.origin) for e in ear],
            "greeting": self.session.greeting.turn.agent_full if self.session.greeting else None,
            "hangup_cause": self.fake_call.hangup_cause,
            "usage": [asdict(u) for u in self.session.usage],
            "spool_files_left": self.spool_left,
        }

    def _ear_block(
        self, timings: tm.TurnTimings, e: EarTurn, primary: bool, sharing: int, disagreement: list[float]
    ) -> dict[str, object]:
        """The ear's figures for the caller turn this session turn belongs to. The session turn that
        answered it (the last of the turns it was split into) carries the comparison with parley's own."""
        marks = timings.marks
        parley = timings.voice_to_voice_ms
        block: dict[str, object] = {**e.as_dict(self.origin), "answered_here": primary, "split": sharing > 1}
        if not primary:
            return block
        diff = None if parley is None or e.first_audible_ms is None else round(abs(parley - e.first_audible_ms), 1)
        if diff is not None:
            disagreement.append(diff)
        end, audible = marks.get(tm.SPEECH_END), marks.get(tm.FIRST_AUDIBLE)
        block.update(
            parley_voice_to_voice_ms=parley,
            disagreement_ms=diff,
            # where the disagreement comes from: parley's speech end and first-audible marks vs the ear's
            speech_end_offset_ms=None if end is None else round((end - e.speech_end) * 1000.0, 1),
            first_audible_offset_ms=None if audible is None or e.first_audible is None
            else round((audible - e.first_audible) * 1000.0, 1),
        )
        return block

    def _barge_block(self, barge: tm.BargeInTimings, ear: list[EarTurn]) -> dict[str, object] | None:
        """The caller speech that interrupted this turn's reply (a scripted barge-in, or the caller resuming
        inside a turn): its true onset nearest parley's (within 0.5 s) -> the agent silent at the ear."""
        onsets = [(abs(a - barge.speech_onset), a, e) for e in ear for a, _ in e.stretches]
        near = [x for x in onsets if x[0] <= 0.5]
        if not near:
            return None
        _, onset, e = min(near, key=lambda x: x[0])
        silent = silent_at_ear(self.heard_track, self.fake_call.codec_rate, self.origin, onset)
        return {
            "caller_turn": e.index,
            "scripted": e.barge_in and onset == e.speech_start,
            "onset_to_silent_ms": round((silent - onset) * 1000.0, 1),
            "parley_onset_to_silent_ms": barge.as_dict().get("onset_to_silent_ms"),
            "onset_offset_ms": round((barge.speech_onset - onset) * 1000.0, 1),
        }


def _pcts(values: list[float]) -> dict[str, float | None]:
    """p50/p90/p95 (None when there is nothing) and n."""
    if not values:
        return {"p50": None, "p90": None, "p95": None, "n": 0}
    return {**percentiles(values, (50.0, 90.0, 95.0)), "n": len(values)}


async def run_scenario(
    scenario: Scenario,
    engine: Engine,
    caller_voice: TTSProvider,
    spool: Path,
    *,
    records_url: str | None = None,
    tracer: CallTracer | None = None,
    metrics: Metrics | None = None,
) -> SimulationResult:
    """Run one scenario. Spans go to ``tracer``; without one, to PARLEY_OTLP_ENDPOINT /
    OTEL_EXPORTER_OTLP_ENDPOINT when set (a tracer made here is flushed and closed before returning)."""
    password = secrets.token_urlsafe(24)
    secret = secrets.token_urlsafe(24)
    port = free_port()
    conv = engine.conversation
    if scenario.conversation:
        merged = settings_from_mapping({"conversation": scenario.conversation}, env={}).conversation
        conv = replace(merged, greeting=merged.greeting or engine.conversation.greeting)
        engine = replace(engine, conversation=conv, policy=_policy(merged, engine))
    fs = FakeFreeSwitch(password=password)
    await fs.start()
    resources = contextlib.AsyncExitStack()
    if tracer is None:
        tracer = CallTracer.open(apply_env(Settings(), os.environ).observe)
        resources.push_async_callback(tracer.aclose)
    store = None
    if records_url:
        store = await app.open_records(Settings(records=RecordsSettings(url=records_url)), resources)
    agent = app.ConversationAgent(engine, store, tracer=tracer, metrics=metrics)
    settings = Settings(
        freeswitch=FreeSwitchSettings(
            esl=EslSettings(port=fs.esl_port, password=password),
            audio_stream=AudioStreamSettings(listen_port=port, token_secret=secret),
            playback=PlaybackSettings(spool_dir=str(spool)),
        ),
        conversation=conv,
    )
    running = await app.start(settings, agent)
    call_uuid = str(uuidlib.uuid4())
    try:
        call = await fs.place_call(
            ws_url=f"ws://127.0.0.1:{port}/call/{{uuid}}",
            uuid=call_uuid,
            extra_headers={"Authorization": f"Bearer {stream_token(secret, call_uuid)}"},
            channel_vars={"parley_agent": "true"},
        )
        caller = ScriptedCaller(call, caller_voice)
        try:
            async with asyncio.timeout(scenario.timeout_s):
                await _run_steps(scenario, caller)
        except TimeoutError:
            pass
        if not call.hungup:
            await call.hangup()
        held = running.bridge.calls.get(call_uuid)
        if held is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await held.retired.wait()
    finally:
        await running.close()
        await fs.close()
        await resources.aclose()
    session = agent.sessions[call_uuid]
    heard = call.heard_audio()
    origin = call.answered_at or call.created_at
    return SimulationResult(
        scenario=scenario,
        session=session,
        fake_call=call,
        caller_track=caller.timeline(origin, heard.size),
        heard_track=heard,
        spool_left=await asyncio.to_thread(_count_files, spool),
        commands=list(fs.commands),
        caller_turns=list(caller.turns),
        origin=origin,
    )


def _count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def _policy(conv: ConversationSettings, engine: Engine) -> Any:
    from parley.turns.policy import TurnPolicy

    return TurnPolicy(**dict(conv.turn)) if conv.turn else engine.policy  # type: ignore[arg-type]


async def _run_steps(scenario: Scenario, caller: ScriptedCaller) -> None:
    for step in scenario.steps:
        if step.wait_agent:
            await asyncio.sleep(0.3)  # let a reply that is still being prepared start
            await caller.wait_agent_quiet(step.quiet_ms)
        if step.pause_ms:
            await asyncio.sleep(step.pause_ms / 1000)
        if step.say is not None:
            if step.barge_in_at_ms is not None:
                started = await caller.wait_agent_starts(time.monotonic() - 0.05)
                if started is not None:
                    await asyncio.sleep(max(0.0, started + step.barge_in_at_ms / 1000 - time.monotonic()))
            await caller.say(step.say, step.say_ms, barge_in=step.barge_in_at_ms is not None)
        if step.dtmf:
            for digit in step.dtmf:
                await caller.call.send_dtmf(digit)
                await asyncio.sleep(0.15)
        if step.silence_s:
            with contextlib.suppress(TimeoutError):
                await caller.call.wait_hungup(timeout=step.silence_s)
        if step.hangup:
            await caller.call.hangup()
        if caller.call.hungup:
            return


def write_recording(result: SimulationResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_stereo_wav(path, result.caller_track, result.heard_track, PHONE_RATE)
