"""Several FreeSWITCH nodes: the configuration (freeswitch.nodes), the rendered metadata naming the node, and
parley against two fake FreeSWITCH nodes on real sockets: each call is controlled through its own node's
ESL, one node's ESL outage leaves the other's calls alone, /health's per-node view, unknown nodes refused."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import websockets

from parley import app
from parley.cli import main
from parley.config import Settings, require_node_passwords, settings_from_mapping
from parley.errors import ConfigError
from parley.freeswitch.call import Call
from parley.freeswitch.conf_render import render_files
from parley.freeswitch.esl_nodes import EslNodes
from parley.observe.metrics import Metrics
from parley.sim.echo_call import free_port
from parley.sim.fake_freeswitch import FakeFreeSwitch

SECRET = "k" * 40
FAST = {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.2}


def speech(seconds: float) -> np.ndarray:
    return (3000 * np.random.default_rng(2).standard_normal(int(seconds * 8000))).astype(np.int16)


# ---- configuration ------------------------------------------------------------------------------------


def test_no_nodes_is_one_default_node_from_freeswitch_esl_and_the_env() -> None:
    s = settings_from_mapping({"freeswitch": {"esl": {"port": 8100}}},
                              env={"PARLEY_ESL_PASSWORD": "p" * 20, "PARLEY_ESL_HOST": "10.0.0.9"})
    (node,) = s.freeswitch.esl_nodes()
    assert (node.name, node.esl.host, node.esl.port, node.esl.password) == ("default", "10.0.0.9", 8100, "p" * 20)
    assert s.freeswitch.node().name == "default"


def test_nodes_with_their_esl_and_a_password_from_the_node_env() -> None:
    s = settings_from_mapping(
        {"freeswitch": {"nodes": [
            {"name": "fs-a", "esl": {"host": "127.0.0.1", "port": 8021, "password": "a" * 20}},
            {"name": "fs-b", "esl": {"host": "127.0.0.1", "port": 8022}},
        ]}},
        env={"PARLEY_ESL_PASSWORD_FS_B": "b" * 20, "PARLEY_ESL_PASSWORD": "ignored-for-nodes-xx"},
    )
    a, b = s.freeswitch.esl_nodes()
    assert (a.name, a.esl.port, a.esl.password) == ("fs-a", 8021, "a" * 20)
    assert (b.name, b.esl.port, b.esl.password) == ("fs-b", 8022, "b" * 20)
    assert s.freeswitch.node("fs-b") is b


@pytest.mark.parametrize(("nodes", "message"), [
    ([{"name": "fs a", "esl": {}}], "must be 1-64 letters, digits, '-' or '_'"),
    ([{"name": "", "esl": {}}], "must be 1-64 letters"),
    ([{"name": "fs.a", "esl": {}}], "must be 1-64 letters"),
    ([{"name": "fs-a", "esl": {}}, {"name": "fs-a", "esl": {}}], "'fs-a' is used twice"),
    ([{"name": "fs-a", "esl": {}}, {"name": "FS_A", "esl": {}}], "share PARLEY_ESL_PASSWORD_FS_A"),
    ([{"name": "fs-a", "esl": {"port": 70000}}], "freeswitch.nodes[0].esl.port: 70000 is not a TCP port"),
    ([{"name": "fs-a", "esl": {"prot": 1}}], "freeswitch.nodes[0].esl: unknown key(s) ['prot']"),
    ([{"name": "fs-a", "secret": "x"}], "freeswitch.nodes[0]: unknown key(s) ['secret']"),
    ({"name": "fs-a"}, "freeswitch.nodes: expected a list"),
])
def test_bad_nodes_are_refused_with_a_clear_message(nodes: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"freeswitch": {"nodes": nodes}}, env={})
    assert message in str(info.value)


def test_naming_a_node_that_is_not_there_or_none_of_several() -> None:
    s = settings_from_mapping({"freeswitch": {"nodes": [{"name": "fs-a"}, {"name": "fs-b"}]}}, env={})
    with pytest.raises(ConfigError, match=r"no FreeSWITCH node named 'fs-c' \(configured: fs-a, fs-b\)"):
        s.freeswitch.node("fs-c")
    with pytest.raises(ConfigError, match=r"lists 2 nodes .* name one"):
        s.freeswitch.node()


def test_a_node_without_a_password_names_its_variable_at_start() -> None:
    s = settings_from_mapping({"freeswitch": {"nodes": [{"name": "fs-a", "esl": {"password": "a" * 20}},
                                                        {"name": "fs-b"}]}}, env={})
    with pytest.raises(ConfigError, match=r"FreeSWITCH node 'fs-b': no ESL password .*PARLEY_ESL_PASSWORD_FS_B"):
        EslNodes.from_settings(s.freeswitch.esl_nodes())


def test_serve_checks_the_nodes_passwords_not_freeswitch_esl_once_nodes_are_listed() -> None:
    good = settings_from_mapping({"freeswitch": {"nodes": [{"name": "fs-a", "esl": {"password": "a" * 20}}]}}, env={})
    require_node_passwords(good.freeswitch)  # freeswitch.esl has none, and needs none
    bad = settings_from_mapping({"freeswitch": {"nodes": [{"name": "fs-a", "esl": {"password": "ClueCon"}}]}},
                                env={})
    with pytest.raises(ConfigError, match=r"node 'fs-a': refusing to use a default ESL password.*_FS_A"):
        require_node_passwords(bad.freeswitch)
    with pytest.raises(ConfigError, match="no ESL password configured"):
        require_node_passwords(settings_from_mapping({}, env={}).freeswitch)


def test_rendered_files_are_for_one_node_and_its_metadata_names_it() -> None:
    s = settings_from_mapping({"freeswitch": {"nodes": [{"name": "fs-a", "esl": {"port": 8021}},
                                                        {"name": "fs-b", "esl": {"port": 8022}}]}}, env={})
    files, _ = render_files(s, esl_password="e" * 20, stream_secret=SECRET, node="fs-b")
    text = {f.relpath: f.text for f in files}
    assert 'name="listen-port" value="8022"' in text["autoload_configs/event_socket.conf.xml"]
    assert "mono 16k {&quot;node&quot;:&quot;fs-b&quot;})}" in text["dialplan/public/00_parley_agent.xml"]
    assert 'local NODE = "fs-b"' in text["scripts/parley_agent.lua"]
    assert 'json_field("node", NODE)' in text["scripts/parley_agent.lua"]
    with pytest.raises(ConfigError, match="name one"):
        render_files(s, esl_password="e" * 20, stream_secret=SECRET)


# ---- two nodes, real sockets ----------------------------------------------------------------------------


@dataclass
class ToneAgent:
    """Plays a short tone, waits until the test lets it go, then hangs up (or stops on the caller's hangup)."""

    calls: dict[str, Call] = field(default_factory=dict)
    played: dict[str, asyncio.Event] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, call: Call) -> None:
        self.calls[call.uuid] = call
        done = self.played.setdefault(call.uuid, asyncio.Event())
        t = np.arange(1600) / 8000
        utt = await call.playback.play((6000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16), 8000, "tone")
        await utt.wait_played()
        done.set()
        hung = asyncio.ensure_future(call.hungup.wait())
        rel = asyncio.ensure_future(self.release.wait())
        try:
            await asyncio.wait({hung, rel}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hung.cancel()
            rel.cancel()
        if not call.hungup.is_set():
            await call.hangup()


@dataclass
class Nodes:
    a: FakeFreeSwitch
    b: FakeFreeSwitch
    running: app.Running
    agent: ToneAgent
    ws_port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/call/{{uuid}}"

    @staticmethod
    async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.01)


