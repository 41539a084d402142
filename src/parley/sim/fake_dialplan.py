"""A fake FreeSWITCH channel's application bookkeeping and dialplan, as events.

Owns: emitting one channel's events, what ``switch_core_session_exec`` does around every application
(CHANNEL_EXECUTE / CHANNEL_EXECUTE_COMPLETE, ``current_application*``, ``current_loop``/``total_loops``
for queued executes, ``Application-UUID``), the inline applications (``set``, ``log``...) and the two
recorded dialplans: extension ``agent`` (answer, set STREAM_* + the stream start, log, park) and extension
``park`` (answer, park). No asyncio; the variable order this produces matches the recordings.
"""

from __future__ import annotations

import json
import uuid as uuidlib
from collections.abc import Callable, Mapping

from parley.sim.esl_wire import FsEvent
from parley.sim.fake_channel import STATE_ACTIVE, STATE_ANSWERING, STATE_RINGING, ChannelState, EventFactory

STREAM_DIALPLAN = (("STREAM_MESSAGE_DEFLATE", "true"), ("STREAM_BUFFER_SIZE", "20"))
INLINE_APPS = frozenset({"answer", "pre_answer", "ring_ready", "log", "info", "event", "set", "unset", "export"})


class ChannelEvents:
    def __init__(
        self,
        events: EventFactory,
        fire: Callable[[FsEvent], None],
        channel: ChannelState,
        clock: Callable[[], float],
    ) -> None:
        self._events = events
        self._fire = fire
        self._channel = channel
        self._clock = clock

    def emit(self, name: str, extra: Mapping[str, str | None] | None = None, body: str | None = None) -> None:
        self._fire(self._events.build(name, self._channel, extra, body))

    def exec_event(self, app: str, data: str, app_uuid: str, *, loops: bool = False) -> None:
        """CHANNEL_EXECUTE; ``loops`` for executes queued by sendmsg/uuid_broadcast."""
        ch = self._channel
        if loops:
            ch.set_var("current_loop", "1")
            ch.set_var("total_loops", "1")
        ch.set_var("current_application_response", None)
        ch.set_var("current_application", app)
        ch.set_var("current_application_data", data or None)
        extra = {"Application": app, "Application-Data": data or None, "Application-UUID": app_uuid}
        self.emit("CHANNEL_EXECUTE", extra)
        ch.set_var("current_application", app)
        ch.last_app, ch.last_arg = app, data

    def exec_done(
        self, app: str, data: str, app_uuid: str, response: str | None, *, loops: bool = False, reported: str = ""
    ) -> None:
        """CHANNEL_EXECUTE_COMPLETE; ``response`` is stored as the channel's application response,
        ``reported`` overrides what the event says (the park reports the last stored response)."""
        ch = self._channel
        if response is not None:
            ch.set_var("current_application_response", response)
        extra = {
            "Application": app,
            "Application-Data": data or None,
            "Application-Response": reported or response or "_none_",
            "Application-UUID": app_uuid,
        }
        self.emit("CHANNEL_EXECUTE_COMPLETE", extra)
        if loops:
            ch.set_var("current_loop", None)
            ch.set_var("total_loops", None)

    def inline(self, app: str, data: str, app_uuid: str | None = None, *, loops: bool = False) -> None:
        """An application that completes at once (``set``, ``unset``, ``log``, ``answer``...)."""
        app_uuid = app_uuid or str(uuidlib.uuid4())
        self.exec_event(app, data, app_uuid, loops=loops)
        name, _, value = data.partition("=")
        if app in ("set", "export") and name:
            self._channel.set_var(name, value or None)
        elif app == "unset":
            self._channel.set_var(data, None)
        self.exec_done(app, data, app_uuid, None, loops=loops)

    def run_dialplan(
        self,
        ws_url: str | None,
        extra_headers: Mapping[str, str] | None,
        created_at: float,
        channel_vars: Mapping[str, str],
    ) -> tuple[float, str]:
        """CHANNEL_CREATE .. CHANNEL_PARK; returns (answered_at on the clock, the park's Application-UUID).

        ``channel_vars`` become ``set`` actions before ``answer`` (as in parley's own rendered dialplan).
        """
        ch = self._channel
        ch.apply("create")
        self.emit("CHANNEL_CREATE")
        ch.state = STATE_RINGING
        ch.apply("dialplan")
        if ws_url is None:  # recorded: the `park` extension's condition captures nothing, so no DP_MATCH
            ch.set_var("DP_MATCH", None)
        for name, value in channel_vars.items():
            self.inline("set", f"{name}={value}")
        answer_uuid = str(uuidlib.uuid4())
        self.exec_event("answer", "", answer_uuid)
        answered_at = self._clock()
        ch.answered_us = ch.created_us + max(0, round((answered_at - created_at) * 1e6))
        ch.apply("answer")
        ch.state = STATE_ANSWERING
        self.emit("CHANNEL_ANSWER")
        ch.apply("answer_complete")
        ch.state = STATE_ACTIVE
        self.exec_done("answer", "", answer_uuid, None)
        if ws_url is not None:  # extension `agent`; without a URL the call ran extension `park`
            sets = [(name, value) for name, value in STREAM_DIALPLAN if name not in channel_vars]
            if extra_headers:
                sets.append(("STREAM_EXTRA_HEADERS", json.dumps(dict(extra_headers), separators=(",", ":"))))
            sets += [("agent_ws_url", ws_url), ("audio_stream_result", "+OK Success\n")]
            for name, value in sets:
                self.inline("set", f"{name}={value}")
            self.inline("log", "INFO audio_stream start: +OK Success\n")
        park_uuid = str(uuidlib.uuid4())
        self.exec_event("park", "", park_uuid)
        self.emit("CHANNEL_PARK")
        return answered_at, park_uuid
