"""The ``api``/``bgapi`` commands of the fake FreeSWITCH (mod_commands + mod_audio_stream's API).

Owns: parsing each supported command line and producing its output text exactly as FreeSWITCH 1.10 words
it (recorded: ``status``, ``-ERR <cmd> Command not found!``, ``-ERR No such channel!``, ``+OK`` for
``uuid_break``, ``+OK Message sent`` for ``uuid_broadcast``, ``+OK Success`` for ``uuid_audio_stream``;
the rest from the mod_commands / mod_audio_stream source). Side effects go to the calls; knows nothing of
sockets.

Supported: status, version, uuid_exists, uuid_break, uuid_kill, uuid_broadcast, uuid_setvar,
uuid_setvar_multi, uuid_getvar, uuid_transfer, uuid_audio_stream (start|stop|send_text|pause|resume),
hupall, show channels/calls as json. Anything else answers ``-ERR <cmd> Command not found!``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from parley.sim.fake_call import FakeCall

VERSION = "FreeSWITCH Version 1.10.12-release~64bit ( 64bit)\n"
NO_CHANNEL = "-ERR No such channel!\n"
MAS_USAGE = (
    "-USAGE: <uuid> [start | stop | send_text | pause | resume | graceful-shutdown ] "
    "[wss-url | path] [mono | mixed | stereo] [8000 | 16000] [metadata]\n"
)
_WS_HOST = re.compile(r"^[A-Za-z0-9.-]+$")


@dataclass(slots=True)
class SessionStats:
    started_at: float
    total: int = 0
    peak: int = 0


class ApiCommands:
    """Runs one ``api`` command line against the fake's calls and returns its output."""

    def __init__(
        self,
        calls: Mapping[str, FakeCall],
        *,
        stats: SessionStats,
        status_template: str,
        broadcast_lead_s: Callable[[], float],
    ) -> None:
        self._calls = calls
        self._stats = stats
        self._status_template = status_template
        self._lead = broadcast_lead_s

    def live(self, uuid: str) -> FakeCall | None:
        call = self._calls.get(uuid.strip())
        return None if call is None or call.hungup else call

    def run(self, line: str) -> str:
        cmd, _, args = line.strip().partition(" ")
        args = args.strip()
        handler = getattr(self, "_cmd_" + cmd, None) if cmd.replace("_", "").isalnum() else None
        if handler is None:
            return f"-ERR {cmd} Command not found!\n"
        out: str = handler(args)
        return out

    # ---- core ---------------------------------------------------------------------------------------

    def _cmd_status(self, args: str) -> str:
        up = time.monotonic() - self._stats.started_at
        us = int(up * 1e6)
        s, us = divmod(us, 1_000_000)
        ms, us = divmod(us, 1000)
        m, s = divmod(s, 60)
        h, m = divmod(m, 60)
        d, h = divmod(h, 24)
        y, d = divmod(d, 365)
        live = sum(1 for c in self._calls.values() if not c.hungup)
        lines = self._status_template.split("\n")
        lines[0] = f"UP {y} years, {d} days, {h} hours, {m} minutes, {s} seconds, {ms} milliseconds, {us} microseconds"
        lines[2] = f"{self._stats.total} session(s) since startup"
        lines[3] = f"{live} session(s) - peak {self._stats.peak}, last 5min {self._stats.total} "
        return "\n".join(lines)

    def _cmd_version(self, args: str) -> str:
        return VERSION

    def _cmd_hupall(self, args: str) -> str:
        cause = args.split(" ", 1)[0] or "MANAGER_REQUEST"
        for call in list(self._calls.values()):
            if not call.hungup:
                call.kill(cause)
        return f"+OK hangup all channels with cause {cause}\n"

    def _cmd_show(self, args: str) -> str:
        words = args.split()
        if not words or words[0] not in ("channels", "calls") or words[-2:] != ["as", "json"]:
            return "-USAGE: show channels|calls as json (the fake only renders JSON)\n"
        rows = [
            {
                "uuid": c.uuid,
                "direction": "inbound",
                "created_epoch": str(c.channel.created_us // 1_000_000),
                "name": f"sofia/internal/{c.channel.caller}@127.0.0.1:5070",
                "state": c.channel.state[0],
                "cid_num": c.channel.caller,
                "dest": c.channel.dest,
                "application": c.variables.get("current_application", ""),
                "read_codec": c.codec,
                "callstate": c.channel.state[1],
                "callee_num": "",
            }
            for c in self._calls.values()
            if not c.hungup
        ]
        if not rows:
            return '{"row_count":0}\n'
        return json.dumps({"row_count": len(rows), "rows": rows}, separators=(",", ":")) + "\n"

    # ---- mod_commands uuid_* ----------------------------------------------------------------

    def _cmd_uuid_exists(self, args: str) -> str:
        return "true" if self.live(args) is not None else "false"

    def _cmd_uuid_break(self, args: str) -> str:
        if not args:
            return "-USAGE: <uuid> [all]\n"
        uuid, _, flag = args.partition(" ")
        call = self.live(uuid)
        if call is None:
            return NO_CHANNEL
        call.request_break(flush="all" in flag)
        return "+OK\n"

    def _cmd_uuid_kill(self, args: str) -> str:
        uuid, _, cause = args.partition(" ")
        call = self.live(uuid)
        if call is None:
            return NO_CHANNEL
        call.kill(cause.strip() or "NORMAL_CLEARING")
        return "+OK\n"

    def _cmd_uuid_broadcast(self, args: str) -> str:
        parts = args.split(" ")
        if len(parts) < 2 or not parts[0]:
            return "-USAGE: <uuid> <path> [aleg|bleg|holdb|both]\n"
        call = self.live(parts[0])
        if call is None:  # not recorded; the brief's choice for every unknown uuid
            return NO_CHANNEL
        path = parts[1]
        app, sep, app_arg = path.partition("::")
        if not sep:
            app, app_arg = "playback", path
        call.queue_execute(app, app_arg, delay_s=self._lead(), via="broadcast")
        return "+OK Message sent\n"

    def _cmd_uuid_setvar(self, args: str) -> str:
        parts = args.split(" ", 2)
        if len(parts) < 2 or not parts[0]:
            return "-USAGE: <uuid> <var> [value]\n"
        call = self.live(parts[0])
        if call is None:
            return NO_CHANNEL
        if not parts[1]:
            return "-ERR No variable specified\n"
        call.channel.set_var(parts[1], parts[2] if len(parts) == 3 else None)
        return "+OK\n"

    def _cmd_uuid_setvar_multi(self, args: str) -> str:
        uuid, _, pairs = args.partition(" ")
        call = self.live(uuid)
        if call is None:
            return NO_CHANNEL
        n = 0
        for item in pairs.split(";"):
            name, _, value = item.partition("=")
            if name:
                call.channel.set_var(name, value or None)
                n += 1
        return "+OK\n" if n else "-USAGE: <uuid> <var>=<value>;<var>=<value>...\n"

    def _cmd_uuid_getvar(self, args: str) -> str:
        parts = args.split(" ")
        if len(parts) < 2 or not parts[0]:
            return "-USAGE: <uuid> <var>\n"
        call = self.live(parts[0])
        if call is None:
            return NO_CHANNEL
        return call.variables.get(parts[1], "_undef_")

    def _cmd_uuid_transfer(self, args: str) -> str:
        parts = args.split(" ")
        if len(parts) < 2:
            return "-USAGE: <uuid> [-bleg|-both] <dest-exten> [<dialplan>] [<context>]\n"
        call = self.live(parts[0])
        if call is None:
            return NO_CHANNEL
        call.transfer()
        return "+OK\n"

    # ---- mod_audio_stream -------------------------------------------------------------------

    def _cmd_uuid_audio_stream(self, args: str) -> str:
        argv = args.split(" ", 5)
        if len(argv) < 2 or (argv[1] == "start" and len(argv) < 4):
            return MAS_USAGE
        call = self.live(argv[0])
        action = argv[1].lower()
        ok = False
        if call is None:
            ok = False
        elif action == "start":
            url, mix = argv[2], argv[3] if len(argv) > 3 else "mono"
            rate = _stream_rate(argv[4] if len(argv) > 4 else "8k")
            metadata = _unquote(argv[5]) if len(argv) > 5 else None
            if _valid_ws_url(url) and mix in ("mono", "mixed", "stereo") and rate is not None:
                ok = call.media.start(url, mix, rate, metadata, call.variables)
        elif action == "stop":
            ok = call.media.stop(_text_arg(args, 2))
        elif action == "send_text":
            text = _text_arg(args, 2)
            ok = text is not None and call.media.command("send_text", text)
        elif action in ("pause", "resume"):
            ok = call.media.command(action)
        return "+OK Success\n" if ok else "-ERR Operation Failed\n"


def _stream_rate(text: str) -> int | None:
    if text in ("8k", "16k"):
        return int(text[:-1]) * 1000
    if text.isdigit() and int(text) > 0 and int(text) % 8000 == 0:
        return int(text)
    return None


def _valid_ws_url(url: str) -> bool:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("ws", "wss"):
        return False
    hostport = rest.split("/", 1)[0].split("?", 1)[0]
    host, _, port = hostport.partition(":")
    return bool(_WS_HOST.match(host)) and (not port or port.isdigit())


def _unquote(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == "'" else text


def _text_arg(args: str, index: int) -> str | None:
    """Token ``index`` of the command; single-quoted text keeps its spaces (switch_separate_string)."""
    parts = args.split(" ", index)
    if len(parts) <= index or not parts[index]:
        return None
    rest = parts[index]
    if rest.startswith("'") and "'" in rest[1:]:
        return rest[1 : rest.index("'", 1)]
    return rest.split(" ", 1)[0]
