"""The command line: decode-esl on recordings, config rendering, and `parley serve` as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parley.freeswitch import esl_protocol as esl

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "freeswitch"
PARLEY = [sys.executable, "-m", "parley.cli"]


TOKEN_SECRET = "cli-test-secret-0123456789abcdef"  # parley serve refuses to start without a stream secret


def run(*args: str, env: dict[str, str] | None = None, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*PARLEY, *args], capture_output=True, env=env, input=input, timeout=60, check=False)


@pytest.mark.parametrize("name", ["barge-in", "call-playback-json", "esl-handshake", "streamaudio"])
def test_decode_esl_prints_one_line_per_message(name: str) -> None:
    path = FIXTURES / f"{name}.esl-in.bin"
    expected = esl.parse_stream(path.read_bytes())
    text = run("freeswitch", "decode-esl", str(path))
    assert text.returncode == 0, text.stderr
    assert len(text.stdout.decode().splitlines()) == len(expected)
    js = run("freeswitch", "decode-esl", str(path), "--json")
    records = [json.loads(line) for line in js.stdout.decode().splitlines()]
    assert len(records) == len(expected)
    for rec, msg in zip(records, expected, strict=True):
        if isinstance(msg, esl.Event):
            assert rec["event"] == msg.name and rec["subclass"] == msg.subclass
            assert rec["unique_id"] == msg.unique_id and rec["body"] == msg.body
            assert rec["headers"] == dict(msg.headers)
            assert rec["content_type"] == f"text/event-{msg.format}"


def test_decode_esl_reports_a_truncated_capture_precisely() -> None:
    data = (FIXTURES / "barge-in.esl-in.bin").read_bytes()[:5000]
    out = run("freeswitch", "decode-esl", "-", input=data)
    assert out.returncode == 1
    assert len(out.stdout.decode().splitlines()) == 3
    assert b"ended inside a message body: 4791 of 4894 bytes" in out.stderr


def test_config_renders_files_without_default_secrets(tmp_path: Path) -> None:
    # the stream secret it creates goes to this test's own config home, not the real one
    out = run("freeswitch", "config", "--out", str(tmp_path / "fs"), env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    files = [p for p in (tmp_path / "fs").rglob("*") if p.is_file()]
    assert len(files) >= 7
    for p in files:
        text = p.read_text()
        assert "ClueCon" not in text and "1234" not in text
    assert b"PARLEY_ESL_PASSWORD" in out.stdout


def test_serve_refuses_the_default_password() -> None:
    env = {**os.environ, "PARLEY_ESL_PASSWORD": "ClueCon"}
    out = run("serve", env=env)
    assert out.returncode == 2
    assert b"refusing to use a default ESL password" in out.stderr


def test_serve_checks_every_nodes_password(tmp_path: Path) -> None:
    """With freeswitch.nodes listed, each node needs its own password (the top-level one is not asked for)."""
    config = tmp_path / "parley.yaml"
    config.write_text("freeswitch:\n  nodes:\n    - name: fs-a\n      esl: {port: 8021}\n"
                      "    - name: fs-b\n      esl: {port: 8022}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_ESL_PASSWORD")}
    env["PARLEY_ESL_PASSWORD_FS_A"] = "a-good-password-for-node-a"
    out = run("--config", str(config), "serve", env=env)
    assert out.returncode == 2
    assert b"fs-b" in out.stderr or b"FS_B" in out.stderr, out.stderr


def test_serve_runs_against_freeswitch_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """`parley serve` as a real process, against the fake FreeSWITCH in another process."""
    password = "serve-test-password-abcdef"
    fake = subprocess.Popen(
        [sys.executable, "-c", (
            "import asyncio,sys\n"
            "from parley.sim.fake_freeswitch import FakeFreeSwitch\n"
            "async def main():\n"
            f"    fs = FakeFreeSwitch(password={password!r})\n"
            "    await fs.start(); print(fs.esl_port, flush=True)\n"
            "    await asyncio.sleep(60)\n"
            "asyncio.run(main())\n"
        )],
        stdout=subprocess.PIPE,
    )
    try:
        assert fake.stdout is not None
        port = int(fake.stdout.readline())
        config = tmp_path / "parley.yaml"
        config.write_text(
            "freeswitch:\n"
            f"  esl: {{port: {port}}}\n"
            "  audio_stream: {listen_port: 0}\n"
            f"  playback: {{spool_dir: {tmp_path / 'spool'}}}\n"
            "observe: {port: 0}\n"
            f"records: {{url: 'sqlite+aiosqlite:///{tmp_path / 'calls.db'}'}}\n"
        )
        env = {**os.environ, "PARLEY_ESL_PASSWORD": password, "PARLEY_STREAM_TOKEN_SECRET": TOKEN_SECRET}
        serve = subprocess.Popen([*PARLEY, "--config", str(config), "serve"], env=env, stderr=subprocess.PIPE)
        assert serve.stderr is not None
        deadline = time.monotonic() + 20
        seen = b""
        while b"parley ready" not in seen and time.monotonic() < deadline:
            seen += serve.stderr.readline()
        assert b"ESL connected" in seen and b"parley ready" in seen
        assert b"metrics, health and dashboard on http://127.0.0.1:" in seen
        port = int(seen.split(b"dashboard on http://127.0.0.1:")[1].split(b"/")[0])
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert b"parley_active_calls" in r.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            assert json.loads(r.read())["esl_connected"] is True
        serve.send_signal(signal.SIGTERM)
        rest = serve.communicate(timeout=15)[1]
        assert serve.returncode == 0, rest
        assert b"shutting down" in rest
    finally:
        fake.kill()
        fake.wait()


def test_serve_exits_with_a_clear_error_on_a_wrong_password(tmp_path: Path) -> None:
    fake = subprocess.Popen(
        [sys.executable, "-c", (
            "import asyncio\n"
            "from parley.sim.fake_freeswitch import FakeFreeSwitch\n"
            "async def main():\n"
            "    fs = FakeFreeSwitch(password='the-right-password-123x')\n"
            "    await fs.start(); print(fs.esl_port, flush=True)\n"
            "    await asyncio.sleep(60)\n"
            "asyncio.run(main())\n"
        )],
        stdout=subprocess.PIPE,
    )
    try:
        assert fake.stdout is not None
        port = int(fake.stdout.readline())
        config = tmp_path / "parley.yaml"
        config.write_text(f"freeswitch:\n  esl: {{port: {port}}}\n  audio_stream: {{listen_port: 0}}\n"
                          f"observe: {{port: 0}}\nrecords: {{url: 'sqlite+aiosqlite:///{tmp_path / 'c.db'}'}}\n")
        env = {**os.environ, "PARLEY_ESL_PASSWORD": "a-wrong-password-456y", "PARLEY_STREAM_TOKEN_SECRET": TOKEN_SECRET}
        out = subprocess.run([*PARLEY, "--config", str(config), "serve"], env=env, capture_output=True, timeout=30)
        assert out.returncode == 1
        assert b"rejected the ESL password (-ERR invalid)" in out.stderr
    finally:
        fake.kill()
        fake.wait()


def test_cost_estimate_reproduces_the_article_stacks() -> None:
    out = run("cost", "estimate", "--json")
    assert out.returncode == 0, out.stderr
    stacks = json.loads(out.stdout)["stacks"]
    assert set(stacks) == {"A", "B", "C"}
    # the article: Deepgram 5 min ~$0.04 (0.0385), ElevenLabs 1,500 chars ~$0.08 (0.075), Aura-2 $0.045
    items = {line["item"]: line["usd"] for line in stacks["A"]["lines"]}
    assert any(abs(v - 0.0385) < 1e-9 for v in items.values())
    assert any(abs(v - 0.075) < 1e-9 for v in items.values())
    assert 0.06 <= stacks["B"]["total_usd"] <= 0.10 and 0.11 <= stacks["A"]["total_usd"] <= 0.15
