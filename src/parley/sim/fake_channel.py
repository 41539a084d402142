"""Channel state and event construction for the fake FreeSWITCH.

Owns: the recorded event templates (``data/fake_freeswitch_events.json``, generated from the genuine
FreeSWITCH 1.10.12 recordings by ``tests/sim/gen_fake_templates.py``), one channel's state (its
ordered channel variables, state names, times) and turning both into :class:`~parley.sim.esl_wire.FsEvent`
objects with the header names, order and static values FreeSWITCH uses. Knows nothing of sockets or
asyncio; it never reads the shared fixtures.

Channel variables follow FreeSWITCH's own list semantics: setting a variable removes it and appends it
at the end (``switch_channel_set_variable``), which is what produces the recorded header order.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources

from parley.sim.esl_wire import FsEvent

TEMPLATE_FILE = "fake_freeswitch_events.json"

# codec name -> (RTP payload type, clock rate)
CODECS: dict[str, tuple[int, int]] = {"PCMU": (0, 8000), "PCMA": (8, 8000)}

# Hangup cause -> Q.850 code (switch_channel.c CAUSE_CHART, the common ones).
Q850: dict[str, int] = {
    "UNALLOCATED_NUMBER": 1,
    "NORMAL_CLEARING": 16,
    "USER_BUSY": 17,
    "NO_USER_RESPONSE": 18,
    "NO_ANSWER": 19,
    "CALL_REJECTED": 21,
    "NORMAL_UNSPECIFIED": 31,
    "NORMAL_TEMPORARY_FAILURE": 41,
    "RECOVERY_ON_TIMER_EXPIRE": 102,
    "ORIGINATOR_CANCEL": 487,
    "LOSE_RACE": 502,
    "MANAGER_REQUEST": 503,
    "SYSTEM_SHUTDOWN": 503,
    "ALLOTTED_TIMEOUT": 602,
    "MEDIA_TIMEOUT": 604,
}

_TOKEN = re.compile(r"\$\{(\w+)\}")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# (Channel-State, Channel-Call-State, Channel-State-Number, Answer-State) as recorded at each stage.
STATE_CREATED = ("CS_INIT", "DOWN", "2", "ringing")
STATE_RINGING = ("CS_EXECUTE", "RINGING", "4", "ringing")
STATE_ANSWERING = ("CS_EXECUTE", "RINGING", "4", "answered")
STATE_ACTIVE = ("CS_EXECUTE", "ACTIVE", "4", "answered")
STATE_HANGUP = ("CS_EXECUTE", "ACTIVE", "10", "hangup")
STATE_REPORTING = ("CS_REPORTING", "HANGUP", "11", "hangup")


@dataclass(frozen=True, slots=True)
class EventTemplate:
    layout: tuple[str, ...]
    static: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Templates:
    events: Mapping[str, EventTemplate]
    caller_profile: tuple[tuple[str, str | None], ...]
    variables: Mapping[str, tuple[tuple[str, str], ...]]
    status_body: str

    @classmethod
    def load(cls) -> Templates:
        text = resources.files("parley.sim").joinpath("data").joinpath(TEMPLATE_FILE).read_text(encoding="utf-8")
        return cls.from_json(json.loads(text))

    @classmethod
    def from_json(cls, raw: Mapping[str, object]) -> Templates:
        events = raw["events"]
        profile = raw["caller_profile"]
        variables = raw["variables"]
        status = raw["status_body"]
        assert isinstance(events, dict) and isinstance(profile, list) and isinstance(variables, dict)
        assert isinstance(status, str)
        return cls(
            events={k: EventTemplate(tuple(v["layout"]), dict(v["static"])) for k, v in events.items()},
            caller_profile=tuple((str(n), None if v is None else str(v)) for n, v in profile),
            variables={k: tuple((str(n), str(v)) for n, v in v_list) for k, v_list in variables.items()},
            status_body=status,
        )


def _stamp(epoch_us: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch_us / 1e6))


class ChannelState:
    """What FreeSWITCH knows about one channel: variables (ordered), state names, times, codec."""

    def __init__(self, *, uuid: str, caller: str, dest: str, codec: str, session_id: int, templates: Templates) -> None:
        if codec not in CODECS:
            raise ValueError(f"unsupported codec {codec!r} (the fake models {', '.join(CODECS)})")
        self.uuid = uuid
        self.caller = caller
        self.dest = dest
        self.codec = codec
        self.payload_type, self.codec_rate = CODECS[codec]
        self.session_id = session_id
        self.templates = templates
        self.variables: dict[str, str] = {}
        self.state = STATE_CREATED
        self.hangup_cause: str | None = None
        now = int(time.time() * 1e6)
        self.created_us = now
        self.answered_us = 0
        self.hangup_us = 0
        self.last_app = ""
        self.last_arg = ""

    # ---- variables ------------------------------------------------------------------------------

    def set_var(self, name: str, value: str | None) -> None:
        """``switch_channel_set_variable``: (re)append at the end; ``None`` unsets."""
        self.variables.pop(name, None)
        if value is not None:
            self.variables[name] = value

    def apply(self, step: str) -> None:
        """Set the variables FreeSWITCH adds at a recorded step (``create``, ``answer``, ``hangup``...)."""
        for name, raw in self.templates.variables[step]:
            value = self.expand(raw)
            if value != "":
                self.set_var(name, value)

    def tokens(self) -> dict[str, str]:
        end = self.hangup_us or int(time.time() * 1e6)
        billed = max(0, end - (self.answered_us or end))
        cause = self.hangup_cause or "NONE"
        return {
            "uuid": self.uuid,
            "caller": self.caller,
            "dest": self.dest,
            "codec": self.codec,
            "pt": str(self.payload_type),
            "session_id": str(self.session_id),
            "created_us": str(self.created_us),
            "created_s": str(self.created_us // 1_000_000),
            "created_stamp": _stamp(self.created_us),
            "answered_us": str(self.answered_us),
            "answered_s": str(self.answered_us // 1_000_000),
            "answered_stamp": _stamp(self.answered_us) if self.answered_us else "",
            "hangup_us": str(self.hangup_us),
            "hangup_s": str(self.hangup_us // 1_000_000),
            "hangup_stamp": _stamp(self.hangup_us) if self.hangup_us else "",
            "duration_s": str(round(billed / 1e6)),
            "duration_ms": str(billed // 1000),
            "duration_us": str(billed),
            "last_app": self.last_app,
            "last_arg": self.last_arg,
            "hangup_cause": cause,
            "hangup_cause_q850": str(Q850.get(cause, 0)),
        }

    def expand(self, template: str) -> str:
        if "${" not in template:
            return template
        toks = self.tokens()
        return _TOKEN.sub(lambda m: toks[m.group(1)], template)

    def caller_value(self, name: str, template: str | None) -> str:
        if template is not None:
            return self.expand(template)
        if name in ("Caller-Profile-Created-Time", "Caller-Channel-Created-Time"):
            return str(self.created_us)
        if name == "Caller-Channel-Answered-Time":
            return str(self.answered_us)
        if name == "Caller-Channel-Hangup-Time":
            return str(self.hangup_us)
        raise KeyError(name)


class EventFactory:
    """Builds events from the templates: one per FreeSWITCH instance (Core-UUID, Event-Sequence)."""

    def __init__(self, templates: Templates, *, core_uuid: str, wallclock: Callable[[], float] = time.time) -> None:
        self.templates = templates
        self.core_uuid = core_uuid
        self._wallclock = wallclock
        self._seq = itertools.count(1)

    def _core(self) -> dict[str, str]:
        now = self._wallclock()
        g = time.gmtime(now)
        gmt = (
            f"{_DAYS[g.tm_wday]}, {g.tm_mday:02d} {_MONTHS[g.tm_mon - 1]} {g.tm_year} "
            f"{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d} GMT"
        )
        return {
            "Core-UUID": self.core_uuid,
            "Event-Date-Local": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)),
            "Event-Date-GMT": gmt,
            "Event-Date-Timestamp": str(int(now * 1e6)),
            "Event-Sequence": str(next(self._seq)),
        }

    def build(
        self,
        name: str,
        channel: ChannelState | None,
        extra: Mapping[str, str | None] | None = None,
        body: str | None = None,
    ) -> FsEvent:
        """An event named ``name``; ``extra`` supplies event-specific headers (``None`` omits one)."""
        tpl = self.templates.events[name]
        values: dict[str, str | None] = dict(self._core())
        if channel is not None:
            cs, ccs, csn, ans = channel.state
            values.update(
                {
                    "Channel-State": cs,
                    "Channel-Call-State": ccs,
                    "Channel-State-Number": csn,
                    "Answer-State": ans,
                    "Hangup-Cause": channel.hangup_cause,
                }
            )
        if extra:
            values.update(extra)
        headers: list[tuple[str, str]] = []
        for h in tpl.layout:
            if h == "@caller":
                if channel is not None:
                    headers += [(n, channel.caller_value(n, v)) for n, v in self.templates.caller_profile]
            elif h == "@vars":
                if channel is not None:
                    headers += [("variable_" + k, v) for k, v in channel.variables.items()]
            elif h in values:
                value = values[h]
                if value is not None:
                    headers.append((h, value))
            elif h in tpl.static:
                static = tpl.static[h]
                headers.append((h, channel.expand(static) if channel is not None else static))
        if extra:  # headers the recordings never showed (e.g. a playback's {k=v} file params) go last
            layout = set(tpl.layout)
            headers += [(k, v) for k, v in extra.items() if k not in layout and v is not None]
        return FsEvent(name, headers, body)