def two_node_settings(a: FakeFreeSwitch, b: FakeFreeSwitch, ws_port: int, spool: Path) -> Settings:
    return settings_from_mapping(
        {"freeswitch": {
            "nodes": [{"name": "fs-a", "esl": {"port": a.esl_port, "password": a.password, **FAST}},
                      {"name": "fs-b", "esl": {"port": b.esl_port, **FAST}}],
            "audio_stream": {"listen_port": ws_port, "unidentified_timeout_s": 1.0, "restart_attempts": 0},
            "playback": {"spool_dir": str(spool)},
        }},
        env={"PARLEY_ESL_PASSWORD_FS_B": b.password},
    )


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    a = FakeFreeSwitch(password=secrets.token_urlsafe(18), node="fs-a")
    b = FakeFreeSwitch(password=secrets.token_urlsafe(18), node="fs-b")
    await a.start()
    await b.start()
    port = free_port()
    agent = ToneAgent()
    running = await app.start(two_node_settings(a, b, port, tmp_path / "spool"), agent)
    try:
        yield Nodes(a, b, running, agent, port)
    finally:
        agent.release.set()
        await running.close()
        await a.close()
        await b.close()


def commands_naming(fs: FakeFreeSwitch, uuid: str) -> list[bytes]:
    return [c for c in fs.commands if uuid.encode() in c]


