"""Text-to-speech with the espeak-ng program (Debian package ``espeak-ng``): the simulated caller's voice in
tests and demos, and the last-resort fallback voice. Robotic (recognizers get 13-25 % of its words
wrong), but it needs no model, starts in about 20 ms and runs hundreds of times faster than realtime.

Owns: running ``espeak-ng --stdout`` as a subprocess per request (text on stdin, never on the command
line), parsing the streamed WAV it writes (:class:`WavStreamParser`, sans-I/O: bytes in, samples out) and
yielding the audio as it arrives. Must not know playback or other providers. Cancelling the consumer
kills the process, and the request's ``Usage(cancelled=True)`` goes to its ``on_cancel`` sink (in a call,
the sink of the call's stream). espeak-ng is GPL-3, but it runs as a separate program and is not linked.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncGenerator

import numpy as np

from parley.audio.pcm import Int16Array
from parley.errors import ConfigError, ParleyError
from parley.providers.base import AudioChunk, LocalVoice, TTSEvent, Usage, UsageSink
from parley.providers.errors import ProviderError, ProviderProtocolError

PROVIDER = "espeak-ng"
SAMPLE_RATE = 22_050  # espeak-ng's own voices; the WAV header is authoritative
READ_BYTES = 8192  # about 190 ms of audio per chunk at 22 050 Hz
MAX_HEADER_BYTES = 4096


class WavStreamParser:
    """A RIFF/WAVE byte stream of unknown length -> int16 mono samples.

    espeak-ng writing to a pipe cannot seek back to fix the sizes, so its header claims 0x7FFFF000 data
    bytes; the data chunk is therefore read to end of stream, whatever size it declares. Only 16-bit mono
    PCM is accepted.
    """

    def __init__(self) -> None:
        self._buf = b""
        self.sample_rate: int | None = None
        self._in_data = False

    def feed(self, data: bytes) -> Int16Array:
        """The whole samples available after ``data`` (an odd trailing byte waits for the next feed)."""
        self._buf += data
        if not self._in_data:
            self._parse_header()
            if not self._in_data:
                return np.zeros(0, dtype=np.int16)
        usable = len(self._buf) - len(self._buf) % 2
        out = np.frombuffer(self._buf[:usable], dtype="<i2").astype(np.int16)
        self._buf = self._buf[usable:]
        return out

    def close(self) -> None:
        """End of stream: raise if the header never completed."""
        if not self._in_data:
            raise ProviderProtocolError(
                f"espeak-ng output ended inside the WAV header ({len(self._buf)} bytes)", provider=PROVIDER
            )

    def _parse_header(self) -> None:
        buf = self._buf
        if len(buf) < 12:
            return
        if buf[:4] != b"RIFF" or buf[8:12] != b"WAVE":
            raise ProviderProtocolError(f"espeak-ng output is not a RIFF/WAVE stream: {buf[:12]!r}", provider=PROVIDER)
        pos = 12
        while len(buf) >= pos + 8:
            chunk_id, size = buf[pos : pos + 4], struct.unpack_from("<I", buf, pos + 4)[0]
            if chunk_id == b"data":
                if self.sample_rate is None:
                    raise ProviderProtocolError("WAV data chunk before its fmt chunk", provider=PROVIDER)
                self._buf, self._in_data = buf[pos + 8 :], True
                return
            end = pos + 8 + size + (size & 1)
            if end > MAX_HEADER_BYTES:
                raise ProviderProtocolError(f"WAV header chunk {chunk_id!r} is too large ({size})", provider=PROVIDER)
            if len(buf) < end:
                return
            if chunk_id == b"fmt ":
                self._parse_fmt(buf[pos + 8 : pos + 8 + size])
            pos = end
        if len(buf) > MAX_HEADER_BYTES:
            raise ProviderProtocolError("no WAV data chunk in the first 4096 bytes", provider=PROVIDER)

    def _parse_fmt(self, fmt: bytes) -> None:
        if len(fmt) < 16:
            raise ProviderProtocolError(f"WAV fmt chunk too short ({len(fmt)} bytes)", provider=PROVIDER)
        audio_format, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", fmt)
        if audio_format != 1 or channels != 1 or bits != 16:
            raise ProviderProtocolError(
                f"unsupported WAV format {audio_format}, {channels} channel(s), {bits} bits (need PCM mono 16-bit)",
                provider=PROVIDER,
            )
        self.sample_rate = rate


class EspeakTTS(LocalVoice):
    """TTSProvider running ``espeak-ng``. ``voice``: an espeak-ng voice name (``espeak-ng --voices``)."""

    name: str = PROVIDER
    sample_rate: int = SAMPLE_RATE

    def __init__(
        self,
        voice: str = "en-us",
        rate_wpm: int = 165,
        *,
        executable: str = "espeak-ng",
    ) -> None:
        self.voice = voice
        self.rate_wpm = rate_wpm
        self.executable = executable

    async def synthesize(self, text: str, *, on_cancel: UsageSink | None = None) -> AsyncGenerator[TTSEvent, None]:
        if not self.voice or self.voice.startswith("-") or not 80 <= self.rate_wpm <= 450:
            raise ConfigError(f"bad espeak-ng voice {self.voice!r} or rate {self.rate_wpm} (80-450 wpm)")
        finished = False
        failure: ParleyError | None = None
        proc = await self._start()
        try:
            async with contextlib.aclosing(self._read(proc, text)) as chunks:
                async for chunk in chunks:
                    yield chunk
            finished = True
        except ParleyError as exc:
            failure = exc
        finally:
            if not finished and failure is None and on_cancel is not None:
                on_cancel(self._usage(text, cancelled=True))  # stopped early: cannot be yielded
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.communicate()  # reap it and read its pipes to EOF, so their transports close
        if failure is not None:
            yield self._usage(text, failed=True)
            raise failure
        yield self._usage(text)

    async def _start(self) -> asyncio.subprocess.Process:
        args = [self.executable, "--stdout", "--stdin", "-v", self.voice, "-s", str(self.rate_wpm)]
        try:
            return await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError as exc:
            raise ConfigError(f"{self.executable} not found on PATH: apt-get install espeak-ng") from exc
        except OSError as exc:
            raise ProviderError(f"could not start {self.executable}: {exc}", provider=PROVIDER) from exc

    async def _read(self, proc: asyncio.subprocess.Process, text: str) -> AsyncGenerator[AudioChunk, None]:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        try:
            proc.stdin.write(text.encode("utf-8") + b"\n")
            await proc.stdin.drain()
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ProviderError(f"espeak-ng exited before reading the text: {exc}", provider=PROVIDER) from exc
        parser = WavStreamParser()
        first = True
        while data := await proc.stdout.read(READ_BYTES):
            samples = parser.feed(data)
            if samples.size and parser.sample_rate is not None:
                yield AudioChunk(samples, parser.sample_rate, text=text if first else None)
                first = False
        code = await proc.wait()
        if code != 0:
            err = (await proc.stderr.read(2000)).decode("utf-8", "replace").strip()
            raise ProviderError(f"espeak-ng exited with status {code}: {err}", provider=PROVIDER)
        parser.close()

    def _usage(self, text: str, *, cancelled: bool = False, failed: bool = False) -> Usage:
        return Usage(
            provider=PROVIDER,
            model=self.voice,
            kind="tts",
            characters=len(text),
            cancelled=cancelled,
            failed=failed,
        )
