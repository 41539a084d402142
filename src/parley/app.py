"""The composition root: the only place that picks concrete parts and wires them together.

Owns: building the ESL client, the mod_audio_stream server, the bridge and the agent from settings, and
running them until asked to stop (SIGINT/SIGTERM). Nothing else in parley constructs these.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, replace

from parley.agent.echo import EchoAgent
from parley.agent.engine import Engine
from parley.agent.session import CallSession
from parley.compose import Providers
from parley.config import Settings
from parley.errors import ConfigError, EslConnectError
from parley.freeswitch.audio_stream import AudioStreamServer
from parley.freeswitch.bridge import Agent, Bridge
from parley.freeswitch.call import Call
from parley.freeswitch.esl_client import EslClient
from parley.providers.base import TTSProvider

log = logging.getLogger("parley.app")


def build_engine(settings: Settings, *, providers: Providers | None = None) -> Engine:
    """Load the configured providers and models (once per process)."""
    from parley.turns.policy import TurnPolicy
    from parley.turns.smart_turn import SmartTurnModel
    from parley.turns.vad import FrameVad, SileroModel

    conv = settings.conversation
    try:
        policy = TurnPolicy(**dict(conv.turn))  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError(f"conversation.turn: {exc}") from None
    silero = SileroModel.load()
    smart_turn = SmartTurnModel.load() if policy.smart_turn else None
    made = providers or Providers(settings)
    llm = made.llm()
    if not conv.greeting and conv.llm[0] == "rules":
        rules = made.one_llm("rules")  # the dialogue file's greeting is where its state machine starts
        conv = replace(conv, greeting=rules.config.render(rules.config.greeting))  # type: ignore[attr-defined]
    return Engine(
        stt=made.stt(),
        llm=llm,
        tts=made.tts(),
        policy=policy,
        conversation=conv,
        vad_factory=lambda rate: FrameVad.create(silero, rate),
        smart_turn=smart_turn,
        emergency_tts=made.local_voice(),
    )


def build_tts(kind: str) -> TTSProvider:
    """One local voice by name (the simulated caller's, or a last-resort voice)."""
    return Providers(Settings()).one_tts(kind)


class ConversationAgent:
    """The agent ``parley serve`` runs: one :class:`CallSession` per call, sessions kept for records."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions: dict[str, CallSession] = {}

    async def __call__(self, call: Call) -> None:
        session = CallSession(call, self.engine)
        self.sessions[call.uuid] = session
        await session.run()


@dataclass(slots=True)
class Running:
    """A started parley: its parts, for tests and the status endpoint."""

    esl: EslClient
    server: AudioStreamServer
    bridge: Bridge

    async def close(self) -> None:
        await self.bridge.close()
        await self.server.close()
        await self.esl.close()


async def start(settings: Settings, agent: Agent | None = None) -> Running:
    """Start the WebSocket server and the ESL client; raise at once on a wrong ESL password or ACL.

    If FreeSWITCH is simply not up yet, keep retrying in the background (a refused connection is not fatal).
    """
    fs = settings.freeswitch
    esl = EslClient(fs.esl)
    bridge = Bridge(fs, esl, agent or EchoAgent(settings.agent))
    server = AudioStreamServer(fs.audio_stream, bridge.on_stream)
    await server.start()
    try:
        await esl.start(wait=True)
    except EslConnectError as exc:
        log.warning("%s; will keep retrying", exc)
        await esl.start(wait=False)
    except BaseException:
        await server.close()
        raise
    log.info(
        "parley ready: mod_audio_stream on ws://%s:%d%s/<uuid>, ESL %s:%d",
        fs.audio_stream.listen_host, server.port, fs.audio_stream.path, fs.esl.host, fs.esl.port,
    )
    return Running(esl, server, bridge)


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> int:
    """Run until SIGINT/SIGTERM (or ``stop``); return a process exit code."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    running = await start(settings)
    fatal = asyncio.ensure_future(running.esl.wait_fatal())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({fatal, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        fatal.cancel()
        stopped.cancel()
        log.info("shutting down: %d active call(s)", len(running.bridge.calls))
        await running.close()
    if fatal.done() and not fatal.cancelled() and fatal.exception() is None:
        log.error("giving up: %s", fatal.result())
        return 2
    return 0
