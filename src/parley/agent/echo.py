"""The echo / announcement agent: proves the bridge end to end until the conversation engine lands.

Owns: greeting the caller with a WAV, detecting each caller utterance by energy, and playing it back;
when the caller talks over the echo it barges in (``uuid_break all``) and logs what was heard.
Must not know about sockets or ESL: it only uses the :class:`~parley.freeswitch.call.Call` API.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from parley.audio.energy import EnergyUtteranceDetector, SpeechEnded, SpeechStarted
from parley.audio.pcm import Int16Array, from_bytes
from parley.audio.wav import read_wav
from parley.config import AgentSettings
from parley.errors import CallGone, ParleyError
from parley.freeswitch.call import Call
from parley.freeswitch.playback import BargeIn, Utterance

log = logging.getLogger("parley.agent.echo")


def load_greeting(path: str = "") -> tuple[Int16Array, int]:
    if path:
        return read_wav(Path(path))
    with files("parley.data").joinpath("greeting.wav").open("rb") as fh:
        return read_wav(fh)


@dataclass(slots=True)
class Echo:
    """One caller utterance and the agent's echo of it, with the times that make up the latency."""

    speech_end_t: float  # last loud caller frame ended (stream clock)
    detected_t: float  # the silence that ends the utterance was complete
    utterance: Utterance


@dataclass(slots=True)
class BargeInTiming:
    speech_onset_t: float
    barge: BargeIn


@dataclass(slots=True)
class EchoResult:
    """What happened on one call (for logs, the demo and tests)."""

    greeting: Utterance | None = None
    echoes: list[Echo] = field(default_factory=list)
    barge_ins: list[BargeInTiming] = field(default_factory=list)

    @property
    def utterances(self) -> int:
        return len(self.echoes)


class EchoAgent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.greeting = load_greeting(settings.greeting_wav)
        self.results: dict[str, EchoResult] = {}

    async def __call__(self, call: Call) -> None:
        result = self.results.setdefault(call.uuid, EchoResult())
        samples, rate = self.greeting
        result.greeting = await call.playback.play(samples, rate, utterance_id="greeting")
        detector = EnergyUtteranceDetector(
            call.stream_rate,
            threshold_dbfs=self.settings.energy_threshold_dbfs,
            silence_ms=self.settings.utterance_silence_ms,
            max_utterance_ms=self.settings.max_utterance_s * 1000,
        )
        async for frame in call.frames():
            samples = from_bytes(frame.pcm)
            # frame.t is when the frame arrived, i.e. when its 20 ms of audio ended
            for event in detector.feed(samples, frame.t - samples.size / call.stream_rate):
                match event:
                    case SpeechStarted(t=onset):
                        if call.playback.is_playing:
                            try:
                                barge = await call.playback.barge_in()
                            except CallGone:
                                return
                            except ParleyError as exc:  # ESL down longer than the break's timeout
                                call.log.error("could not stop playback: %s", exc)
                                continue
                            if barge is not None:
                                result.barge_ins.append(BargeInTiming(onset, barge))
                                call.log.info("barge-in: caller heard %.0f ms of the agent", barge.heard_ms)
                    case SpeechEnded(audio=audio, duration_ms=ms, t=end):
                        detected = frame.t
                        call.log.info("caller utterance of %.0f ms; echoing it", ms)
                        try:
                            utt = await call.playback.play(audio, call.stream_rate)
                        except CallGone:
                            return
                        except ParleyError as exc:
                            call.log.error("could not play the echo: %s", exc)
                            continue
                        result.echoes.append(Echo(end, detected, utt))
