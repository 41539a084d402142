"""The fake FreeSWITCH against the genuine FreeSWITCH 1.10.12 recordings in ``shared/fixtures/freeswitch``.

How: each recorded scenario's client side (the ``app->fs`` ESL commands, the caller's actions and the
recorder's WebSocket actions) is replayed against the fake over real sockets. Every step is released when
the fake has sent as many ESL messages as FreeSWITCH had sent before that step in the recording, so the
replay is driven by the protocol, not by wall-clock timing. Both byte streams are then parsed with
``parley.freeswitch.esl_protocol.parse_stream`` and compared:

- the sequence of message types, reply texts, event names (+ subclass, Application, Playback-Status) is
  identical;
- for every event, the non-variable header names are identical *and in the same order* (duplicates
  included), the set of ``variable_*`` names is identical except for ``VARIABLE_ALLOWLIST``, and their
  order is identical once the SIP dialog variables that FreeSWITCH re-sets on the caller's ACK are removed;
- CUSTOM bodies are identical (``::play`` only by shape: its keys and the temp-file name);
- ``esl-handshake`` is byte-identical except Job-UUIDs, Core-UUID, dates, sequence numbers and the
  ``status`` text (and the lengths that depend on them).

Playback files are stand-ins with the recorded names (their audio is not compared), durations chosen so
that each recorded outcome (done / break) is reachable quickly.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest
from gen_fake_templates import build_templates, render
from websockets.asyncio.server import ServerConnection, serve

from parley.freeswitch import esl_protocol as esl
from parley.sim import esl_wire
from parley.sim.fake_freeswitch import FakeFreeSwitch

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "freeswitch"
TEMPLATE_FILE = (
    Path(__file__).resolve().parents[2] / "src" / "parley" / "sim" / "data" / "fake_freeswitch_events.json"
)
PASSWORD = "fidelity-pw"
MEDIA = "/srv/fsrun/test/rec/media/"
TEMP = "/srv/fsrun/run/temp/"
RECORDED_WS = "ws://127.0.0.1:8765"

pytestmark = pytest.mark.skipif(not (FIXTURES / "README.md").exists(), reason="shared fixtures not present")

# Per-call values whose presence depends on SIP timing outside the app's control: the caller's ACK
# (sip_to_tag, sip_cseq) reached the recorded FreeSWITCH before or after mod_audio_stream::connect.
VARIABLE_ALLOWLIST = frozenset({"variable_sip_to_tag", "variable_sip_cseq"})

# Stand-in prompt durations (s): long enough to be interrupted where the recording interrupted them.
DURATIONS = {"prompt_welcome.wav": 1.2, "prompt_hold.wav": 0.4, "prompt_long.wav": 3.0, "q_one.wav": 3.0}
DEFAULT_DURATION = 0.4

CALL_SCENARIOS = [
    "call-playback-plain",
    "call-playback-json",
    "barge-in",
    "dtmf",
    "streamaudio",
    "ws-error-refused",
    "ws-app-close",
]


def _records(scenario: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (FIXTURES / f"{scenario}.jsonl").read_text().splitlines()]


def _wav_bytes(seconds: float, rate: int = 8000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (np.sin(2 * np.pi * 440 * t) * 6000).astype("<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# The replay
# --------------------------------------------------------------------------------------------------


@dataclass
class Step:
    after: int  # ESL messages FreeSWITCH had sent on the main connection before this step
    kind: str  # esl | place_call | dtmf | hangup | ws_text | ws_close
    data: Any = None


@dataclass
class Scenario:
    name: str
    steps: list[Step]
    ws_first: bool
    destination: str
    has_call: bool


def _plan(name: str) -> Scenario:
    steps: list[Step] = []
    count = 0
    placed = False
    ws_first = False
    destination = "agent"
    for rec in _records(name):
        if rec["channel"] == "ws" and rec["kind"] == "open" and not placed:
            steps.append(Step(count, "place_call"))
            placed = ws_first = True
        if rec["channel"] == "ws" and rec["dir"] == "app->fs":
            if rec["kind"] == "text":
                steps.append(Step(count, "ws_text", rec["data"]))
            elif rec["kind"] == "close":
                close = json.loads(rec["data"])
                steps.append(Step(count, "ws_close", (close["code"], close["reason"])))
        if rec["channel"] != "esl" or rec["kind"] != "text" or rec.get("conn") != "esl":
            continue
        if rec["dir"] == "app->fs":
            steps.append(Step(count, "esl", rec["data"]))
            continue
        for msg in esl.EslParser().feed(rec["data"].encode()):
            if isinstance(msg, esl.Event):
                if msg.name == "CHANNEL_CREATE" and not placed:
                    steps.append(Step(count, "place_call"))
                    placed = True
                if msg.name == "CHANNEL_CREATE":
                    destination = msg.get("Caller-Destination-Number") or destination
                if msg.name == "DTMF":
                    steps.append(Step(count, "dtmf", (msg.get("DTMF-Digit"), int(msg.get("DTMF-Duration") or 0) // 8)))
                if msg.name == "CHANNEL_HANGUP":
                    steps.append(Step(count, "hangup"))
        count += 1
    return Scenario(name, steps, ws_first, destination, placed)


class WsPeer:
    """The recorder's WebSocket server: accepts mod_audio_stream, records, sends what the app sent."""

    def __init__(self) -> None:
        self.conn: ServerConnection | None = None
        self.opened = asyncio.Event()
        self.frames = 0

    async def handler(self, ws: ServerConnection) -> None:
        self.conn = ws
        self.opened.set()
        async for message in ws:
            if isinstance(message, bytes):
                self.frames += 1


