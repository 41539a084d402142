"""Tests for the rendered FreeSWITCH configuration: real files in tmp_path, parsed back as FreeSWITCH would."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import stat
import subprocess
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from parley.config import Settings, settings_from_mapping
from parley.errors import ConfigError
from parley.freeswitch.conf_render import (
    ENV_FILE,
    ESL_PASSWORD_ENV,
    STREAM_SECRET_ENV,
    STREAM_SECRET_VAR,
    RenderResult,
    generate_secret,
    render_config,
)
from parley.freeswitch.stream_token import check_stream_token

DIALPLAN = "dialplan/public/00_parley_agent.xml"
DIALPLAN_LUA = "dialplan/public/00_parley_agent_lua.xml"
LUA = "scripts/parley_agent.lua"
ESL_CONF = "autoload_configs/event_socket.conf.xml"
ACL = "autoload_configs/acl.conf.parley.xml"
VARS = "vars.parley.xml"
README = "README.parley-freeswitch.txt"
ALL_FILES = {DIALPLAN, DIALPLAN_LUA, LUA, ESL_CONF, ACL, VARS, README, ENV_FILE}

PASSWORD = "Xq7-vR2pLk9_wT4zYb8nCm3sHd6fJg5e"
SECRET = "sT9_kP2mW7xQ4vN8rB3yL6cZ5hD1fGaJ"


def settings(**sections: Any) -> Settings:
    return settings_from_mapping({"freeswitch": sections} if sections else {}, env={})


def render(
    tmp_path: Path, s: Settings | None = None, *, esl_password: str | None = None, stream_secret: str | None = None
) -> RenderResult:
    out = tmp_path / "out"
    return render_config(s or settings(), out, esl_password=esl_password, stream_secret=stream_secret)


def actions(path: Path) -> list[tuple[str, str]]:
    root = ET.parse(path).getroot()
    return [(a.get("application", ""), a.get("data", "")) for a in root.iter("action")]


def set_value(acts: list[tuple[str, str]], var: str) -> str:
    values = [data.partition("=")[2] for app, data in acts if app == "set" and data.startswith(var + "=")]
    assert len(values) == 1, (var, acts)
    return values[0]


def fs_globals(out: Path) -> dict[str, str]:
    """The X-PRE-PROCESS set lines of vars.parley.xml, as FreeSWITCH's preprocessor reads them."""
    root = ET.parse(out / VARS).getroot()
    pairs = [e.get("data", "").partition("=") for e in root.iter("X-PRE-PROCESS") if e.get("cmd") == "set"]
    return {name: value for name, _, value in pairs}


# innermost ${var} / ${api(args)}; args may hold a balanced {...} with no ${ inside (the JSON metadata): the
# expansion counts nested braces, so the metadata's own braces do not end the ${...}
_INNERMOST = re.compile(r"\$\{([A-Za-z0-9_]+)(?:\(((?:[^${}()]|\{[^${}()]*\})*)\))?\}")


def fs_expand(data: str, variables: Mapping[str, str], apis: Mapping[str, Callable[[str], str]]) -> str:
    """Expand ${var} and ${api(args)} innermost first, as switch_channel_expand_variables does."""
    while m := _INNERMOST.search(data):
        name, args = m.group(1), m.group(2)
        value = variables[name] if args is None else apis[name](args)
        data = data[: m.start()] + value + data[m.end() :]
    return data


def md5_api(args: str) -> str:  # mod_commands: md5 hex of the whole argument string
    return hashlib.md5(args.encode()).hexdigest()