async def test_each_call_is_controlled_through_its_own_node(nodes: Nodes) -> None:
    assert set(nodes.running.nodes) == {"fs-a", "fs-b"} and nodes.running.nodes.connected
    on_a = await nodes.a.place_call(ws_url=nodes.url, caller_audio=speech(2.0))
    on_b = await nodes.b.place_call(ws_url=nodes.url, caller_audio=speech(2.0))
    await nodes.until(lambda: all(u in nodes.agent.played and nodes.agent.played[u].is_set()
                                  for u in (on_a.uuid, on_b.uuid)))
    assert nodes.agent.calls[on_a.uuid].node == "fs-a" and nodes.agent.calls[on_b.uuid].node == "fs-b"
    nodes.agent.release.set()  # both agents hang up
    await nodes.until(lambda: on_a.hungup and on_b.hungup)
    for fs, mine, other in ((nodes.a, on_a, on_b), (nodes.b, on_b, on_a)):
        sent = commands_naming(fs, mine.uuid)
        assert any(c.startswith(f"sendmsg {mine.uuid}".encode()) and b"playback" in c for c in sent)
        assert f"api uuid_kill {mine.uuid} NORMAL_CLEARING\n\n".encode() in sent
        assert commands_naming(fs, other.uuid) == []  # nothing about the other node's call
        assert [p.status for p in fs.calls[mine.uuid].playbacks] == ["done"]
        assert fs.calls[mine.uuid].hangup_cause == "NORMAL_CLEARING"


async def test_one_nodes_esl_outage_leaves_the_other_nodes_calls_alone(nodes: Nodes) -> None:
    esl_b = nodes.running.nodes["fs-b"]
    nodes.b.refuse_esl(True)
    await nodes.b.drop_esl_connections()
    await nodes.until(lambda: not esl_b.connected)
    health = nodes.running.nodes.health()
    assert health["fs-b"]["status"] == "failing" and health["fs-b"]["port"] == nodes.b.esl_port
    assert health["fs-a"]["status"] == "ok" and health["fs-a"]["state"] == "connected"
    assert not nodes.running.nodes.connected
    assert (nodes.running.nodes.stats.last_error or "").startswith("node fs-b: ")
    metrics = Metrics()
    metrics.watch(esl=nodes.running.nodes)  # what /health reads: degraded, and the failing node named
    report = metrics.health()
    assert report.status == "degraded" and not report.esl_connected
    a, b = report.providers["esl"]  # one line per node
    assert (a["name"], a["status"], b["name"], b["status"]) == ("fs-a", "ok", "fs-b", "failing")
    assert b["port"] == nodes.b.esl_port and b["last_error"]
    scraped = metrics.render()
    assert 'parley_esl_node_connected{node="fs-a"} 1.0' in scraped
    assert 'parley_esl_node_connected{node="fs-b"} 0.0' in scraped
    assert "parley_esl_connected 0.0" in scraped  # every node up, as one figure

    on_a = await nodes.a.place_call(ws_url=nodes.url, caller_audio=speech(2.0))
    await nodes.until(lambda: on_a.uuid in nodes.agent.played and nodes.agent.played[on_a.uuid].is_set())
    await on_a.hangup()
    await nodes.until(lambda: on_a.uuid not in nodes.running.bridge.calls)
    assert [p.status for p in nodes.a.calls[on_a.uuid].playbacks] == ["done"]
    assert commands_naming(nodes.b, on_a.uuid) == []

    nodes.b.refuse_esl(False)
    await esl_b.wait_connected(10)
    assert nodes.running.nodes.health()["fs-b"]["status"] == "ok" and nodes.running.nodes.connected
    on_b = await nodes.b.place_call(ws_url=nodes.url, caller_audio=speech(2.0))
    await nodes.until(lambda: on_b.uuid in nodes.agent.played and nodes.agent.played[on_b.uuid].is_set())
    await on_b.hangup()
    await nodes.until(lambda: on_b.uuid not in nodes.running.bridge.calls)


