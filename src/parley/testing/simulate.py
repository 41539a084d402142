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
      - say: "Sorry, what are your hours?"
        barge_in_at_ms: 900          # start talking 900 ms after the agent's next reply starts playing
      - dtmf: "1"
      - silence_s: 20                # say nothing (the idle prompt and goodbye happen here)
      - hangup: true
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

import numpy as np
import yaml

from parley import app
from parley.agent.engine import Engine
from parley.agent.session import CallSession
from parley.audio.pcm import Int16Array
from parley.audio.resample import resample
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
from parley.observe.metrics import Metrics
from parley.observe.timings import percentiles
from parley.observe.tracing import CallTracer
from parley.providers.base import AudioChunk, TTSProvider
from parley.testing.echo_call import free_port
from parley.testing.fake_freeswitch import FakeCall, FakeFreeSwitch

PHONE_RATE = 8000
_STEP_KEYS = {"say", "say_ms", "pause_ms", "wait_agent", "quiet_ms", "barge_in_at_ms", "silence_s", "hangup", "dtmf"}


@dataclass(frozen=True, slots=True)
class Step:
    say: str | None = None
    say_ms: float | None = None  # cut the line off after this much audio (a caller who hangs up mid-sentence)
    pause_ms: float = 0.0
    wait_agent: bool = False
    quiet_ms: float = 500.0
    barge_in_at_ms: float | None = None
    silence_s: float = 0.0
    hangup: bool = False
    dtmf: str | None = None


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
    session: CallSession
    fake_call: FakeCall
    caller_track: Int16Array  # on the call timeline, 8 kHz
    heard_track: Int16Array
    spool_left: int
    commands: list[bytes] = field(default_factory=list)  # every ESL command parley sent

    def as_dict(self) -> dict[str, object]:
        turns = [t.as_dict() for t in self.session.turns]
        v2v = [float(t["voice_to_voice_ms"]) for t in turns if t.get("voice_to_voice_ms") is not None]  # type: ignore[arg-type]
        overhead = [float(t["overhead_ms"]) for t in turns if t.get("overhead_ms") is not None]  # type: ignore[arg-type]
        return {
            "scenario": self.scenario.name,
            "turns": turns,
            "voice_to_voice_ms": percentiles(v2v),
            "overhead_ms": percentiles(overhead),
            "greeting": self.session.greeting.turn.agent_full if self.session.greeting else None,
            "hangup_cause": self.session.call.hangup_cause,
            "usage": [asdict(u) for u in self.session.usage],
            "spool_files_left": self.spool_left,
        }


class ScriptedCaller:
    """Speaks into the fake call and watches what FreeSWITCH plays to know when the agent talks."""

    def __init__(self, call: FakeCall, voice: TTSProvider) -> None:
        self.call = call
        self.voice = voice
        self.track: list[tuple[float, Int16Array]] = []

    def agent_active(self) -> bool:
        playing = any(p.started_at is not None and p.stopped_at is None for p in self.call.playbacks)
        queued = any(p.started_at is None and not p.flushed and p.status is None for p in self.call.playbacks)
        return playing or queued

    async def wait_agent_quiet(self, quiet_ms: float, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            if self.agent_active():
                quiet_since = None
            else:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= quiet_ms / 1000:
                    return
            await asyncio.sleep(0.02)

    async def wait_agent_starts(self, after: float, timeout: float = 30.0) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            starts = [p.started_at for p in self.call.playbacks if p.started_at is not None and p.started_at > after]
            if starts:
                return min(starts)
            await asyncio.sleep(0.01)
        return None

    async def say(self, text: str, cut_ms: float | None = None) -> None:
        pieces: list[Int16Array] = []
        rate = self.voice.sample_rate
        async for ev in self.voice.synthesize(text):
            if isinstance(ev, AudioChunk):
                pieces.append(ev.samples)
                rate = ev.sample_rate
        audio = resample(np.concatenate(pieces) if pieces else np.zeros(0, np.int16), rate, PHONE_RATE)
        if cut_ms is not None:
            audio = audio[: int(cut_ms * PHONE_RATE / 1000)]
        self.track.append((time.monotonic(), audio))
        self.call.say(audio, PHONE_RATE)
        await asyncio.sleep(audio.size / PHONE_RATE)

    def timeline(self, origin: float, n: int) -> Int16Array:
        out = np.zeros(n, dtype=np.int32)
        for t, audio in self.track:
            i = max(0, int((t - origin) * PHONE_RATE))
            j = min(n, i + audio.size)
            if j > i:
                out[i:j] += audio[: j - i]
        return np.clip(out, -32768, 32767).astype(np.int16)


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
            await caller.say(step.say, step.say_ms)
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