@pytest.fixture(autouse=True)
def _config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default stream secret file lives under XDG_CONFIG_HOME: never the real home in tests."""
    home = tmp_path / "config-home"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


@pytest.fixture
def call_uuid() -> str:
    return str(uuidlib.uuid4())


# --------------------------------------------------------------------------------------------------


def test_writes_every_file_with_private_modes_for_secrets(tmp_path: Path) -> None:
    result = render(tmp_path)
    out = tmp_path / "out"
    assert {p.relative_to(out).as_posix() for p in result.paths} == ALL_FILES
    assert all(p.is_file() for p in result.paths)
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in result.paths}
    assert modes[ESL_CONF] == modes[VARS] == 0o640
    assert modes[ENV_FILE] == 0o600
    assert not list(out.rglob(".*.tmp"))
    assert result.esl_password_generated and result.stream_secret_generated
    assert len(result.esl_password) >= 32 and len(result.stream_secret) >= 32


def test_every_xml_file_is_well_formed(tmp_path: Path) -> None:
    render(tmp_path, settings(dialplan={"record_sessions": True, "destination_pattern": r'^(a&b|<c>|"d")$'}))
    xml_files = list((tmp_path / "out").rglob("*.xml"))
    assert len(xml_files) == 5
    for path in xml_files:
        ET.parse(path)  # raises on malformed XML


def test_dialplan_sets_stream_variables_then_answers_then_streams_then_parks(tmp_path: Path) -> None:
    render(tmp_path)
    acts = actions(tmp_path / "out" / DIALPLAN)
    apps = [app for app, _ in acts]
    assert set_value(acts, "STREAM_HEART_BEAT") == "15"
    assert set_value(acts, "STREAM_MESSAGE_DEFLATE") == "true"
    assert set_value(acts, "STREAM_SUPPRESS_LOG") == "true"
    assert set_value(acts, "STREAM_BUFFER_SIZE") == "20"
    assert set_value(acts, "playback_terminators") == "none"
    stream_vars = [i for i, (app, data) in enumerate(acts) if app == "set" and data.startswith("STREAM_")]
    answer = apps.index("answer")
    start = next(i for i, (_, data) in enumerate(acts) if "uuid_audio_stream(" in data)
    assert max(stream_vars) < answer < start
    assert apps[-1] == "park" and "record_session" not in apps
    root = ET.parse(tmp_path / "out" / DIALPLAN).getroot()
    assert root.find("extension").get("name") == "parley_agent"  # type: ignore[union-attr]
    assert root.find("extension/condition").get("expression") == "^(parley|agent)$"  # type: ignore[union-attr]


def test_token_header_expands_to_what_parley_accepts(tmp_path: Path, call_uuid: str) -> None:
    result = render(tmp_path, stream_secret=SECRET)
    out = tmp_path / "out"
    variables = {"uuid": call_uuid, **fs_globals(out)}
    assert variables[STREAM_SECRET_VAR] == SECRET
    value = set_value(actions(out / DIALPLAN), "STREAM_EXTRA_HEADERS")
    assert SECRET not in (out / DIALPLAN).read_text()  # the secret stays out of the debug dialplan trace
    headers = json.loads(fs_expand(value, variables, {"md5": md5_api}))
    assert check_stream_token(result.stream_secret, call_uuid, headers)
    assert not check_stream_token(result.stream_secret, str(uuidlib.uuid4()), headers)


def test_stream_start_expands_to_the_command_parley_serves(tmp_path: Path, call_uuid: str) -> None:
    render(tmp_path, settings(audio_stream={"sample_rate": 8000, "listen_port": 9100, "path": "/fs"}))
    calls: list[str] = []

    def uuid_audio_stream(args: str) -> str:
        calls.append(args)
        return "+OK Success\n"

    apis = {"uuid_audio_stream": uuid_audio_stream}
    value = set_value(actions(tmp_path / "out" / DIALPLAN), "parley_stream_result")
    assert fs_expand(value, {"uuid": call_uuid}, apis) == "+OK Success\n"
    # mod_audio_stream splits on spaces into at most 6 tokens (FreeSWITCH switch_separate_string)
    assert calls[0].split(" ") == [
        call_uuid, "start", f"ws://127.0.0.1:9100/fs/{call_uuid}", "mono", "8k", '{"node":"default"}'
    ]


@pytest.mark.parametrize(("rate", "token"), [(8000, "8k"), (16000, "16k"), (48000, "48000")])
def test_rate_argument(tmp_path: Path, rate: int, token: str) -> None:
    render(tmp_path, settings(audio_stream={"sample_rate": rate}))
    start = set_value(actions(tmp_path / "out" / DIALPLAN), "parley_stream_result")
    assert start.endswith(f' mono {token} {{"node":"default"}})}}')
    assert f'local RATE = "{token}"' in (tmp_path / "out" / LUA).read_text()


def test_record_sessions_records_before_park(tmp_path: Path) -> None:
    render(tmp_path, settings(dialplan={"record_sessions": True}))
    apps = [app for app, _ in actions(tmp_path / "out" / DIALPLAN)]
    assert apps.index("answer") < apps.index("record_session") < apps.index("park") == len(apps) - 1
    assert "local RECORD_SESSIONS = true" in (tmp_path / "out" / LUA).read_text()


def test_xml_special_characters_survive_escaping(tmp_path: Path) -> None:
    pattern = r'^(1\d{3}|a&b|<x>|"q")$'
    render(tmp_path, settings(dialplan={"destination_pattern": pattern, "extension_name": 'ag"<&>'}))
    for name in (DIALPLAN, DIALPLAN_LUA):
        root = ET.parse(tmp_path / "out" / name).getroot()
        assert root.find("extension/condition").get("expression") == pattern  # type: ignore[union-attr]
    assert ET.parse(tmp_path / "out" / DIALPLAN).getroot().find("extension").get("name") == 'ag"<&>'  # type: ignore[union-attr]


def test_context_names_the_dialplan_directory(tmp_path: Path) -> None:
    result = render(tmp_path, settings(dialplan={"context": "agents"}))
    rel = {p.relative_to(tmp_path / "out").as_posix() for p in result.paths}
    assert "dialplan/agents/00_parley_agent.xml" in rel
    assert 'local FALLBACK_CONTEXT = "agents"' in (tmp_path / "out" / LUA).read_text()


@pytest.mark.parametrize("context", ["../etc", "a/b", "", ".hidden", "pub lic"])
def test_unsafe_context_is_refused(tmp_path: Path, context: str) -> None:
    with pytest.raises(ConfigError, match="context"):
        render(tmp_path, settings(dialplan={"context": context}))


def test_event_socket_binds_loopback_with_the_acl(tmp_path: Path) -> None:
    result = render(tmp_path, esl_password=PASSWORD)
    root = ET.parse(tmp_path / "out" / ESL_CONF).getroot()
    assert root.tag == "configuration" and root.get("name") == "event_socket.conf"
    params = {p.get("name"): p.get("value") for p in root.iter("param")}
    assert params["listen-ip"] == "127.0.0.1"
    assert params["listen-port"] == "8021"
    assert params["password"] == PASSWORD == result.esl_password
    assert params["apply-inbound-acl"] == "parley_esl"
    assert not result.esl_password_generated and result.warnings == ()


def test_acl_fragment_lists_the_allowed_cidrs(tmp_path: Path) -> None:
    render(tmp_path, settings(esl_allowed_cidrs=["127.0.0.1/32", "10.1.2.0/24", "10.1.2.9/24", "fd00::7"]))
    root = ET.parse(tmp_path / "out" / ACL).getroot()
    assert root.tag == "list" and root.get("name") == "parley_esl" and root.get("default") == "deny"
    nodes = [(n.get("type"), n.get("cidr")) for n in root.iter("node")]
    assert nodes == [("allow", "127.0.0.1/32"), ("allow", "10.1.2.0/24"), ("allow", "fd00::7/128")]


@pytest.mark.parametrize("cidrs", [[], ["0.0.0.0/0"], ["::/0"], ["not-a-net"]])
def test_bad_acl_is_refused(tmp_path: Path, cidrs: list[str]) -> None:
    with pytest.raises(ConfigError, match="esl_allowed_cidrs"):
        render(tmp_path, settings(esl_allowed_cidrs=cidrs))


@pytest.mark.parametrize(
    ("host", "listen", "warns"),
    [("10.0.0.5", "10.0.0.5", False), ("localhost", "127.0.0.1", False), ("::", "::", True),
     ("0.0.0.0", "0.0.0.0", True), ("freeswitch.internal", "127.0.0.1", True)],
)  # fmt: skip
def test_listen_ip_follows_a_concrete_esl_host(tmp_path: Path, host: str, listen: str, warns: bool) -> None:
    result = render(tmp_path, settings(esl={"host": host}))
    params = {p.get("name"): p.get("value") for p in ET.parse(tmp_path / "out" / ESL_CONF).getroot().iter("param")}
    assert params["listen-ip"] == listen and params["apply-inbound-acl"] == "parley_esl"
    assert bool(result.warnings) is warns


def test_vars_fragment_disables_system_commands(tmp_path: Path) -> None:
    result = render(tmp_path)
    values = fs_globals(tmp_path / "out")
    assert values["disable_system_api_commands"] == "true"
    assert values["disable_system_app_commands"] == "true"
    assert values[STREAM_SECRET_VAR] == result.stream_secret


def test_env_file_and_result_carry_the_secrets(tmp_path: Path) -> None:
    result = render(tmp_path, esl_password=PASSWORD, stream_secret=SECRET)
    lines = (tmp_path / "out" / ENV_FILE).read_text().splitlines()
    assert f"{ESL_PASSWORD_ENV}={PASSWORD}" in lines and f"{STREAM_SECRET_ENV}={SECRET}" in lines
    assert result.env == {ESL_PASSWORD_ENV: PASSWORD, STREAM_SECRET_ENV: SECRET}
    for text in (repr(result), result.summary()):
        assert PASSWORD not in text and SECRET not in text
    assert ESL_PASSWORD_ENV in result.summary() and STREAM_SECRET_ENV in result.summary()


def test_configured_secrets_are_used(tmp_path: Path) -> None:
    s = settings(esl={"password": PASSWORD}, audio_stream={"token_secret": SECRET})
    result = render(tmp_path, s)
    assert (result.esl_password, result.stream_secret) == (PASSWORD, SECRET)
    assert not result.esl_password_generated and not result.stream_secret_generated
    assert render(tmp_path, s, esl_password=SECRET).esl_password == SECRET  # the argument wins


def _texts(out: Path) -> Iterator[tuple[Path, str]]:
    for path in out.rglob("*"):
        if path.is_file():
            yield path, path.read_text(encoding="utf-8")


def test_no_default_password_strings_across_many_renders(tmp_path: Path) -> None:
    for i in range(200):
        out = tmp_path / str(i)
        render_config(settings(), out)
        for path, text in _texts(out):
            assert "1234" not in text and "ClueCon" not in text, path
        shutil.rmtree(out)


def test_generated_secret_is_redrawn_when_it_contains_a_default() -> None:
    draws = iter(["x" * 20 + "1234" + "y" * 20, "a" * 20 + "ClUeCoN" + "b" * 20, "short", "Z" * 43])
    assert generate_secret(lambda _n: next(draws)) == "Z" * 43


@pytest.mark.parametrize("password", ["ClueCon", "cluecon", "1234", "password"])
def test_default_esl_password_is_refused(tmp_path: Path, password: str) -> None:
    with pytest.raises(ConfigError, match="default ESL password"):
        render(tmp_path, settings(esl={"password": password}))
    with pytest.raises(ConfigError, match="default ESL password"):
        render(tmp_path, esl_password=password)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"esl_password": "short"}, "too short"), ({"stream_secret": "has space" * 3}, "only contain"),
     ({"stream_secret": "${system(id)}" * 2}, "only contain"), ({"esl_password": "Abc1234" * 3}, "default"),
     ({"stream_secret": "aClueConZ" * 2}, "default")],
)  # fmt: skip
def test_unsafe_configured_secrets_are_refused(tmp_path: Path, kwargs: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        render_config(settings(), tmp_path / "out", **kwargs)


@pytest.mark.parametrize(
    "section",
    [{"esl": {"port": 12345}}, {"dialplan": {"destination_pattern": "^1234$"}},
     {"audio_stream": {"listen_port": 41234}}, {"dialplan": {"fallback_extension": "1234"}}],
)  # fmt: skip
def test_configured_values_that_would_render_a_default_are_refused(tmp_path: Path, section: Any) -> None:
    with pytest.raises(ConfigError, match="'1234'"):
        render(tmp_path, settings(**section))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "stream",
    [{"listen_host": "::1"}, {"public_url": "ws://my_host:8765"}, {"public_url": "http://x:1"},
     {"public_url": "ws://x:8765/a b"}, {"public_url": "ws://x/p?uuid=1"}, {"path": "/${system(id)}"}],
)  # fmt: skip
def test_stream_urls_mod_audio_stream_would_reject_are_refused(tmp_path: Path, stream: Any) -> None:
    with pytest.raises(ConfigError, match="FreeSWITCH would dial"):
        render(tmp_path, settings(audio_stream=stream))


def test_remote_plain_websocket_warns(tmp_path: Path) -> None:
    result = render(tmp_path, settings(audio_stream={"public_url": "ws://agent.example.net:8765"}))
    assert any("clear text" in w for w in result.warnings)
    result = render(tmp_path, settings(audio_stream={"public_url": "wss://agent.example.net"}))
    assert any("USE_TLS" in w for w in result.warnings)


def test_lua_helper_constants(tmp_path: Path) -> None:
    render(tmp_path, settings(dialplan={"fallback_extension": "operator XML default"}))
    lua = (tmp_path / "out" / LUA).read_text()
    assert 'local DIAL_URL = "ws://127.0.0.1:8765/call"' in lua
    assert 'local FALLBACK_DEST = "operator"' in lua and 'local FALLBACK_CONTEXT = "default"' in lua
    assert f'local SECRET_VAR = "{STREAM_SECRET_VAR}"' in lua
    assert 'session:hangup("TEMPORARY_FAILURE")' in lua and 'session:execute("park")' in lua
    assert lua.index("session:answer()") < lua.index('"uuid_audio_stream"') < lua.index('execute("park")')
    lua_xml = actions(tmp_path / "out" / DIALPLAN_LUA)
    assert lua_xml == [("lua", "parley_agent.lua")]


@pytest.mark.parametrize("fallback", ["a b c d", "x;y", "1000 XML ../etc"])
def test_bad_fallback_is_refused(tmp_path: Path, fallback: str) -> None:
    with pytest.raises(ConfigError, match="fallback_extension"):
        render(tmp_path, settings(dialplan={"fallback_extension": fallback}))


def _luac() -> str | None:
    for name in ("luac", "luac5.4", "luac5.3", "luac5.2", "luac5.1"):
        if found := shutil.which(name):
            return found
    return None


@pytest.mark.skipif(_luac() is None, reason="no luac on PATH")
def test_lua_helper_compiles(tmp_path: Path) -> None:
    render(tmp_path, settings(dialplan={"record_sessions": True, "fallback_extension": "operator"}))
    luac = _luac()
    assert luac is not None
    subprocess.run([luac, "-p", str(tmp_path / "out" / LUA)], check=True, capture_output=True)


# ---- the shared stream secret (issue 10 item 4) ----------------------------------------------------------


def test_generated_secret_is_stored_once_mode_600_and_reused(tmp_path: Path, _config_home: Path) -> None:
    first = render(tmp_path)
    stored = _config_home / "parley" / "stream-token.secret"
    assert first.stream_secret_generated and first.secret_file == stored
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stored.read_text().strip() == first.stream_secret
    second = render_config(settings(), tmp_path / "again")
    assert second.stream_secret == first.stream_secret and not second.stream_secret_generated
    assert fs_globals(tmp_path / "again")[STREAM_SECRET_VAR] == first.stream_secret
    assert str(stored) in second.summary() and first.stream_secret not in second.summary()


def test_serve_reads_the_secret_config_stored(tmp_path: Path) -> None:
    from parley import app

    path = tmp_path / "secret"
    s = settings(audio_stream={"token_secret_file": str(path)})
    result = render(tmp_path, s)
    assert result.secret_file == path and stat.S_IMODE(path.stat().st_mode) == 0o600
    served = app.stream_secret(s)
    assert served.freeswitch.audio_stream.token_secret == result.stream_secret


def test_serve_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    from parley import app

    s = settings(audio_stream={"token_secret_file": str(tmp_path / "none")})
    with pytest.raises(ConfigError, match=r"no stream token secret.*parley freeswitch config"):
        app.stream_secret(s)
    assert not (tmp_path / "none").exists()  # serve never invents a secret FreeSWITCH does not have


def test_serve_without_tokens_only_when_allowed_and_says_so_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from parley import app

    s = settings(audio_stream={"token_secret_file": str(tmp_path / "none"), "allow_unauthenticated_streams": True})
    with caplog.at_level("ERROR", logger="parley.app"):
        assert app.stream_secret(s).freeswitch.audio_stream.token_secret == ""
    assert any(r.levelname == "ERROR" and "STREAM TOKENS ARE OFF" in r.getMessage() for r in caplog.records)


def test_configured_secret_wins_over_the_file(tmp_path: Path) -> None:
    from parley import app

    path = tmp_path / "secret"
    path.write_text("file-secret-abcdefghijklmnop\n")
    path.chmod(0o600)
    s = settings(audio_stream={"token_secret_file": str(path), "token_secret": SECRET})
    assert render(tmp_path, s).stream_secret == SECRET and render(tmp_path, s).secret_file is None
    assert app.stream_secret(s).freeswitch.audio_stream.token_secret == SECRET


def test_a_secret_file_others_can_read_is_refused(tmp_path: Path) -> None:
    from parley import app

    path = tmp_path / "secret"
    path.write_text("file-secret-abcdefghijklmnop\n")
    path.chmod(0o644)
    s = settings(audio_stream={"token_secret_file": str(path)})
    with pytest.raises(ConfigError, match="readable by others"):
        app.stream_secret(s)
    with pytest.raises(ConfigError, match="readable by others"):
        render(tmp_path, s)


# ---- the Lua helper waits for the stream to connect --------------------------------------------------------

_LUA_HARNESS = """
local outcome = {}
local queued = {}
for _, ev in ipairs(QUEUE) do queued[#queued + 1] = ev end
local function event(uuid, subclass, body)
  return { getHeader = function(_, h)
             if h == "Unique-ID" then return uuid elseif h == "Event-Subclass" then return subclass end
           end,
           getBody = function() return body end }
end
freeswitch = {
  consoleLog = function(level, msg) outcome[#outcome + 1] = "log " .. level .. " " .. msg end,
  getGlobalVariable = function() return "secret-value-0123456789abcdef" end,
  API = function() return { executeString = function(_, cmd)
    if string.sub(cmd, 1, 4) == "md5 " then return "0123456789abcdef0123456789abcdef" end
    outcome[#outcome + 1] = "api " .. string.sub(cmd, 1, 22)
    return START_REPLY
  end } end,
  EventConsumer = function() return {
    bind = function() end,
    pop = function()
      local spec = table.remove(queued, 1)
      if spec == nil then return nil end
      return event(spec[1], spec[2], spec[3])
    end } end,
}
session = {
  ready = function() return true end,
  get_uuid = function() return "u-1" end,
  setVariable = function(_, k, v) if k == "parley_fallback" then outcome[#outcome + 1] = "set " .. k end end,
  getVariable = function() return "1000" end,
  answer = function() end,
  execute = function(_, app) outcome[#outcome + 1] = "execute " .. app end,
  transfer = function(_, dest) outcome[#outcome + 1] = "transfer " .. dest end,
  hangup = function(_, cause) outcome[#outcome + 1] = "hangup " .. cause end,
}
dofile(SCRIPT)
for _, line in ipairs(outcome) do print(line) end
"""


def _run_lua(tmp_path: Path, queue: str, start_reply: str = "+OK Success\n") -> list[str]:
    lua = shutil.which("lua5.4") or shutil.which("lua")
    if lua is None:
        pytest.skip("no lua interpreter on PATH")
    render(tmp_path, settings(dialplan={"fallback_extension": "operator XML default"}))
    harness = tmp_path / "harness.lua"
    harness.write_text(f"QUEUE = {queue}\nSTART_REPLY = {json.dumps(start_reply)}\n"
                       f"SCRIPT = {json.dumps(str(tmp_path / 'out' / LUA))}\n{_LUA_HARNESS}")
    out = subprocess.run([lua, str(harness)], check=True, capture_output=True, text=True, timeout=30)
    return [line for line in out.stdout.splitlines() if line and not line.startswith("log")]


def test_lua_helper_parks_only_after_this_calls_connect_event(tmp_path: Path) -> None:
    queue = '{{"other", "mod_audio_stream::error", "{}"}, {"u-1", "mod_audio_stream::connect", "{}"}}'
    assert _run_lua(tmp_path, queue) == ["set parley_fallback", "api uuid_audio_stream u-1 ", "execute park"]


def test_lua_helper_takes_the_fallback_when_the_stream_is_refused(tmp_path: Path) -> None:
    body = '{\\"status\\":\\"error\\",\\"message\\":{\\"code\\":6,\\"error\\":\\"WebSocket upgrade failed\\"}}'
    queue = '{{"u-1", "mod_audio_stream::error", "' + body + '"}}'
    lines = _run_lua(tmp_path, queue)
    assert lines == ["set parley_fallback", "api uuid_audio_stream u-1 ", "transfer operator"]


def test_readme_works_for_a_source_build_without_assuming_a_user_or_systemd(tmp_path: Path) -> None:
    render(tmp_path, settings(dialplan={"context": "public"}))
    text = (tmp_path / "out" / README).read_text()
    for needed in ("P/etc/freeswitch", "P/share/freeswitch/scripts", "global_getvar conf_dir",
                   "global_getvar script_dir", "ps -o user= -C freeswitch", "fsctl shutdown restart",
                   '<X-PRE-PROCESS cmd="include" data="public/*.xml"/>', "FIRST one", "PARLEY_STREAM_TOKEN_SECRET",
                   "allow_unauthenticated_streams"):
        assert needed in text, needed
    for wrong in ("chown freeswitch:freeswitch", "/usr/local/freeswitch/conf", "/usr/local/freeswitch/scripts"):
        assert wrong not in text
    for name in (VARS, ESL_CONF):
        assert "chown freeswitch:freeswitch" not in (tmp_path / "out" / name).read_text()