async def _replay(scenario: Scenario, tmp: Path) -> tuple[bytes, FakeFreeSwitch]:
    media = tmp / "media"
    media.mkdir()
    temp = tmp / "temp"
    temp.mkdir()
    for name in ("prompt_welcome.wav", "prompt_hold.wav", "prompt_long.wav", "q_one.wav", "q_two.wav"):
        (media / name).write_bytes(_wav_bytes(DURATIONS.get(name, DEFAULT_DURATION)))
    peer = WsPeer()
    caller = wave.open(str(FIXTURES / "media" / "caller_shared.wav"), "rb")
    caller_audio = np.frombuffer(caller.readframes(caller.getnframes()), dtype="<i2").astype(np.int16)
    async with serve(peer.handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        ws_base = f"ws://127.0.0.1:{port}"
        if scenario.name == "ws-error-refused":  # nothing listens there
            ws_base = "ws://127.0.0.1:9"

        def mapped(text: str) -> str:
            text = text.replace(MEDIA, f"{media}/").replace(TEMP, f"{temp}/").replace(RECORDED_WS, ws_base)
            return text.replace("auth REDACTED", f"auth {PASSWORD}")

        async with FakeFreeSwitch(password=PASSWORD, temp_dir=temp) as fs:
            reader, writer = await asyncio.open_connection("127.0.0.1", fs.esl_port)
            received = bytearray()
            parser = esl.EslParser()
            seen = 0
            progress = asyncio.Condition()

            async def pump() -> None:
                nonlocal seen
                while data := await reader.read(65536):
                    received.extend(data)
                    n = len(parser.feed(data))
                    async with progress:
                        seen += n
                        progress.notify_all()

            pumping = asyncio.create_task(pump())
            call_uuid = _recorded_call_uuid(scenario.name)
            call = None
            for step in scenario.steps:
                after = step.after
                async with progress:
                    await asyncio.wait_for(progress.wait_for(lambda: seen >= after), 15)  # noqa: B023
                if step.kind == "esl":
                    writer.write(mapped(step.data).encode())
                    await writer.drain()
                elif step.kind == "place_call":
                    call = await fs.place_call(
                        ws_url=f"{ws_base}/stream" if scenario.destination == "agent" else None,
                        uuid=call_uuid,
                        caller_audio=caller_audio,
                        caller_number="fixture",
                        destination=scenario.destination,
                        ws_first=scenario.ws_first,
                    )
                elif step.kind == "dtmf":
                    assert call is not None
                    digit, ms = step.data
                    await call.send_dtmf(digit, ms)
                elif step.kind == "hangup":
                    assert call is not None
                    await call.hangup()
                elif step.kind == "ws_text":
                    await asyncio.wait_for(peer.opened.wait(), 5)
                    assert peer.conn is not None
                    await peer.conn.send(_short_stream_audio(step.data))
                elif step.kind == "ws_close":
                    assert peer.conn is not None
                    await peer.conn.close(*step.data)
            await asyncio.wait_for(pumping, 10)
            writer.close()
            return bytes(received), fs


def _short_stream_audio(text: str) -> str:
    """The recorded streamAudio message with a 0.3 s WAV instead of the 4 s one (same keys)."""
    obj = json.loads(text)
    obj["data"]["audioData"] = base64.b64encode(_wav_bytes(0.3, 16000)).decode()
    return json.dumps(obj)


def _recorded_call_uuid(scenario: str) -> str | None:
    for rec in _records(scenario):
        if rec["channel"] == "esl" and rec["dir"] == "fs->app" and "Unique-ID" in rec.get("data", ""):
            for msg in esl.EslParser().feed(rec["data"].encode()):
                if isinstance(msg, esl.Event) and msg.unique_id:
                    return msg.unique_id
    return None


# --------------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------------


def _signature(msg: esl.Message) -> tuple[str, ...]:
    if isinstance(msg, esl.Event):
        return (
            "event",
            msg.format,
            msg.name,
            msg.subclass or "",
            msg.get("Application") or "",
            msg.get("Playback-Status") or "",
        )
    if isinstance(msg, esl.CommandReply):
        return ("reply", re.sub(r"[0-9a-f-]{36}", "<uuid>", msg.reply_text))
    if isinstance(msg, esl.ApiResponse):
        return ("api", "<status>" if msg.body.startswith("UP ") else msg.body)
    return (type(msg).__name__,)


def _raw_headers(chunk: bytes) -> list[tuple[str, str]]:
    """An event's headers in wire order, duplicates kept, values decoded (the parser keeps the first of
    a repeated header, and FreeSWITCH repeats Hangup-Cause in CHANNEL_HANGUP_COMPLETE)."""
    head, _, payload = chunk.decode().partition("\n\n")
    if "text/event-json" in head:
        pairs = json.loads(payload, object_pairs_hook=lambda p: p)
        return [(k, "ARRAY::" + "|:".join(v) if isinstance(v, list) else v) for k, v in pairs if k != "_body"]
    lines = [line for line in payload.partition("\n\n")[0].split("\n") if line]
    return [(k, unquote(v)) for k, _, v in (line.partition(": ") for line in lines)]


def _fixed_headers(chunk: bytes) -> list[str]:
    return [h for h, _ in _raw_headers(chunk) if not h.startswith("variable_")]


# Variables FreeSWITCH sets again (moving them to the end) when the caller's ACK arrives.
ACK_VARIABLES = frozenset(
    f"variable_sip_{x}"
    for x in ("to_tag", "cseq", "from_tag", "call_id", "full_via", "from_display", "full_from", "full_to")
)


def _variable_order(chunk: bytes) -> list[str]:
    return [h for h, _ in _raw_headers(chunk) if h.startswith("variable_") and h not in ACK_VARIABLES]


def _variables(chunk: bytes) -> set[str]:
    return {h for h, _ in _raw_headers(chunk) if h.startswith("variable_")} - VARIABLE_ALLOWLIST


@pytest.mark.parametrize("name", CALL_SCENARIOS)
async def test_replayed_scenario_matches_recording(name: str, tmp_path: Path) -> None:
    scenario = _plan(name)
    got_bytes, fs = await _replay(scenario, tmp_path)
    want_bytes = (FIXTURES / f"{name}.esl-in.bin").read_bytes()
    want, got = esl.parse_stream(want_bytes), esl.parse_stream(got_bytes)
    assert [_signature(m) for m in got] == [_signature(m) for m in want]
    chunks = zip(got, want, _split(got_bytes), _split(want_bytes), strict=True)
    for i, (g, w, g_raw, w_raw) in enumerate(chunks):
        if isinstance(w, esl.Event):
            assert isinstance(g, esl.Event)
            where = f"message {i} ({w.name} {w.subclass or ''} {w.get('Application') or ''})"
            assert _fixed_headers(g_raw) == _fixed_headers(w_raw), where
            assert _variables(g_raw) == _variables(w_raw), where
            assert _variable_order(g_raw) == _variable_order(w_raw), where
            if w.name == "CUSTOM":
                assert (g.body is None) == (w.body is None), where
                if w.body and w.subclass != "mod_audio_stream::play":
                    assert g.body == w.body, where
    if name == "streamaudio":
        play = next(m for m in got if isinstance(m, esl.Event) and m.subclass == "mod_audio_stream::play")
        body = json.loads(play.body or "")
        assert list(body) == ["audioDataType", "file"]
        assert body["file"].endswith(f"{_recorded_call_uuid(name)}_0.tmp.wav")
    assert fs.commands[0].startswith(b"auth ")


# ---- esl-handshake: byte-exact modulo per-run values ------------------------------------------


def _split(data: bytes) -> list[bytes]:
    out = []
    while data:
        head, sep, rest = data.partition(b"\n\n")
        assert sep, data[:80]
        m = re.search(rb"^Content-Length: (\d+)$", head, re.M)
        n = int(m.group(1)) if m else 0
        out.append(head + sep + rest[:n])
        data = rest[n:]
    return out


_STATUS = re.compile(r"UP \d+ years.*?8192K(\\n|\n)", re.S)
_NORMALIZE = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"(Event-Date-(?:Local|GMT|Timestamp)\"?[:=] ?\"?)[^\n\"]*"), r"\1<date>"),
    (re.compile(r"(Event-Sequence\"?[:=] ?\"?)\d+"), r"\1<seq>"),
    (re.compile(r"Content-Length(\"?[:=] ?\"?)\d+"), r"Content-Length\1<n>"),
]