async def test_a_stream_naming_an_unknown_node_is_refused(nodes: Nodes) -> None:
    call = await nodes.a.place_call(ws_url=nodes.url, caller_audio=speech(1.0),
                                    metadata=json.dumps({"node": "fs-z"}, separators=(",", ":")))
    await nodes.until(lambda: nodes.running.bridge.stats.streams_rejected == 1)
    assert call.uuid not in nodes.agent.calls and call.uuid not in nodes.running.bridge.calls
    await call.hangup()


@pytest.mark.parametrize("claimed_by_event", [True, False], ids=["parley_agent-events", "uuid_exists"])
async def test_a_stream_naming_no_node_finds_the_node_that_knows_its_call(nodes: Nodes, claimed_by_event: bool) -> None:
    marks = {"parley_agent": "true"} if claimed_by_event else None
    call = await nodes.b.place_call(ws_url=nodes.url, caller_audio=speech(2.0), metadata='{"caller":"1"}',
                                    channel_vars=marks)
    await nodes.until(lambda: call.uuid in nodes.agent.played and nodes.agent.played[call.uuid].is_set())
    assert nodes.agent.calls[call.uuid].node == "fs-b"
    await call.hangup()
    await nodes.until(lambda: call.uuid not in nodes.running.bridge.calls)
    assert not any(c.startswith(b"sendmsg") for c in nodes.a.commands)


async def test_a_stream_for_a_call_no_node_knows_is_refused(nodes: Nodes) -> None:
    bogus = str(uuidlib.uuid4())
    async with websockets.connect(f"ws://127.0.0.1:{nodes.ws_port}/call/{bogus}", compression=None) as ws:
        await ws.send('{"caller":"1"}')
        with pytest.raises(websockets.ConnectionClosed) as info:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1008
    assert nodes.running.bridge.stats.streams_rejected == 1
    assert f"api uuid_exists {bogus}\n\n".encode() in nodes.a.commands
    assert f"api uuid_exists {bogus}\n\n".encode() in nodes.b.commands


def test_parley_freeswitch_config_node_renders_for_that_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config-home"))
    config = tmp_path / "parley.yaml"
    config.write_text("freeswitch:\n  nodes:\n"
                      "    - {name: fs-a, esl: {host: 127.0.0.1, port: 8021}}\n"
                      "    - {name: fs-b, esl: {host: 127.0.0.1, port: 8022}}\n")
    assert main(["--config", str(config), "freeswitch", "config", "--out", str(tmp_path / "b"), "--node", "fs-b"]) == 0
    esl_conf = (tmp_path / "b" / "autoload_configs" / "event_socket.conf.xml").read_text()
    assert 'value="8022"' in esl_conf and 'value="8021"' not in esl_conf
    assert "{&quot;node&quot;:&quot;fs-b&quot;}" in (tmp_path / "b" / "dialplan/public/00_parley_agent.xml").read_text()
    env_lines = (tmp_path / "b" / "parley.env").read_text().splitlines()
    assert any(line.startswith("PARLEY_ESL_PASSWORD_FS_B=") for line in env_lines)  # what parley reads for fs-b
    assert not any(line.startswith("PARLEY_ESL_PASSWORD=") for line in env_lines)
    assert "parley needs it as PARLEY_ESL_PASSWORD_FS_B" in capsys.readouterr().out
    assert main(["--config", str(config), "freeswitch", "config", "--out", str(tmp_path / "x")]) == 2
    assert "freeswitch.nodes lists 2 nodes (fs-a, fs-b): name one" in capsys.readouterr().err
    assert main(["--config", str(config), "freeswitch", "config", "--out", str(tmp_path / "x"), "--node", "fs-c"]) == 2
    assert "no FreeSWITCH node named 'fs-c'" in capsys.readouterr().err
