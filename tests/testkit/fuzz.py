"""Fuzzing the parsers of untrusted input: the ESL core and every vendor message decoder, without sockets.

Owns: the fuzz targets (one per parser: its seeds, how it is driven, which errors are its own documented
protocol errors), a deterministic mutator (byte-level edits of real captures plus structure-aware edits of
JSON frames), and :func:`run_target`, which counts inputs, crashes by exception class and the slowest input.
``scripts/fuzz.py`` runs it for 10^6 inputs per parser; ``tests/fuzz`` runs a few thousand per parser and
adds hypothesis-generated values. Must not know about calls, sessions or asyncio.

Seeds: the genuine FreeSWITCH recordings (``shared/fixtures/freeswitch/*.esl-in.bin``, cut into messages;
an input is a window of 1-6 consecutive messages, which is what one socket read holds), the messages the
vendor fakes build (:mod:`testkit.fakes`) and the examples of ``docs/provider-protocols.md``. A
vendor input is a session: frames separated by ``\\n`` (one WebSocket text frame each) or an SSE body, so
the stateful assemblers see sequences, not just single messages.

A crash is any exception that is not the target's own documented error (``EslProtocolError`` for ESL,
``ProviderError`` for vendor parsers, none at all for the HTTP error-body readers, which never raise).

Over 400 lines on purpose: half of it is the seed messages, kept next to the targets they feed.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from parley.errors import EslProtocolError
from parley.freeswitch import esl_protocol as esl
from parley.providers import (
    anthropic_llm,
    assemblyai_stt,
    cartesia_tts,
    deepgram_stt,
    deepgram_tts,
    elevenlabs_tts,
    openai_llm,
    openai_tts,
)
from parley.providers.errors import ProviderError
from testkit.fakes import anthropic as fake_anthropic
from testkit.fakes import openai_chat as fake_openai

__all__ = ["Mutator", "Report", "Target", "run_target", "targets"]

KEY = "sk-fuzz-key-0123456789"


@dataclass(frozen=True, slots=True)
class Target:
    """One parser under fuzz. ``run`` raises only ``allowed`` errors on any input; anything else is a crash."""

    name: str
    sessions: Sequence[Sequence[bytes]]  # seed frames, in the order a peer sends them
    join: Callable[[Sequence[bytes]], bytes]
    run: Callable[[bytes], None]
    allowed: tuple[type[BaseException], ...]
    json_frames: bool = True  # frames are JSON texts (structure-aware mutation applies)


@dataclass(slots=True)
class Report:
    target: str
    inputs: int = 0
    protocol_errors: int = 0  # the parser's own documented errors: expected, not crashes
    crashes: Counter[str] = field(default_factory=Counter)
    examples: dict[str, bytes] = field(default_factory=dict)  # first input per crash class
    slowest_ms: float = 0.0
    slowest_input: bytes = b""


def run_target(target: Target, inputs: Iterator[bytes], *, on_crash: Callable[[str, bytes], None] | None = None
               ) -> Report:
    report = Report(target.name)
    clock = time.perf_counter
    for data in inputs:
        report.inputs += 1
        start = clock()
        try:
            target.run(data)
        except target.allowed:
            report.protocol_errors += 1
        except Exception as exc:  # a crash: counted and kept, never fatal to the run
            kind = f"{type(exc).__name__}"
            report.crashes[kind] += 1
            if kind not in report.examples:
                report.examples[kind] = data
                if on_crash is not None:
                    on_crash(kind, data)
        ms = (clock() - start) * 1000.0
        if ms > report.slowest_ms:
            report.slowest_ms, report.slowest_input = ms, data
    return report


# ---- the mutator ---------------------------------------------------------------------------------------------

TOKENS: tuple[bytes, ...] = (
    b"[" * 1000, b'{"a":' * 700, b"9" * 4400, b"9" * 400, b"1e999", b"-1e-999", b"NaN", b"-Infinity",
    "\u00b2\u00b3".encode(), "\u0663\u0664".encode(), b"\x00", b"\xff\xfe", b"\xc3", b"\r\n\r\n", b"\n\n", b"\r",
    b"Content-Length: 99999999999999999999\n", b"Content-Length: -1\n", b"Content-Length: 0\n",
    b"Content-Type: text/event-json\n", b"Content-Type: text/event-plain\n", b"Event-Name: \n",
    b"%", b"%zz", b"%00", b"%0A%0A", b'"', b"\\", b"\\u", b"\\ud800", b"null", b"true", b"[]", b"{}", b"0",
    b"-0", b"1.5", b"99999999999999999999", b"data: ", b"data: [DONE]\n\n", b"event: error\n", b":", b"ARRAY::",
    b'"type":"error"', b'"error":{"code":500}', b'"index":-1', b'"index":99999999999', b'"tool_calls":[{}]',
    b'"end_of_turn":true', b'"turn_order":-5', b'"is_final":true', b'"speech_final":true', b'"from_finalize":true',
    b'"audio":"%%%"', b'"data":"AAAA"', b'"isFinal":true', b'"status_code":"x"', b"\xe2\x80\xa8", b"\xf0\x9f\x98\x80",
)
VALUES: tuple[object, ...] = (
    None, True, False, 0, -1, 1, 2**63, -(2**63), 10**60, 1.5, -0.0, 1e308, "", "x", "x" * 2000, "\u0663",
    [], {}, [[[[]]]], {"a": {"b": {"c": {}}}}, [0, "1", None], "Results", "Turn", "chunk", "error", "done",
    "message_stop", "content_block_start", "tool_use", "input_json_delta", '{"partial":', "[DONE]",
)
_INSERT_RAW = (b"9" * 4400, b"[" * 900 + b"]" * 900, b"1e999", b"NaN", b"-Infinity", b"9" * 70)


class Mutator:
    """Deterministic (seeded) inputs for one target: a seed window, structurally and/or byte-mutated."""

    def __init__(self, target: Target, seed: int = 0) -> None:
        self.target = target
        self.rng = random.Random(seed)

    def inputs(self, n: int) -> Iterator[bytes]:
        for _ in range(n):
            yield self.one()

    def one(self) -> bytes:
        rng = self.rng
        session = rng.choice(self.target.sessions)
        width = rng.randint(1, min(6, len(session)))
        start = rng.randint(0, len(session) - width)
        frames = list(session[start : start + width])
        if self.target.json_frames and rng.random() < 0.6:
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(frames))
                frames[i] = self.mutate_json(frames[i])
        data = self.target.join(frames)
        if rng.random() < 0.6 or not self.target.json_frames:
            data = self.mutate_bytes(data)
        return data

    def mutate_json(self, frame: bytes) -> bytes:
        rng = self.rng
        try:
            value = json.loads(frame)
        except (ValueError, RecursionError):  # an earlier edit of this input made it no JSON
            return frame
        nodes: list[tuple[dict[str, object] | list[object], str | int]] = []
        stack: list[object] = [value]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                nodes.extend((node, k) for k in node)
                stack.extend(node.values())
            elif isinstance(node, list):
                nodes.extend((node, i) for i in range(len(node)))
                stack.extend(node)
        if not nodes:
            return json.dumps(rng.choice(VALUES)).encode()
        parent, key = rng.choice(nodes)
        placeholder = "\x00raw\x00"
        roll = rng.random()
        new: object
        if roll < 0.15 and isinstance(parent, dict):
            del parent[str(key)]
            return json.dumps(value).encode()
        if roll < 0.3:
            new = placeholder
        else:
            new = rng.choice(VALUES)
        if isinstance(parent, dict):
            parent[str(key)] = new
        else:
            parent[int(key)] = new
        text = json.dumps(value).encode()
        return text.replace(json.dumps(placeholder).encode(), rng.choice(_INSERT_RAW), 1)

    def mutate_bytes(self, data: bytes) -> bytes:
        rng = self.rng
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            n = len(buf)
            op = rng.randrange(9)
            pos = rng.randint(0, n)
            if op == 0 and n:
                buf[min(pos, n - 1)] ^= 1 << rng.randrange(8)
            elif op == 1 and n:
                buf[min(pos, n - 1)] = rng.randrange(256)
            elif op == 2:
                del buf[pos : pos + rng.randint(1, 64)]
            elif op == 3:
                buf[pos:pos] = rng.choice(TOKENS)
            elif op == 4 and n:
                a = rng.randrange(n)
                buf[pos:pos] = buf[a : a + rng.randint(1, 256)]
            elif op == 5:
                del buf[pos:]
            elif op == 6:  # splice: this input's head, the tail of another seed window
                other = rng.choice(self.target.sessions)
                first = rng.randrange(len(other))
                tail = self.target.join(other[first : first + rng.randint(1, 6)])
                buf[pos:] = tail[rng.randint(0, len(tail)) :]
            elif op == 7 and n:  # a digit: longer, or a Unicode digit
                digits = [i for i in range(max(0, pos - 200), min(n, pos + 200)) if 48 <= buf[i] <= 57]
                if digits:
                    i = rng.choice(digits)
                    buf[i : i + 1] = rng.choice((b"9" * rng.randint(20, 5000), "\u0663".encode(), b"\xc2\xb2"))
            elif op == 8 and n:  # repeat a byte a lot (deep nesting when it is a bracket)
                b = buf[min(pos, n - 1)]
                buf[pos:pos] = bytes([b]) * rng.choice((100, 1100, 5000))
        return bytes(buf)


# ---- targets --------------------------------------------------------------------------------------------------


def _lines(frames: Sequence[bytes]) -> bytes:
    return b"\n".join(frames)


def _frames(data: bytes) -> list[str]:
    """A session input as WebSocket text frames (a text frame is valid UTF-8: websockets checks it)."""
    return data.decode("utf-8", "replace").split("\n")


def _esl_stream(data: bytes) -> None:
    parser = esl.EslParser()
    cut1, cut2 = len(data) // 3, (2 * len(data)) // 3
    messages = [*parser.feed(data[:cut1]), *parser.feed(data[cut1:cut2]), *parser.feed(data[cut2:])]
    parser.feed_eof()
    for message in messages:
        _touch(message)


def _touch(message: esl.Message) -> None:
    """What the client and the session read off a message."""
    match message:
        case esl.Event():
            _ = (message.timestamp_us, message.subclass, message.unique_id, message.job_uuid, message.variable("x"))
        case esl.CommandReply():
            _ = (message.ok, message.job_uuid)
        case esl.ApiResponse():
            _ = message.ok
        case _:
            pass


def _esl_json(data: bytes) -> None:
    _touch(esl.parse_json_event(data))


def _esl_plain(data: bytes) -> None:
    _touch(esl.parse_plain_event(data))


def _deepgram_listen(data: bytes) -> None:
    assembler = deepgram_stt.ListenAssembler()
    frames = _frames(data)
    for i, frame in enumerate(frames):
        if i == len(frames) - 1:
            assembler.finalize_sent()
        assembler.feed(deepgram_stt.parse_message(frame, KEY))
    assembler.finalize_expired()


def _deepgram_speak(data: bytes) -> None:
    for frame in _frames(data):
        deepgram_tts.speak_control(deepgram_stt.parse_message(frame, KEY))


def _assemblyai(data: bytes) -> None:
    turns = assemblyai_stt.TurnAssembler(format_turns=True)
    frames = _frames(data)
    for i, frame in enumerate(frames):
        msg = assemblyai_stt.parse_message(frame)
        if i == len(frames) // 2:
            turns.finalize(float(i), float(i))
        match msg.get("type"):  # the dispatch of AssemblyAISTTStream._handle
            case "Turn":
                turns.turn(msg, float(i), float(i))
            case "SpeechStarted" | "Termination":
                for key in ("timestamp", "audio_duration_seconds", "session_duration_seconds"):
                    assemblyai_stt._num(msg.get(key))
            case _:
                pass
        turns.tick(float(i), float(i))
    turns.flush(float(len(frames)))


def _elevenlabs(data: bytes) -> None:
    for frame in _frames(data):
        message = elevenlabs_tts.parse_message(frame)
        if isinstance(message, elevenlabs_tts.ServerError):
            elevenlabs_tts.error_for_message(message.error, message.message)


def _cartesia(data: bytes) -> None:
    for frame in _frames(data):
        message = cartesia_tts.parse_message(frame)
        if isinstance(message, cartesia_tts.ServerError):
            cartesia_tts.error_for_message(message.status, message.code, message.message)


def _sse_data(data: bytes) -> Iterator[str]:
    """SSE event data as the LLM clients see it: httpx decodes with replacement and splits lines."""
    decoder = openai_llm.SSEDecoder()
    for line in data.decode("utf-8", "replace").splitlines():
        if (event := decoder.line(line)) is not None:
            yield event
    if (event := decoder.end()) is not None:
        yield event


def _openai_sse(data: bytes) -> None:
    assembler = openai_llm.ChatStreamAssembler("openai")
    for event in _sse_data(data):
        if event.strip() == "[DONE]":
            break
        assembler.feed(openai_llm.decode_event(event, "openai", [KEY]))
    assembler.take_tool_calls()


def _anthropic_sse(data: bytes) -> None:
    assembler = anthropic_llm.MessageStreamAssembler()
    for event in _sse_data(data):
        if assembler.done:
            break
        assembler.feed(openai_llm.decode_event(event, "anthropic", [KEY]))


def _error_bodies(data: bytes) -> None:
    status = 400 + (data[0] if data else 0) % 200
    deepgram_stt.handshake_error(status, Headers({"dg-request-id": "r"}), data, KEY)
    assemblyai_stt._handshake_error(InvalidStatus(Response(status, "x", Headers(), data)), [KEY])
    cartesia_tts.error_for_handshake(status, data)
    elevenlabs_tts.error_for_handshake(status, data)
    openai_llm._error_message(data)
    anthropic_llm._error_details(data)
    openai_tts._error_details(data)


def _sse(frames: Sequence[bytes]) -> bytes:
    return b"".join(b"data: " + f + b"\n\n" for f in frames)


_TYPE = re.compile(rb'"type": *"([a-z_]+)"')


def _anthropic_body(frames: Sequence[bytes]) -> bytes:
    out = []
    for f in frames:
        m = _TYPE.search(f)
        out.append(b"event: " + (m[1] if m else b"message") + b"\ndata: " + f + b"\n\n")
    return b"".join(out)


def _dump(*messages: object) -> list[bytes]:
    return [json.dumps(m).encode() for m in messages]


def esl_messages(capture: bytes) -> list[bytes]:
    """A recording cut into its messages (raw bytes, exactly as FreeSWITCH framed them)."""
    out: list[bytes] = []
    offset = 0
    while offset < len(capture) and (end := _first_message_end(capture, offset)) is not None:
        out.append(capture[offset:end])
        offset = end
    return out


def _first_message_end(data: bytes, offset: int) -> int | None:
    sep = data.find(b"\n\n", offset)
    if sep < 0:
        return None
    head = esl.parse_header_block(data[offset:sep], where="seed")
    length = int(head.get("Content-Length", "0"))
    end = sep + 2 + length
    return end if end <= len(data) else None


def esl_sessions(fixtures: Path) -> list[list[bytes]]:
    sessions = [esl_messages(p.read_bytes()) for p in sorted(fixtures.glob("*.esl-in.bin"))]
    return [s for s in sessions if s]


def _events_of(sessions: Sequence[Sequence[bytes]], content_type: bytes) -> list[list[bytes]]:
    bodies = [m.split(b"\n\n", 1)[1] for s in sessions for m in s if b"Content-Type: " + content_type in m]
    return [bodies[i : i + 1] for i in range(0, len(bodies), max(1, len(bodies) // 200))] or [[b"{}"]]


def _deepgram_seeds() -> list[list[bytes]]:
    result = {
        "type": "Results", "channel_index": [0, 1], "start": 1.02, "duration": 0.98, "is_final": True,
        "speech_final": False, "from_finalize": False,
        "channel": {"alternatives": [{"transcript": "book a cleaning", "confidence": 0.98, "words": [
            {"word": "book", "start": 1.1, "end": 1.3, "confidence": 0.97, "punctuated_word": "Book"}]}]},
        "metadata": {"request_id": "r", "model_info": {"name": "general", "version": "x", "arch": "nova-3"}},
    }
    interim = {**result, "is_final": False}
    final = {**result, "speech_final": True}
    finalize = {**result, "from_finalize": True}
    return [
        _dump({"type": "SpeechStarted", "channel": [0, 1], "timestamp": 4.56}, interim, result, final,
              {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 3.1}),
        _dump(interim, finalize, {"type": "Metadata", "transaction_key": "deprecated", "request_id": "r",
                                  "sha256": "ab", "created": "2024-08-29T22:37:55.202Z", "duration": 12.5,
                                  "channels": 1}),
        _dump({"type": "Error", "code": "NET-0001", "description": "no audio"}, {"err_code": "X", "err_msg": "y"}),
    ]


def _speak_seeds() -> list[list[bytes]]:
    return [
        _dump({"type": "Metadata", "request_id": "r", "model_name": "aura-2-thalia-en", "model_version": "1"},
              {"type": "Flushed", "sequence_id": 0}, {"type": "Cleared", "sequence_id": 1},
              {"type": "Warning", "code": "W", "description": "too many flushes"}),
        _dump({"type": "Error", "err_code": "BIG-0001", "err_msg": "too long"}),
    ]


def _assemblyai_seeds() -> list[list[bytes]]:
    words = [{"start": 3280, "end": 3360, "text": "Son", "confidence": 0.8, "word_is_final": False}]
    turn = {"type": "Turn", "turn_order": 1, "turn_is_formatted": False, "end_of_turn": False,
            "transcript": "I am a voice", "end_of_turn_confidence": 0.45, "utterance": "", "words": words}
    return [
        _dump({"type": "Begin", "id": "u", "expires_at": 1759796682}, turn,
              {**turn, "end_of_turn": True}, {**turn, "end_of_turn": True, "turn_is_formatted": True},
              {"type": "Termination", "audio_duration_seconds": 7, "session_duration_seconds": 7}),
        _dump({"type": "SpeechStarted", "timestamp": 1216, "confidence": 0.9}, {**turn, "turn_order": 2},
              {"type": "Error", "error_code": 3005, "error": "server"}),
    ]


def _elevenlabs_seeds() -> list[list[bytes]]:
    align = {"chars": ["H"], "charStartTimesMs": [0], "charDurationsMs": [30]}
    return [
        _dump({"audio": "AAAAAA==", "contextId": "turn-7", "normalizedAlignment": align, "alignment": align},
              {"audio": "AAAA", "context_id": "turn-7", "isFinal": None}, {"isFinal": True, "contextId": "turn-7"}),
        _dump({"message": "Have not received a new text input", "error": "input_timeout_exceeded", "code": 1008},
              {"type": "flush_done", "context_id": "t"}),
    ]


def _cartesia_seeds() -> list[list[bytes]]:
    return [
        _dump({"type": "chunk", "context_id": "turn-7", "data": "AAAA", "done": False, "status_code": 206,
               "step_time": 12.3, "flush_id": 1},
              {"type": "timestamps", "context_id": "turn-7", "word_timestamps": {"words": ["Hello"], "start": [0.0],
                                                                                 "end": [0.4]}, "done": False},
              {"type": "flush_done", "context_id": "turn-7", "flush_id": 1, "flush_done": True, "done": False},
              {"type": "done", "context_id": "turn-7", "done": True, "status_code": 200}),
        _dump({"type": "error", "context_id": "turn-7", "done": True, "status_code": 400,
               "error_code": "model_sunsetted", "title": "Gone", "message": "retired", "doc_url": "u",
               "request_id": "r"}, {"error": "plain"}),
    ]


def _openai_seeds() -> list[list[bytes]]:
    chunk = fake_openai.chunk
    call = {"index": 0, "id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    more = {"index": 0, "function": {"arguments": '{"city":'}}
    end = {"index": 0, "function": {"arguments": ' "Paris"}'}}
    return [
        [*_dump(fake_openai.FIRST, chunk({"content": "Hel"}), chunk({"content": "lo"}), chunk({}, "stop"),
                fake_openai.USAGE), b"[DONE]"],
        [*_dump(fake_openai.FIRST, chunk({"tool_calls": [call]}), chunk({"tool_calls": [more]}),
                chunk({"tool_calls": [end]}), chunk({}, "tool_calls"), fake_openai.USAGE), b"[DONE]"],
        _dump(chunk({"tool_calls": [{"id": "", "function": {"name": "hangup", "arguments": "{}"}}]}, "stop"),
              {"choices": [], "x_groq": {"usage": {"prompt_tokens": 3}}},
              {"error": {"message": "bad", "type": "BadRequestError", "code": 400, "param": None}}),
    ]


def _anthropic_seeds() -> list[list[bytes]]:
    text, tool = fake_anthropic.text, fake_anthropic.tool_use
    replies = [
        fake_anthropic.reply(text("Hi", " there.")),
        fake_anthropic.reply(text("One moment."), tool("toolu_1", "get_weather", '{"city": "Par', 'is"}')),
        fake_anthropic.reply(text("Hm"), error="overloaded_error"),
    ]
    return [_dump(*(e for e in r.events if not isinstance(e, str))) for r in replies]


def _error_body_seeds() -> list[list[bytes]]:
    return [[b] for b in _dump(
        {"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials.", "request_id": "r"},
        {"category": "INSUFFICIENT_PERMISSIONS", "message": "no access", "details": "", "request_id": "r"},
        {"error": "Unauthorized", "message": "bad key"},
        {"error_code": "model_sunsetted", "title": "Gone", "message": "retired"},
        {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}, {"detail": "Not found"},
        {"error": {"message": "Incorrect API key", "type": "invalid_request_error", "param": None,
                   "code": "invalid_api_key"}},
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}, "request_id": "req_1"},
    )] + [[b"<html>502 Bad Gateway</html>"]]


def targets(fixtures: Path | None) -> list[Target]:
    """Every parser under fuzz; the ESL targets need the recordings directory (skipped when None/absent)."""
    out: list[Target] = []
    sessions = esl_sessions(fixtures) if fixtures is not None and fixtures.is_dir() else []
    if sessions:
        out += [
            Target("esl", sessions, b"".join, _esl_stream, (EslProtocolError,), json_frames=False),
            Target("esl-event-json", _events_of(sessions, b"text/event-json"), b"".join, _esl_json,
                   (EslProtocolError,)),
            Target("esl-event-plain", _events_of(sessions, b"text/event-plain"), b"".join, _esl_plain,
                   (EslProtocolError,), json_frames=False),
        ]
    out += [
        Target("deepgram-listen", _deepgram_seeds(), _lines, _deepgram_listen, (ProviderError,)),
        Target("deepgram-speak", _speak_seeds(), _lines, _deepgram_speak, (ProviderError,)),
        Target("assemblyai", _assemblyai_seeds(), _lines, _assemblyai, (ProviderError,)),
        Target("elevenlabs", _elevenlabs_seeds(), _lines, _elevenlabs, (ProviderError,)),
        Target("cartesia", _cartesia_seeds(), _lines, _cartesia, (ProviderError,)),
        Target("openai-sse", _openai_seeds(), _sse, _openai_sse, (ProviderError,)),
        Target("anthropic-sse", _anthropic_seeds(), _anthropic_body, _anthropic_sse, (ProviderError,)),
        Target("http-error-bodies", _error_body_seeds(), b"".join, _error_bodies, ()),
    ]
    return out