def _normalize(chunk: bytes) -> str:
    text = _STATUS.sub("<status>", chunk.decode())
    for pattern, repl in _NORMALIZE:
        text = pattern.sub(repl, text)
    return text


async def _run_connection(port: int, commands: list[str]) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = bytearray(await reader.readuntil(b"\n\n"))
    for cmd in commands:
        writer.write(cmd.encode())
        await writer.drain()
        await asyncio.sleep(0.05)  # like the recorder: one command after the other's answer
    received += await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return bytes(received)


@pytest.mark.parametrize("conn", ["esl", "esl-badauth"])
async def test_handshake_is_byte_exact_modulo_run_values(conn: str) -> None:
    commands = [
        r["data"].replace("auth REDACTED", f"auth {PASSWORD}")
        for r in _records("esl-handshake")
        if r["channel"] == "esl" and r["dir"] == "app->fs" and r["kind"] == "text" and r["conn"] == conn
    ]
    suffix = "esl-in.bin" if conn == "esl" else "esl-badauth.esl-in.bin"
    want = (FIXTURES / f"esl-handshake.{suffix}").read_bytes()
    async with FakeFreeSwitch(password=PASSWORD) as fs:
        got = await _run_connection(fs.esl_port, commands)
    assert [_normalize(c) for c in _split(got)] == [_normalize(c) for c in _split(want)]
    if conn == "esl-badauth":
        assert got == want  # nothing per-run in it at all


# ---- serialization and templates ------------------------------------------------------------------


def _recorded_event_texts() -> list[str]:
    out = []
    for path in sorted(FIXTURES.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec["channel"] == "esl" and rec["dir"] == "fs->app" and "text/event-" in rec.get("data", "")[:80]:
                out.append(rec["data"])
    return out


def test_every_recorded_event_reserializes_to_the_same_bytes() -> None:
    texts = _recorded_event_texts()
    assert len(texts) > 300
    for text in texts:
        (msg,) = esl.EslParser().feed(text.encode())
        assert isinstance(msg, esl.Event)
        headers = _raw_headers(text.encode())
        if msg.body is not None:
            assert headers.pop()[0] == "Content-Length"
        event = esl_wire.FsEvent(msg.name, headers, msg.body)
        assert event.serialize(msg.format).decode() == text


def test_shipped_templates_are_generated_from_the_recordings() -> None:
    assert TEMPLATE_FILE.read_text() == render(build_templates()), "run: python tests/sim/gen_fake_templates.py"
