"""Fault matrix, media rows: the mod_audio_stream WebSocket and its token, and whether the call record tells
what happened.

parley runs as ``parley serve`` wires it (``app.start`` with the real :class:`~parley.app.ConversationAgent`,
a real SQLite record store and the apology rendered at start) with offline fakes for the providers (an STT that
never hears words, a silent VAD, a tone for a voice); FreeSWITCH is the fake one, whose mod_audio_stream side
reproduces the recorded fault behaviour (checked first, below: ``ws-401-refused``, ``ws-reset-midcall``). Each
row injects one fault and asserts what the caller got (the stream restarted and the conversation went on, or
the apology and then the fallback transfer or a hangup), the record read back from SQLite (outcome, hangup
cause, failed, error) and that what was recorded before the fault is still there (the call row's start fields,
one row per call, the digits pressed).

"Longest silence" in a row: for a restart, how long the agent could not hear the caller (the fault to the first
frame of the new stream); for an apology row, the fault (or the call's start) to the first apology audio. Both
are measured on the fake's clock and are outcomes, not asserted timings (goal <= 2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import uuid as uuidlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import websockets

from parley import app
from parley.agent.engine import Engine
from parley.audio.pcm import Int16Array
from parley.config import (
    AudioStreamSettings,
    ConversationSettings,
    DialplanSettings,
    EslSettings,
    FreeSwitchSettings,
    PlaybackSettings,
    RecordsSettings,
    Settings,
)
from parley.freeswitch import esl_protocol as esl
from parley.freeswitch.stream_token import stream_token
from parley.observe.records import CallRecord, RecordStore
from parley.providers.base import (
    AudioChunk,
    Lifecycle,
    LLMEvent,
    LLMRequests,
    Message,
    STTEvent,
    ToolSpec,
    TTSEvent,
    TTSRequests,
    UsageSink,
)
from parley.sim.echo_call import free_port
from parley.sim.fake_freeswitch import FakeCall, FakeFreeSwitch
from parley.turns.policy import TurnPolicy
from parley.turns.vad import VadResult

RecordRow = Callable[..., None]  # the fault_row fixture of tests/faults/conftest.py
FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "freeswitch"
FALLBACK = "operator XML default"
CALLER = "+15550001111"


# ---- offline providers -----------------------------------------------------------------------------------


class _Stream:
    """An STT stream that hears no words (nothing the test needs a transcript for)."""

    def __init__(self) -> None:
        self._closed = asyncio.Event()

    async def send_audio(self, samples: Int16Array) -> None:
        return None

    def pause_hint(self) -> None:
        return None

    def speech_resumed(self) -> None:
        return None

    async def finalize(self) -> None:
        return None

    async def close(self) -> None:
        self._closed.set()

    def __aiter__(self) -> AsyncIterator[STTEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[STTEvent]:
        await self._closed.wait()
        return
        yield  # pragma: no cover


@dataclass
class _Ears(Lifecycle):
    """STT, optionally failing to open."""

    stt_error: Exception | None = None
    name: str = "fake"

    async def open(self, *, sample_rate: int, language: str | None = None) -> _Stream:
        if self.stt_error is not None:
            raise self.stt_error
        return _Stream()


@dataclass
class _Providers(Lifecycle, LLMRequests, TTSRequests):
    """An LLM that is never asked, and a tone for a voice."""

    name: str = "fake"
    sample_rate: int = 8000

    async def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = (), *, on_cancel: UsageSink | None = None
    ) -> AsyncGenerator[LLMEvent, None]:
        raise AssertionError("no caller words, so no LLM call")
        yield  # pragma: no cover

    async def synthesize(self, text: str, *, on_cancel: UsageSink | None = None) -> AsyncGenerator[TTSEvent, None]:
        t = np.arange(int(0.6 * 8000)) / 8000
        yield AudioChunk((4000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16), 8000, text)


class _SilentVad:
    async def aprocess(self, samples: Int16Array) -> VadResult:
        return VadResult(False, 0.0)


# ---- the rig ----------------------------------------------------------------------------------------------


@dataclass
class Rig:
    fs: FakeFreeSwitch
    running: app.Running
    agent: app.ConversationAgent
    store: RecordStore
    secret: str
    ws_port: int
    stack: contextlib.AsyncExitStack
    faults_at: dict[str, float] = field(default_factory=dict)

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/call/{{uuid}}"

    async def place(self, *, token: str | None = None, uuid: str | None = None) -> FakeCall:
        uuid = uuid or str(uuidlib.uuid4())
        token = stream_token(self.secret, uuid) if token is None else token
        return await self.fs.place_call(
            ws_url=self.url(), uuid=uuid, caller_number=CALLER, caller_audio=np.zeros(8000 * 30, np.int16),
            extra_headers={"Authorization": f"Bearer {token}"}, channel_vars={"parley_agent": "true"},
        )

    async def until(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.01)

    def frames(self, call: FakeCall) -> int:
        session = self.agent.sessions.get(call.uuid)
        return len(session.frame_lag_ms) if session is not None else 0

    def commands(self, prefix: str) -> list[bytes]:
        return [c for c in self.fs.commands if c.startswith(prefix.encode())]

    async def record(self, call: FakeCall) -> CallRecord:
        """The call's row, read back from SQLite once it is finished (exactly one row per call)."""
        found: list[CallRecord] = []

        async def finished() -> bool:
            await self.store.flush(timeout=2)
            found.clear()
            for summary in await self.store.list_calls(limit=100):
                detail = await self.store.get_call(summary.id)
                if detail is not None and detail.call.fs_uuid == call.uuid:
                    found.append(detail.call)
            return len(found) == 1 and found[0].status != "in_progress"

        async with asyncio.timeout(15):
            while not await finished():
                await asyncio.sleep(0.05)
        return found[0]

    async def wait_gone(self, call: FakeCall) -> None:
        await self.until(lambda: call.uuid not in self.running.bridge.calls, timeout=20)


