"""A loopback fake of OpenAI's speech endpoint (``POST /v1/audio/speech``) streaming raw PCM.

Reproduced (docs/provider-protocols.md §8 and §6 for the error shape): ``Authorization: Bearer <key>``
(else 401 ``invalid_api_key`` whose message echoes the key, so clients must redact it); the body checks:
known ``model``, ``input`` of 1-4096 characters, a known ``voice`` (or ``{"id": ...}``), ``speed``
0.25-4.0, no ``instructions`` for ``tts-1`` / ``tts-1-hd``, no unknown fields (400 ``invalid_request_error``
with the offending ``param``); a 200 whose body is sent progressively with chunked transfer encoding.
``response_format: "pcm"`` is raw 24 kHz mono s16le with no header. Chunks are ``chunk_bytes`` long, odd by
default (4801), so sample boundaries fall inside chunks. HTTP keep-alive, so connection reuse is visible.
``stream_format: "sse"`` (refused for ``tts-1`` / ``tts-1-hd``, as documented) answers ``text/event-stream``:
one ``{"type":"speech.audio.delta","audio":"<base64>"}`` event per chunk, then ``{"type":
"speech.audio.done","usage":{"input_tokens","output_tokens","total_tokens"}}``: the only place the token
count gpt-4o-mini-tts bills by is reported (§8). The stream form ``audio`` carries no usage at all.

Simplified: the "speech" is a deterministic tone, ``ms_per_char`` per input character
(:meth:`FakeOpenAITTS.audio_for` gives the exact bytes); only ``pcm`` is produced (other formats are refused
with 400). The token counts are this fake's own formula (:meth:`FakeOpenAITTS.usage_for`: a token per 4
characters in, 20 per second of audio out), not OpenAI's tokenizer; SSE events carry no ``event:`` lines and
no ``[DONE]`` (whether the live API sends them is uncertain, §8). Faults are
scripted per request with :class:`TTSReply`: any status and error code, a delay between chunks, a stall
(``then="hold"``: keep the response open until the client goes), a TCP cut mid-body (``then="drop"``), a
200 with the wrong content type, or a body with an odd number of bytes.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from testkit.fakes.anthropic import HttpExchange, HttpRequest, LoopbackHttpServer

__all__ = ["FakeOpenAITTS", "TTSReply"]

RATE = 24000
MODELS = frozenset({"tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15"})
VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse", "marin", "cedar"}
)
FORMATS = frozenset({"mp3", "opus", "aac", "flac", "wav", "pcm"})
FIELDS = frozenset({"model", "input", "voice", "instructions", "response_format", "speed", "stream_format"})


@dataclass(frozen=True, slots=True)
class TTSReply:
    """What the fake answers to one request (the n-th request gets the n-th reply, the last repeating)."""

    status: int = 200
    error_code: str | None = None  # for a status other than 200
    error_message: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    chunk_bytes: int = 4801
    chunk_delay_s: float = 0.0
    stop_after_bytes: int | None = None  # send only this much audio, then ``then``
    then: Literal["end", "hold", "drop"] = "end"
    content_type: str = "audio/pcm"
    odd_tail: bool = False  # append one stray byte (half a sample) to the body


class FakeOpenAITTS:
    """``async with FakeOpenAITTS(key) as fake:`` then use ``fake.base_url`` (it ends in ``/v1``)."""

    def __init__(self, api_key: str, replies: Sequence[TTSReply] = (), *, ms_per_char: float = 20.0) -> None:
        self.api_key = api_key
        self.replies = list(replies) or [TTSReply()]
        self.ms_per_char = ms_per_char
        self.requests: list[HttpRequest] = []
        self.http = LoopbackHttpServer(self._handle)

    @property
    def base_url(self) -> str:
        return self.http.url + "/v1"

    @property
    def disconnected(self) -> asyncio.Event:
        return self.http.disconnected

    async def __aenter__(self) -> FakeOpenAITTS:
        await self.http.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.stop()

    def body(self, n: int = -1) -> dict[str, object]:
        parsed = self.requests[n].json()
        assert isinstance(parsed, dict)
        return parsed

    def audio_for(self, text: str) -> bytes:
        """The exact PCM the fake streams for ``text``: a 330 Hz tone, ``ms_per_char`` per character."""
        n = round(len(text) * self.ms_per_char * RATE / 1000)
        tone = np.round(6000 * np.sin(2 * np.pi * 330 * np.arange(n) / RATE))
        return tone.astype("<i2").tobytes()

    async def _handle(self, ex: HttpExchange) -> None:
        self.requests.append(ex.request)
        script = self.replies[min(len(self.requests) - 1, len(self.replies) - 1)]
        problem = self._problem(ex.request)
        if problem is None and script.status != 200:
            problem = (script.status, script.error_code or "", script.error_message or "scripted failure", None)
        if problem is not None:
            status, code, message, param = problem
            kind = "invalid_request_error" if status < 500 else "server_error"
            body = {"error": {"message": message, "type": kind, "param": param, "code": code or None}}
            headers = {"Content-Type": "application/json", "x-request-id": "req_fake", **script.headers}
            await ex.respond(status, json.dumps(body).encode(), headers)
            return
        body_json = ex.request.json()
        assert isinstance(body_json, dict)
        audio = self.audio_for(str(body_json["input"]))
        if script.stop_after_bytes is not None:
            audio = audio[: script.stop_after_bytes]
        if script.odd_tail:
            audio += b"\x01"
        sse = body_json.get("stream_format") == "sse"
        content_type = "text/event-stream" if sse and script.content_type == "audio/pcm" else script.content_type
        await ex.head(200, {"Content-Type": content_type, "x-request-id": "req_fake", **script.headers})
        for start in range(0, len(audio), script.chunk_bytes):
            if script.chunk_delay_s:
                await asyncio.sleep(script.chunk_delay_s)
            piece = audio[start : start + script.chunk_bytes]
            await ex.chunk(_event({"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode()})
                           if sse else piece)
        if sse and script.then == "end":
            await ex.chunk(_event({"type": "speech.audio.done", "usage": self.usage_for(str(body_json["input"]))}))
        if script.then == "drop":
            ex.drop()
        elif script.then == "hold":
            await ex.wait_for_disconnect()
        else:
            await ex.end()

    def usage_for(self, text: str) -> dict[str, int]:
        """The usage the SSE form reports for ``text`` (this fake's formula: see the module docstring)."""
        seconds = round(len(text) * self.ms_per_char * RATE / 1000) / RATE
        tokens_in, tokens_out = -(-len(text) // 4), round(seconds * 20)
        return {"input_tokens": tokens_in, "output_tokens": tokens_out, "total_tokens": tokens_in + tokens_out}

    def _problem(self, request: HttpRequest) -> tuple[int, str, str, str | None] | None:
        """(status, code, message, param) of the error the real API would give, if any."""
        if request.method != "POST" or request.path != "/v1/audio/speech":
            return 404, "not_found", f"Invalid URL ({request.method} {request.path})", None
        auth = request.headers.get("authorization", "")
        if auth != f"Bearer {self.api_key}":
            shown = auth.removeprefix("Bearer ")
            return 401, "invalid_api_key", f"Incorrect API key provided: {shown}.", None
        try:
            body = request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return 400, "", "We could not parse the JSON body of your request.", None
        if not isinstance(body, dict):
            return 400, "", "The body must be a JSON object.", None
        for name in body:
            if name not in FIELDS:
                return 400, "unknown_parameter", f"Unrecognized request argument supplied: {name}", name
        text, voice, model = body.get("input"), body.get("voice"), body.get("model")
        checks: list[tuple[bool, str, str]] = [
            (model in MODELS, "model", f"Invalid model: {model!r}"),
            (isinstance(text, str) and 1 <= len(text) <= 4096, "input", "input must be 1-4096 characters"),
            (voice in VOICES or (isinstance(voice, dict) and "id" in voice), "voice", f"Invalid voice: {voice!r}"),
            (body.get("response_format", "mp3") in FORMATS, "response_format", "Invalid response_format"),
            (body.get("response_format", "mp3") == "pcm", "response_format", "this fake only produces pcm"),
            (body.get("stream_format", "audio") in ("audio", "sse"), "stream_format", "Invalid stream_format"),
            (body.get("stream_format") != "sse" or model not in ("tts-1", "tts-1-hd"), "stream_format",
             f"stream_format 'sse' is not supported for {model}"),
        ]
        speed = body.get("speed", 1.0)
        checks.append((isinstance(speed, int | float) and 0.25 <= speed <= 4.0, "speed", "speed must be 0.25-4.0"))
        no_instructions = "instructions" not in body or model not in ("tts-1", "tts-1-hd")
        checks.append((no_instructions, "instructions", f"instructions are not supported by {model}"))
        for ok, param, message in checks:
            if not ok:
                return 400, "invalid_value", message, param
        return None


def _event(payload: Mapping[str, object]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()
