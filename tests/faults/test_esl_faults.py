"""Fault matrix, ESL rows: parley (``app.start``, the echo agent) answers a call on the fake FreeSWITCH
through a TCP fault proxy on the ESL port; each test breaks ESL one way and checks what the caller got.

Every row asserts: the caller's call went on after ESL came back (their next utterance was echoed in
full) or was ended cleanly; no command that must run once (sendmsg playback, uuid_kill, uuid_transfer...)
reached FreeSWITCH twice; the ESL supervisor is still running. The longest silence the caller heard while
the call was up comes from ``tests/faults/silence.py`` (the fake's playback records + the caller's script).
Timings are short on purpose (1.5 s greeting, 10-500 ms backoffs); where a real outage would take too
long the row says how it was compressed.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from silence import Interval, call_silence  # tests/faults/silence.py (pytest puts tests/faults on sys.path)

from parley import app
from parley.agent.echo import EchoAgent
from parley.audio.pcm import Int16Array
from parley.audio.wav import write_wav_atomic
from parley.config import (
    AgentSettings,
    AudioStreamSettings,
    EslSettings,
    FreeSwitchSettings,
    PlaybackSettings,
    Settings,
)
from parley.freeswitch.call import Call
from parley.freeswitch.esl_client import EslClient, command_is_repeatable
from parley.freeswitch.stream_token import stream_token
from parley.sim.echo_call import free_port, packaged_wav
from parley.sim.fake_freeswitch import FakeCall, FakeFreeSwitch
from testkit.fault_proxy import FaultProxy

RecordRow = Callable[..., None]  # the fault_row fixture of tests/faults/conftest.py

GREETING_S = 1.5
SILENCE_GOAL_S = 2.0


@dataclass(slots=True)
class Rig:
    fs: FakeFreeSwitch
    proxy: FaultProxy
    agent: EchoAgent
    settings: Settings
    running: app.Running | None = None
    speech: list[Interval] = field(default_factory=list)
    held: dict[str, Call] = field(default_factory=dict)  # parley's Call objects, kept after they retire
    utterance: tuple[Int16Array, int] = field(default_factory=lambda: packaged_wav("caller_1.wav"))

    async def start(self) -> app.Running:
        self.running = await app.start(self.settings, self.agent)
        return self.running

    @property
    def esl(self) -> EslClient:
        assert self.running is not None
        return self.running.esl

    async def place_call(self) -> FakeCall:
        call_uuid = str(uuidlib.uuid4())
        token = stream_token(self.settings.freeswitch.audio_stream.token_secret, call_uuid)
        port = self.settings.freeswitch.audio_stream.listen_port
        call = await self.fs.place_call(
            ws_url=f"ws://127.0.0.1:{port}/call/{{uuid}}", uuid=call_uuid,
            extra_headers={"Authorization": f"Bearer {token}"}, channel_vars={"parley_agent": "true"},
        )
        assert self.running is not None
        bridge = self.running.bridge
        await until(lambda: call_uuid in bridge.calls, 5)
        self.held[call_uuid] = bridge.calls[call_uuid]
        return call

    async def parley_says(self, call: FakeCall) -> str:
        """The hangup cause parley recorded for the call (its Call object's view, once it retired it)."""
        held = self.held[call.uuid]
        await until(held.retired.is_set, 5)
        return f"parley: {held.hangup_cause}"

    def say(self, call: FakeCall) -> Interval:
        """The caller says one utterance (1.3 s) now; returns when it is said, on the fake's clock."""
        samples, rate = self.utterance
        now = self.fs.clock()
        call.say(samples, rate)
        span = (now, now + samples.size / rate)
        self.speech.append(span)
        return span

    async def until_said(self, span: Interval) -> None:
        await asyncio.sleep(max(0.0, span[1] - self.fs.clock()))

    async def agent_quiet(self, call: FakeCall, *, echoes: int, timeout: float = 8.0) -> None:
        """Wait until ``echoes`` caller utterances were echoed and nothing is playing or queued."""

        def quiet() -> bool:
            now = self.fs.clock()
            ids = set(played(call))
            done = all(p.flushed or p.found is False or (p.stopped_at is not None and p.stopped_at <= now)
                       for p in call.playbacks)
            return done and len(ids - {"greeting"}) >= echoes and "greeting" in ids

        await until(quiet, timeout)

    def silence(self, call: FakeCall, end: float | None = None) -> float:
        return call_silence(call.playbacks, self.speech, now=self.fs.clock(),
                            end=end if end is not None else call.hungup_at)

    def assert_nothing_ran_twice(self) -> None:
        once = Counter(c for c in self.fs.commands if not c.startswith(b"auth ") and not command_is_repeatable(c))
        assert once, "no command that must run once was sent at all: the row proves nothing"
        twice = [c[:80] for c, n in once.items() if n > 1]
        assert not twice, f"sent twice: {twice}"


async def until(cond: Callable[[], bool], timeout: float = 8.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, *, start: bool = True, greeting_s: float = GREETING_S, **esl: float) -> AsyncIterator[Rig]:
    samples, rate = packaged_wav("greeting.wav")
    greeting = tmp_path / "greeting.wav"
    write_wav_atomic(greeting, samples[: int(greeting_s * rate)], rate)
    password = secrets.token_urlsafe(24)
    timings: dict[str, float] = {"connect_timeout_s": 1.0, "api_timeout_s": 2.0, "reconnect_initial_s": 0.01,
                                 "reconnect_max_s": 0.25} | esl
    async with FakeFreeSwitch(password=password) as fs, FaultProxy("127.0.0.1", fs.esl_port) as proxy:
        settings = Settings(
            freeswitch=FreeSwitchSettings(
                esl=EslSettings(port=proxy.port, password=password, **timings),  # type: ignore[arg-type]
                audio_stream=AudioStreamSettings(listen_port=free_port(), token_secret=secrets.token_urlsafe(24)),
                playback=PlaybackSettings(spool_dir=str(tmp_path / "spool")),
            ),
            agent=AgentSettings(utterance_silence_ms=600, greeting_wav=str(greeting)),
        )
        r = Rig(fs, proxy, EchoAgent(settings.agent), settings)
        try:
            if start:
                await r.start()
            yield r
        finally:
            if r.running is not None:
                assert r.running.esl.supervising or r.running.esl.stats.state == "closed"
                await r.running.close()


async def talk_through_fault(r: Rig, inject: Callable[[], object], *, at_end_of_utterance: bool = True) -> FakeCall:
    """Greeting, utterance 1 (the fault is injected as it ends: when the agent owes the echo), its echo,
    utterance 2 and its echo (the call went on), hang up. Returns the call."""
    call = await r.place_call()
    await r.agent_quiet(call, echoes=0)
    span = r.say(call)
    if at_end_of_utterance:
        await r.until_said(span)
    result = inject()
    if asyncio.iscoroutine(result):
        await result
    await r.agent_quiet(call, echoes=1)
    await r.until_said(r.say(call))
    await r.agent_quiet(call, echoes=2)
    await asyncio.sleep(0.2)
    await call.hangup()
    return call


def played(call: FakeCall) -> dict[str, list[str | None]]:
    """What the caller got, per utterance id (greeting or echo): the status of each of its playbacks."""
    out: dict[str, list[str | None]] = {}
    for p in call.playbacks:
        if "parley_utterance=" in p.path:
            out.setdefault(p.path.split("parley_utterance=")[1].split(",")[0], []).append(p.status)
    return out


def assert_went_on(r: Rig, call: FakeCall) -> None:
    """The greeting and both echoes were heard to the end; the caller (not parley) hung up."""
    heard = played(call)
    assert len(heard) == 3 and all(s == ["done"] * len(s) for s in heard.values()), heard
    assert call.hangup_cause == "NORMAL_CLEARING"


async def outage(r: Rig, seconds: float) -> None:
    r.proxy.refuse(True)
    r.proxy.reset_all()
    await asyncio.sleep(seconds)
    r.proxy.refuse(False)


# ---- the handshake ----------------------------------------------------------------------------------------


async def test_esl_reset_during_the_handshake_at_start(tmp_path: Path, fault_row: RecordRow) -> None:
    async with rig(tmp_path, start=False) as r:
        r.proxy.reset_handshakes(3, after_up_bytes=1)  # `auth` answered by a TCP RST, three times
        await r.start()  # a failed first connect is not fatal: it keeps trying in the background
        await r.esl.wait_connected(5)
        call = await talk_through_fault(r, lambda: None)
        assert r.proxy.stats.handshake_resets == 3 and r.esl.stats.connect_failures >= 3
        assert_went_on(r, call)
        r.assert_nothing_ran_twice()
        gap = r.silence(call)
        fault_row("ESL reset in the handshake x3 (at start)", "connected on the 4th try, call normal",
                  longest_silence_s=gap, record=await r.parley_says(call))
        assert gap <= SILENCE_GOAL_S


async def test_esl_garbage_during_the_handshake_at_start(tmp_path: Path, fault_row: RecordRow) -> None:
    async with rig(tmp_path, start=False) as r:
        r.proxy.greet_garbage = b"HTTP/1.1 400 Bad Request\r\n\r\n"
        await r.start()
        await until(lambda: r.esl.stats.connect_failures >= 2)
        assert "not a 'Name: value' header" in (r.esl.stats.last_error or "")
        r.proxy.greet_garbage = None
        await r.esl.wait_connected(5)
        call = await talk_through_fault(r, lambda: None)
        assert_went_on(r, call)
        r.assert_nothing_ran_twice()
        gap = r.silence(call)
        fault_row("ESL garbage in the handshake (at start)", "retried until clean, call normal", longest_silence_s=gap,
                  record=await r.parley_says(call))
        assert gap <= SILENCE_GOAL_S


async def test_esl_slow_handshake_at_start(tmp_path: Path, fault_row: RecordRow) -> None:
    async with rig(tmp_path, start=False, connect_timeout_s=3.0) as r:
        r.proxy.delay_s = 0.3  # per chunk each way: auth/request, auth, +OK, event, +OK: ~1.5 s
        began = time.monotonic()
        await r.start()
        took = time.monotonic() - began
        r.proxy.delay_s = 0.0
        call = await talk_through_fault(r, lambda: None)
        assert_went_on(r, call)
        r.assert_nothing_ran_twice()
        assert r.esl.stats.connect_failures == 0
        gap = r.silence(call)
        fault_row("ESL slow handshake (300 ms per chunk)", f"connected after {took:.1f} s, call normal",
                  longest_silence_s=gap, record=await r.parley_says(call))
        assert gap <= SILENCE_GOAL_S


async def test_esl_refused_at_start(tmp_path: Path, fault_row: RecordRow) -> None:
    async with rig(tmp_path, start=False) as r:
        r.proxy.refuse(True)
        await r.start()  # FreeSWITCH not up yet: parley starts anyway and keeps trying
        await until(lambda: r.esl.stats.attempts >= 3)
        r.proxy.refuse(False)
        await r.esl.wait_connected(5)
        call = await talk_through_fault(r, lambda: None)
        assert_went_on(r, call)
        r.assert_nothing_ran_twice()
        gap = r.silence(call)
        fault_row("ESL refused at start", "connected when it listened, call normal",
                  longest_silence_s=gap, record=await r.parley_says(call))
        assert gap <= SILENCE_GOAL_S


# ---- mid-call ---------------------------------------------------------------------------------------------


async def test_esl_reset_mid_call_and_in_the_reconnect_handshake(tmp_path: Path, fault_row: RecordRow) -> None:
    """The bug found on a real FreeSWITCH: a reset during the *re*connect handshake killed the supervisor."""
    async with rig(tmp_path) as r:

        def reset() -> None:
            r.proxy.reset_handshakes(3, after_up_bytes=1)
            r.proxy.reset_all()

        call = await talk_through_fault(r, reset)
        assert r.proxy.stats.handshake_resets == 3 and r.esl.stats.reconnects == 1
        assert_went_on(r, call)
        r.assert_nothing_ran_twice()
        gap = r.silence(call)
        fault_row("ESL reset mid-call + 3 resets in reconnect", "reconnected, call went on",
                  longest_silence_s=gap, record=await r.parley_says(call))
        assert gap <= SILENCE_GOAL_S


async def test_esl_refused_for_a_second_mid_call(tmp_path: Path, fault_row: RecordRow) -> None:
    async with rig(tmp_path) as r:
        call = await talk_through_fault(r, lambda: outage(r, 1.0))
        assert r.esl.stats.reconnects == 1
        assert_went_on(r, call)
        r.assert_nothing_ran_twice()
        gap = r.silence(call)
        fault_row("ESL reset + refused 1 s mid-call", "echo waited for the link, call went on",
                  longest_silence_s=gap, record=await r.parley_says(call))
        assert gap <= SILENCE_GOAL_S


async def test_esl_slow_mid_call(tmp_path: Path, fault_row: RecordRow) -> None:
    async with rig(tmp_path) as r:

        def slow() -> None:
            r.proxy.delay_s = 0.15

        call = await talk_through_fault(r, slow, at_end_of_utterance=False)
        assert r.esl.stats.reconnects == 0
        assert_went_on(r, call)
        r.assert_nothing_ran_twice()
        gap = r.silence(call)
        fault_row("ESL slow mid-call (150 ms per chunk)", "no reconnect, call went on",
                  longest_silence_s=gap, record=await r.parley_says(call))
        assert gap <= SILENCE_GOAL_S


async def test_esl_stalled_for_a_second_mid_call(tmp_path: Path, fault_row: RecordRow) -> None:
    async with rig(tmp_path) as r:

        async def stall() -> None:
            r.proxy.set_stall(True)
            await asyncio.sleep(1.0)
            r.proxy.set_stall(False)

        call = await talk_through_fault(r, stall)
        assert r.esl.stats.stalls == 0  # shorter than a command's timeout: the link is kept
        assert_went_on(r, call)
        r.assert_nothing_ran_twice()
        gap = r.silence(call)
        fault_row("ESL stalled 1 s mid-call", "replies late, no reconnect, call went on",
                  longest_silence_s=gap, record=await r.parley_says(call))
        assert gap <= SILENCE_GOAL_S


async def test_esl_garbage_mid_call(tmp_path: Path, fault_row: RecordRow) -> None:
    async with rig(tmp_path) as r:
        call = await talk_through_fault(r, lambda: r.proxy.inject(b"\x00\x01garbage: [\n\n"))
        assert r.esl.stats.reconnects == 1 and "protocol error" in (r.esl.stats.last_error or "")
        assert_went_on(r, call)
        r.assert_nothing_ran_twice()
        gap = r.silence(call)
        fault_row("ESL garbage mid-call", "link replaced, call went on",
                  longest_silence_s=gap, record=await r.parley_says(call))
        assert gap <= SILENCE_GOAL_S


# ---- FreeSWITCH restarts ----------------------------------------------------------------------------------


async def _restart_row(tmp_path: Path, fault_row: RecordRow, *, down_s: float, name: str) -> None:
    async with rig(tmp_path, reconnect_max_s=down_s / 12) as r:
        call = await r.place_call()
        await r.agent_quiet(call, echoes=0)
        await r.until_said(r.say(call))
        began = r.fs.clock()
        await r.fs.restart(esl_down_s=down_s)  # calls hung up (SYSTEM_SHUTDOWN), notice, EOF, refused
        assert call.hangup_cause == "SYSTEM_SHUTDOWN" and call.hungup_at is not None
        await until(lambda: call.uuid not in r.running.bridge.calls if r.running else True, 5)
        await r.esl.wait_connected(5)
        back = r.fs.clock() - began
        assert r.esl.stats.reconnects == 1 and r.esl.supervising
        assert r.agent.results[call.uuid].greeting is not None
        gap = r.silence(call, end=call.hungup_at)
        # the next caller is answered as usual
        second = await r.place_call()
        await r.agent_quiet(second, echoes=0)
        assert r.agent.results[second.uuid].greeting is not None
        await second.hangup()
        r.assert_nothing_ran_twice()
        fault_row(name, f"FS hung up; ESL back {back:.1f} s; next ok", longest_silence_s=gap,
                  record=await r.parley_says(call))
        assert await r.parley_says(call) == "parley: SYSTEM_SHUTDOWN"
        assert gap <= SILENCE_GOAL_S


async def test_freeswitch_restart_esl_down_10_s(tmp_path: Path, fault_row: RecordRow) -> None:
    await _restart_row(tmp_path, fault_row, down_s=10.0, name="FreeSWITCH restart, ESL down 10 s")


async def test_freeswitch_restart_esl_down_60_s(tmp_path: Path, fault_row: RecordRow) -> None:
    """60 s compressed 10x: ESL refused for 6 s with the backoff cap scaled the same way (0.5 s)."""
    await _restart_row(tmp_path, fault_row, down_s=6.0, name="FS restart, ESL down 60 s (10x compressed)")


# ---- ESL down while the caller talks over the agent -------------------------------------------------------


async def test_esl_down_while_the_caller_talks_over_the_agent(tmp_path: Path, fault_row: RecordRow) -> None:
    """The caller starts talking over the greeting just as ESL drops (refused 1.2 s): the break waits for
    the link (within its 2 s timeout), is sent once it is back, and stops the greeting; the call goes on."""
    async with rig(tmp_path, greeting_s=4.5) as r:
        call = await r.place_call()
        await until(lambda: any(p.started_at is not None for p in call.playbacks))
        await asyncio.sleep(0.5)
        r.say(call)
        await outage(r, 1.2)
        await r.agent_quiet(call, echoes=1)
        await r.until_said(r.say(call))
        await r.agent_quiet(call, echoes=2)
        await call.hangup()
        heard = played(call)
        greeting = heard.pop("greeting")
        assert "break" in greeting  # stopped by the break sent after the outage, not played to the end
        assert len(heard) == 2 and all(s == ["done"] * len(s) for s in heard.values()), heard
        breaks = [c for c in r.fs.commands if c.startswith(f"api uuid_break {call.uuid} all".encode())]
        assert len(breaks) >= 1 and r.esl.stats.reconnects == 1
        r.assert_nothing_ran_twice()
        gap = r.silence(call)
        fault_row("ESL down 1.2 s as caller talks over agent", "break sent when back, call went on",
                  longest_silence_s=gap, record=await r.parley_says(call))
        assert gap <= SILENCE_GOAL_S


async def test_esl_down_longer_than_a_command_timeout_while_the_caller_talks_over_the_agent(
    tmp_path: Path, fault_row: RecordRow
) -> None:
    """As above, but ESL is refused for 3 s, longer than the break's 2 s timeout: the break must fail
    cleanly (logged), the agent must live on, and the call go on once ESL is back."""
    async with rig(tmp_path, greeting_s=4.5) as r:
        call = await r.place_call()
        await until(lambda: any(p.started_at is not None for p in call.playbacks))
        await asyncio.sleep(0.5)
        r.say(call)
        await outage(r, 3.0)
        await r.agent_quiet(call, echoes=1)
        await r.until_said(r.say(call))
        await r.agent_quiet(call, echoes=2)
        await call.hangup()
        r.assert_nothing_ran_twice()
        gap = r.silence(call)
        fault_row("ESL down 3 s as caller talks over agent", "break timed out, call went on",
                  longest_silence_s=gap, record=await r.parley_says(call))
        assert gap <= SILENCE_GOAL_S