@contextlib.asynccontextmanager
async def rig_for(tmp_path: Path, *, stt_error: Exception | None = None, public_url: str = "",
                  fallback: str = FALLBACK) -> AsyncIterator[Rig]:
    password, secret = secrets.token_urlsafe(18), secrets.token_urlsafe(24)
    fs = FakeFreeSwitch(password=password)
    await fs.start()
    stack = contextlib.AsyncExitStack()
    store = await app.open_records(Settings(records=RecordsSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")),
                                   stack)
    assert store is not None
    port = free_port()
    providers = _Providers()
    conv = ConversationSettings(greeting="", apology="Sorry, we have a technical problem.")
    engine = Engine(
        stt=_Ears(stt_error), llm=providers, tts=providers, policy=TurnPolicy(), conversation=conv,  # type: ignore[arg-type]
        vad_factory=lambda rate: _SilentVad(),  # type: ignore[arg-type,return-value]
        emergency_tts=providers,  # type: ignore[arg-type]
    )
    agent = app.ConversationAgent(engine, store)
    settings = Settings(
        freeswitch=FreeSwitchSettings(
            esl=EslSettings(port=fs.esl_port, password=password, reconnect_initial_s=0.05, reconnect_max_s=0.2),
            audio_stream=AudioStreamSettings(
                listen_port=port, token_secret=secret, public_url=public_url, unidentified_timeout_s=1.0,
                restart_attempts=2, restart_backoff_s=0.05, stall_timeout_s=0.5,
            ),
            playback=PlaybackSettings(spool_dir=str(tmp_path / "spool")),
            dialplan=DialplanSettings(fallback_extension=fallback),
        ),
        conversation=conv,
    )
    running = await app.start(settings, agent, apology=await app.render_apology(engine))
    try:
        yield Rig(fs, running, agent, store, secret, port, stack)
    finally:
        await running.close()
        await fs.close()
        await stack.aclose()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with rig_for(tmp_path) as r:
        yield r


def apology_heard(call: FakeCall) -> float | None:
    """When the caller started hearing parley's apology (the only thing these agents play), else None."""
    starts = [p.started_at for p in call.playbacks if p.started_at is not None and p.status == "done"]
    return min(starts) if starts else None


def _recorded_error(name: str) -> dict[str, object]:
    """The message of the first ``mod_audio_stream::error`` in a recording's ESL bytes (as FreeSWITCH sent it)."""
    for msg in esl.parse_stream((FIXTURES / f"{name}.esl-in.bin").read_bytes()):
        if isinstance(msg, esl.Event) and msg.subclass == "mod_audio_stream::error":
            message = json.loads(msg.body or "")["message"]
            assert isinstance(message, dict)
            return message
    raise AssertionError(f"no mod_audio_stream::error in {name}")


# ---- the fake reproduces the recordings these rows rely on ----------------------------------------------


async def test_fake_refused_upgrade_and_reset_match_the_recordings(rig: Rig) -> None:
    calls = rig.running.bridge.calls
    refused = await rig.place(token="0" * 32)  # our server answers 401
    await rig.until(lambda: refused.uuid in calls)
    held = calls[refused.uuid]
    await rig.until(lambda: bool(held.stream_errors))
    recorded = _recorded_error("ws-401-refused")
    assert held.stream_errors == [(recorded["code"], recorded["error"])] == [(6, "WebSocket upgrade failed")]
    ok = await rig.place()
    await rig.until(lambda: rig.frames(ok) > 5)
    live = calls[ok.uuid]
    ok.media.reset_stream()
    await rig.until(lambda: bool(live.stream_errors))
    recorded = _recorded_error("ws-reset-midcall")
    assert live.stream_errors[0] == (recorded["code"], recorded["error"])
    assert ok.ws_close is None  # no close frame either way, so no ::disconnect (recorded)
    await ok.hangup()


# ---- rows: the stream fails, the call goes on --------------------------------------------------------------


async def _restart_row(rig: Rig, fault_row: RecordRow, fault: str, inject: Callable[[FakeCall], object],
                       outcome: str = "stream restarted, call went on") -> None:
    call = await rig.place()
    await rig.until(lambda: rig.frames(call) > 10)
    await call.send_dtmf("5")
    await rig.until(lambda: "5" in rig.running.bridge.calls[call.uuid].dtmf_digits)
    first = call.audio_stream
    t_fault = rig.fs.clock()
    result = inject(call)
    if asyncio.iscoroutine(result):
        await result
    await rig.until(lambda: call.audio_stream is not first and call.audio_stream is not None
                    and call.audio_stream.first_frame_at is not None)
    new = call.audio_stream
    assert new is not None and new.first_frame_at is not None
    deaf = new.first_frame_at - t_fault
    before = rig.frames(call)
    await rig.until(lambda: rig.frames(call) > before + 10)  # the same conversation hears the new stream
    assert not call.hungup and call.uuid in rig.running.bridge.calls
    assert rig.agent.sessions[call.uuid] is not None and not apology_heard(call)
    await call.hangup("NORMAL_CLEARING")
    record = await rig.record(call)
    assert (record.status, record.outcome, record.hangup_by) == ("completed", "caller_hangup", "caller")
    assert (record.hangup_cause, record.failed, record.error) == ("NORMAL_CLEARING", False, None)
    assert record.caller == CALLER and record.providers and record.dtmf == "5"  # recorded before the fault
    fault_row(fault, outcome, longest_silence_s=deaf,
              record=f"{record.status} {record.outcome}")


async def test_media_ws_reset_1006_restarts_the_stream(rig: Rig, fault_row: RecordRow) -> None:
    await _restart_row(rig, fault_row, "media WS reset (1006) mid-call", lambda c: c.media.reset_stream())
    assert len(rig.commands("api uuid_audio_stream ")) >= 1 and rig.running.bridge.stats.stream_restarts == 1


async def test_media_ws_replaced_by_a_second_stream_keeps_the_conversation(rig: Rig, fault_row: RecordRow) -> None:
    async def second(call: FakeCall) -> None:
        await call.media.second_stream(rig.url().replace("{uuid}", call.uuid), call.variables)

    await _restart_row(rig, fault_row, "media WS replaced (second stream)", second, "new stream took over, call went on")
    stats = rig.running.bridge.stats
    assert stats.streams_replaced == 1 and stats.stream_restarts == 0  # nothing to restart: the new one took over


async def test_media_ws_silent_with_the_connection_open_is_restarted(rig: Rig, fault_row: RecordRow) -> None:
    await _restart_row(rig, fault_row, "media WS silent (no frames, open)", lambda c: c.media.silence_stream())
    assert rig.running.bridge.stats.streams_stalled == 1
    starts = rig.commands("api uuid_audio_stream ")
    assert any(b" stop" in c for c in starts) and any(b" start " in c for c in starts)  # stop the dead bug first


async def test_media_ws_garbage_flood_is_closed_and_restarted(rig: Rig, fault_row: RecordRow) -> None:
    await _restart_row(rig, fault_row, "media WS flooded (garbage frames)", lambda c: c.media.flood_stream(400))
    assert rig.running.server.stats.flood_closed == 1


# ---- rows: tokens --------------------------------------------------------------------------------------


async def _refused_row(rig: Rig, fault_row: RecordRow, fault: str, token: str) -> None:
    t0 = rig.fs.clock()
    call = await rig.place(token=token)
    await rig.until(lambda: apology_heard(call) is not None and bool(rig.commands(f"api uuid_transfer {call.uuid}")))
    heard = apology_heard(call)
    assert heard is not None
    assert rig.commands(f"api uuid_transfer {call.uuid} operator XML default")
    assert len(call.streams) == 1  # the one the dialplan started: never retried with the same token
    assert not rig.commands(f"api uuid_audio_stream {call.uuid} start")
    assert rig.running.bridge.stats.streams_rejected == 1  # parley_streams_rejected_total
    record = await rig.record(call)
    assert (record.status, record.outcome, record.failed) == ("failed", "transferred", True)
    assert record.error is not None and "refused (bad token)" in record.error and record.caller == CALLER
    await call.hangup()
    fault_row(fault, "apology, then transfer to fallback", longest_silence_s=heard - t0,
              record=f"failed {record.outcome}")


async def test_wrong_token_goes_to_the_fallback_at_once(rig: Rig, fault_row: RecordRow) -> None:
    await _refused_row(rig, fault_row, "stream token wrong", "0123456789abcdef" * 2)


async def test_expired_token_goes_to_the_fallback_at_once(rig: Rig, fault_row: RecordRow) -> None:
    uuid = str(uuidlib.uuid4())  # FreeSWITCH still has the secret parley rotated away from
    await _refused_row(rig, fault_row, "stream token expired (old secret)", stream_token("an-old-secret-value", uuid))


async def test_replayed_token_is_refused_and_the_live_call_is_untouched(rig: Rig, fault_row: RecordRow) -> None:
    ended = await rig.place()
    await rig.until(lambda: rig.frames(ended) > 5)
    await ended.hangup()
    await rig.wait_gone(ended)
    live = await rig.place()
    await rig.until(lambda: rig.frames(live) > 5)
    stolen = stream_token(rig.secret, ended.uuid)
    codes = []
    for target in (ended.uuid, live.uuid):  # the old call's token, replayed after it ended and on a live call
        url = f"ws://127.0.0.1:{rig.ws_port}/call/{target}"
        try:
            async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {stolen}"}) as ws:
                with contextlib.suppress(websockets.ConnectionClosed):
                    async with asyncio.timeout(5):
                        await ws.recv()
                codes.append(ws.close_code)
        except websockets.InvalidStatus as exc:
            codes.append(exc.response.status_code)
    assert codes == [1008, 401]  # ended call: FreeSWITCH does not know it; live call: not its token
    before = rig.frames(live)
    await rig.until(lambda: rig.frames(live) > before + 10)
    assert rig.running.bridge.stats.streams_rejected == 2 and rig.running.bridge.stats.streams_replaced == 0
    await live.hangup()
    record = await rig.record(live)
    assert (record.status, record.outcome, record.hangup_cause) == ("completed", "caller_hangup", "NORMAL_CLEARING")
    fault_row("stream token replayed (ended/other call)", "refused; live call untouched", longest_silence_s=0.0,
              record=f"{record.status} {record.outcome}")


# ---- rows: the record tells the truth -----------------------------------------------------------------------


async def test_agent_failure_is_recorded_as_failed_with_its_error(tmp_path: Path, fault_row: RecordRow) -> None:
    async with rig_for(tmp_path, stt_error=RuntimeError("stt exploded"), fallback="") as rig:
        t0 = rig.fs.clock()
        call = await rig.place()
        await call.wait_hungup(timeout=20)
        heard = apology_heard(call)
        assert heard is not None and call.hangup_cause == "TEMPORARY_FAILURE"
        record = await rig.record(call)
        assert (record.status, record.outcome, record.hangup_by, record.failed) == (
            "failed", "agent_hangup", "agent", True)
        assert record.hangup_cause == "TEMPORARY_FAILURE"
        assert record.error is not None and "RuntimeError: stt exploded" in record.error
        assert record.caller == CALLER
        fault_row("agent failure (exception)", "apology, then hangup", longest_silence_s=heard - t0,
                  record=f"failed {record.outcome}")


async def test_stream_lost_for_good_is_recorded_as_failed_and_transferred(tmp_path: Path, fault_row: RecordRow) -> None:
    dead = f"ws://127.0.0.1:{free_port()}"  # restarts dial here: every one is refused
    async with rig_for(tmp_path, public_url=dead) as rig:
        call = await rig.place()
        await rig.until(lambda: rig.frames(call) > 5)
        await call.send_dtmf("7")
        await rig.until(lambda: "7" in rig.running.bridge.calls[call.uuid].dtmf_digits)
        t_fault = rig.fs.clock()
        call.media.reset_stream()
        await rig.until(lambda: bool(rig.commands(f"api uuid_transfer {call.uuid}")), timeout=20)
        heard = apology_heard(call)
        assert heard is not None and not call.hungup
        assert len(rig.commands(f"api uuid_audio_stream {call.uuid} start")) == 2  # restart_attempts, then gave up
        record = await rig.record(call)
        assert (record.status, record.outcome, record.failed) == ("failed", "transferred", True)
        assert record.error is not None and record.error.startswith("media stream lost")
        assert record.dtmf == "7" and record.caller == CALLER
        await call.hangup()
        fault_row("media stream lost for good", "2 restarts, apology, transfer", longest_silence_s=heard - t_fault,
                  record=f"failed {record.outcome}")


async def test_stream_closing_before_the_hangup_event_keeps_the_cause(rig: Rig, fault_row: RecordRow) -> None:
    call = await rig.place()
    await rig.until(lambda: rig.frames(call) > 5)
    call.media.stop(None)  # FreeSWITCH closes the socket first (recorded: up to ~20 ms before CHANNEL_HANGUP)
    await asyncio.sleep(0.05)
    await call.hangup("USER_BUSY")
    record = await rig.record(call)
    assert (record.hangup_cause, record.outcome, record.status, record.failed) == (
        "USER_BUSY", "caller_hangup", "completed", False)
    assert not rig.commands(f"api uuid_kill {call.uuid}") and not apology_heard(call)
    fault_row("stream closed 50 ms before the hangup", "clean caller hangup", longest_silence_s=None,
              record=f"{record.status} {record.hangup_cause}")


def test_deep_json_text_frame_is_garbage_not_a_crash() -> None:
    from parley.freeswitch.audio_stream import AudioStream, json_depth

    deep = "[" * 100_000 + "]" * 100_000
    assert json_depth(deep) == 100_000
    assert AudioStream._json_object(deep) is None
    assert AudioStream._json_object('{"n": ' + "9" * 5000 + "}") is None
    nested = '{"uuid": "x", "a": [[{"b": "]]]"}]]}'
    assert AudioStream._json_object(nested) == {"uuid": "x", "a": [[{"b": "]]]"}]]}


async def test_frame_numbers_run_on_across_a_restarted_stream(rig: Rig) -> None:
    """The session places caller audio in time by seq: frames of a new stream must not start again at 0
    (the session's frame lag, clock minus the media time seq says, would jump by the call's age)."""
    call = await rig.place()
    await rig.until(lambda: rig.frames(call) > 50)  # 1 s in: a seq restarting at 0 would be ~1000 ms late
    session = rig.agent.sessions[call.uuid]
    first = call.audio_stream
    call.media.reset_stream()
    await rig.until(lambda: call.audio_stream is not first and call.audio_stream is not None
                    and call.audio_stream.frames_sent > 20)
    before = len(session.frame_lag_ms)
    await rig.until(lambda: len(session.frame_lag_ms) > before + 20)
    after = session.frame_lag_ms[before:]
    assert max(after) < 500, max(after)  # a generous bound on an outcome; a reset seq gives >= 1000 ms
    await call.hangup()
