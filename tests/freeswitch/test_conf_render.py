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


_INNERMOST = re.compile(r"\$\{([A-Za-z0-9_]+)(?:\(([^${}()]*)\))?\}")


def fs_expand(data: str, variables: Mapping[str, str], apis: Mapping[str, Callable[[str], str]]) -> str:
    """Expand ${var} and ${api(args)} innermost first, as switch_channel_expand_variables does."""
    while m := _INNERMOST.search(data):
        name, args = m.group(1), m.group(2)
        value = variables[name] if args is None else apis[name](args)
        data = data[: m.start()] + value + data[m.end() :]
    return data


def md5_api(args: str) -> str:  # mod_commands: md5 hex of the whole argument string
    return hashlib.md5(args.encode()).hexdigest()


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
    assert calls[0].split(" ") == [call_uuid, "start", f"ws://127.0.0.1:9100/fs/{call_uuid}", "mono", "8k"]


@pytest.mark.parametrize(("rate", "token"), [(8000, "8k"), (16000, "16k"), (48000, "48000")])
def test_rate_argument(tmp_path: Path, rate: int, token: str) -> None:
    render(tmp_path, settings(audio_stream={"sample_rate": rate}))
    start = set_value(actions(tmp_path / "out" / DIALPLAN), "parley_stream_result")
    assert start.endswith(f" mono {token})}}")
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
