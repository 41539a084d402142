"""The sans-I/O ESL core against the genuine FreeSWITCH 1.10.12 recordings, and against bad input.

The expected values are read from each recording's ``.jsonl`` timeline with a deliberately naive,
independent extraction (regex / json), never with the parser under test.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from parley.errors import EslProtocolError
from parley.freeswitch import esl_protocol as esl

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "freeswitch"
CAPTURES = sorted(FIXTURES.glob("*.esl-in.bin"))

pytestmark = pytest.mark.skipif(not CAPTURES, reason="shared fixtures not present")


def _timeline(capture: Path) -> list[str]:
    """The fs->app ESL message texts of the capture's connection, in order, from the .jsonl."""
    name = capture.name.removesuffix(".esl-in.bin")
    scenario, _, conn = name.partition(".")
    conn = conn or "esl"
    out = []
    for line in (FIXTURES / f"{scenario}.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["channel"] == "esl" and rec["dir"] == "fs->app" and rec["kind"] == "text" and rec["conn"] == conn:
            out.append(rec["data"])
    return out


def _expected(record: str) -> dict[str, str | None]:
    head, _, payload = record.partition("\n\n")
    ctype = re.search(r"^Content-Type: (.*)$", head, re.M)
    assert ctype
    exp: dict[str, str | None] = {"content_type": ctype.group(1)}
    if ctype.group(1) == "text/event-plain":
        ev_head, _, ev_body = payload.partition("\n\n")
        fields = dict(line.split(": ", 1) for line in ev_head.split("\n") if line)
        for key in ("Event-Name", "Unique-ID", "Event-Subclass", "Job-UUID"):
            exp[key] = unquote(fields[key]) if key in fields else None
        exp["body"] = ev_body[: int(fields["Content-Length"])] if "Content-Length" in fields else None
    elif ctype.group(1) == "text/event-json":
        obj = json.loads(payload)
        for key in ("Event-Name", "Unique-ID", "Event-Subclass", "Job-UUID"):
            exp[key] = obj.get(key)
        exp["body"] = obj.get("_body")
    else:
        reply = re.search(r"^Reply-Text: (.*)$", head, re.M)
        exp["reply"] = reply.group(1) if reply else None
        exp["body"] = payload or None
        job = re.search(r"^Job-UUID: (.*)$", head, re.M)
        exp["Job-UUID"] = job.group(1) if job else None
    return exp


def _actual(msg: esl.Message) -> dict[str, str | None]:
    match msg:
        case esl.Event(name=name, body=body):
            ctype = "text/event-plain" if msg.format == "plain" else "text/event-json"
            return {
                "content_type": ctype,
                "Event-Name": name,
                "Unique-ID": msg.unique_id,
                "Event-Subclass": msg.subclass,
                "Job-UUID": msg.job_uuid,
                "body": body,
            }
        case esl.AuthRequest():
            return {"content_type": "auth/request", "reply": None, "body": None, "Job-UUID": None}
        case esl.CommandReply(reply_text=text, headers=headers):
            return {"content_type": "command/reply", "reply": text, "body": None, "Job-UUID": headers.get("Job-UUID")}
        case esl.ApiResponse(body=body) | esl.DisconnectNotice(body=body) | esl.RudeRejection(body=body):
            return {"content_type": msg.headers["Content-Type"], "reply": None, "body": body, "Job-UUID": None}
    raise AssertionError(f"unexpected message {msg!r}")


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_capture_parses_exactly_like_the_timeline(capture: Path) -> None:
    messages = esl.parse_stream(capture.read_bytes())
    records = _timeline(capture)
    assert len(messages) == len(records)
    for msg, record in zip(messages, records, strict=True):
        assert _actual(msg) == _expected(record)


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_any_split_gives_the_same_messages(capture: Path) -> None:
    data = capture.read_bytes()
    whole = esl.parse_stream(data)
    rng = random.Random(capture.name)
    parser = esl.EslParser()
    out: list[esl.Message] = []
    pos = 0
    while pos < len(data):
        step = rng.choice((1, 1, 2, 3, 7, 64, 1500, 9000))
        out += parser.feed(data[pos : pos + step])
        pos += step
    parser.feed_eof()
    assert out == whole


def test_one_byte_at_a_time() -> None:
    data = (FIXTURES / "barge-in.esl-in.bin").read_bytes()
    parser = esl.EslParser()
    out: list[esl.Message] = []
    for i in range(len(data)):
        out += parser.feed(data[i : i + 1])
    parser.feed_eof()
    assert out == esl.parse_stream(data)
    assert parser.buffered == 0


def _events(name: str) -> list[esl.Event]:
    return [m for m in esl.parse_stream((FIXTURES / name).read_bytes()) if isinstance(m, esl.Event)]


def test_plain_and_json_recordings_of_the_same_call_give_the_same_events() -> None:
    plain = _events("call-playback-plain.esl-in.bin")
    js = _events("call-playback-json.esl-in.bin")
    assert [e.format for e in plain] == ["plain"] * len(plain)
    assert [e.format for e in js] == ["json"] * len(js)

    def shape(e: esl.Event) -> tuple[str | None, ...]:
        return (e.name, e.subclass, e.get("Application"), e.get("Playback-Status"), e.get("Hangup-Cause"))

    assert [shape(e) for e in plain] == [shape(e) for e in js]
    # Same header names (the SIP stack adds two variables at a slightly different moment per call)
    racy = {"variable_sip_cseq", "variable_sip_to_tag"}
    for p, j in zip(plain, js, strict=True):
        assert (set(p.headers) ^ set(j.headers)) <= racy
    # Per-call constants decode identically in both formats (URL-decoding of plain values)
    assert plain[0].get("Channel-Name") == js[0].get("Channel-Name") == "sofia/internal/fixture@127.0.0.1:5070"
    assert plain[0].get("FreeSWITCH-IPv6") == js[0].get("FreeSWITCH-IPv6") == "fd00::2"


def test_handshake_background_job_plain_and_json_agree() -> None:
    jobs = [e for e in _events("esl-handshake.esl-in.bin") if e.name == "BACKGROUND_JOB"]
    assert [e.format for e in jobs] == ["plain", "json"]
    plain, js = jobs
    assert set(plain.headers) == set(js.headers)
    assert plain.get("Job-Command") == js.get("Job-Command") == "status"
    assert plain.body is not None and plain.body.startswith("UP 0 years")
    assert js.body is not None and js.body.startswith("UP 0 years")


def test_mod_audio_stream_events_carry_their_json_bodies() -> None:
    play = [e for e in _events("streamaudio.esl-in.bin") if e.subclass == "mod_audio_stream::play"]
    assert len(play) == 1 and play[0].body is not None
    body = json.loads(play[0].body)
    assert body["audioDataType"] == "wav" and body["file"].endswith("_0.tmp.wav")
    err = [e for e in _events("ws-error-refused.esl-in.bin") if e.subclass == "mod_audio_stream::error"]
    assert err and json.loads(err[0].body or "")["message"]["code"] == 6
    disc = [e for e in _events("ws-app-close.esl-in.bin") if e.subclass == "mod_audio_stream::disconnect"]
    assert disc and json.loads(disc[0].body or "")["message"] == {"code": 1000, "reason": "app closing"}


def test_playback_stop_carries_status_and_fs_timestamps() -> None:
    stops = [e for e in _events("barge-in.esl-in.bin") if e.name == "PLAYBACK_STOP"]
    assert [e.get("Playback-Status") for e in stops] == ["break", "break", "done", "break"]
    assert all(e.timestamp_us for e in stops)


def test_bad_auth_connection() -> None:
    msgs = esl.parse_stream((FIXTURES / "esl-handshake.esl-badauth.esl-in.bin").read_bytes())
    assert isinstance(msgs[0], esl.AuthRequest)
    assert isinstance(msgs[1], esl.CommandReply) and msgs[1].reply_text == "-ERR invalid" and not msgs[1].ok
    assert isinstance(msgs[2], esl.DisconnectNotice) and msgs[2].body.startswith("Disconnected, goodbye.")


# ---- malformed input -----------------------------------------------------------------------------


def test_bad_content_length() -> None:
    with pytest.raises(EslProtocolError, match=r"Content-Length 'x12' is not a non-negative integer"):
        esl.EslParser().feed(b"Content-Type: api/response\nContent-Length: x12\n\n")
    with pytest.raises(EslProtocolError, match=r"Content-Length '-5'"):
        esl.EslParser().feed(b"Content-Type: api/response\nContent-Length: -5\n\n")


def test_conflicting_content_length() -> None:
    with pytest.raises(EslProtocolError, match="conflicting Content-Length"):
        esl.EslParser().feed(b"Content-Type: api/response\nContent-Length: 3\nContent-Length: 4\n\nabcd")


def test_truncated_body_is_reported_at_eof() -> None:
    parser = esl.EslParser()
    assert parser.feed(b"Content-Type: api/response\nContent-Length: 40\n\n-ERR no_such") == []
    with pytest.raises(EslProtocolError, match=r"ended inside a message body: 12 of 40 bytes"):
        parser.feed_eof()


def test_truncated_header_is_reported_at_eof() -> None:
    parser = esl.EslParser()
    parser.feed(b"Content-Type: command/re")
    with pytest.raises(EslProtocolError, match="ended inside a header block: 24 bytes"):
        parser.feed_eof()


def test_non_utf8_header() -> None:
    with pytest.raises(EslProtocolError, match=r"not valid UTF-8 \(byte 0xff at offset 14\)"):
        esl.EslParser().feed(b"Content-Type: \xffapi/response\n\n")


def test_header_line_without_colon() -> None:
    with pytest.raises(EslProtocolError, match=r"line 2 is not a 'Name: value' header"):
        esl.EslParser().feed(b"Content-Type: command/reply\ngarbage line\n\n")


def test_oversized_body_refused_before_buffering() -> None:
    parser = esl.EslParser(max_body_bytes=1000)
    with pytest.raises(EslProtocolError, match="body of 5000 bytes exceeds the limit of 1000"):
        parser.feed(b"Content-Type: api/response\nContent-Length: 5000\n\n")
    assert parser.buffered == 0
    with pytest.raises(EslProtocolError):  # stays failed
        parser.feed(b"Content-Type: auth/request\n\n")


def test_endless_header_block_is_bounded() -> None:
    parser = esl.EslParser(max_header_bytes=4096)
    with pytest.raises(EslProtocolError, match="header block exceeds 4096 bytes"):
        for _ in range(100):
            parser.feed(b"X-Junk: " + b"a" * 100 + b"\n")


def test_missing_content_type() -> None:
    with pytest.raises(EslProtocolError, match="without Content-Type"):
        esl.EslParser().feed(b"Reply-Text: +OK\n\n")


def test_bad_json_event() -> None:
    with pytest.raises(EslProtocolError, match="JSON event is not valid JSON"):
        esl.EslParser().feed(b"Content-Length: 5\nContent-Type: text/event-json\n\n{nope")
    with pytest.raises(EslProtocolError, match="JSON event is a list"):
        esl.EslParser().feed(b"Content-Length: 2\nContent-Type: text/event-json\n\n[]")


def test_plain_event_inner_body_shorter_than_declared() -> None:
    payload = b"Event-Name: CUSTOM\nContent-Length: 50\n\n{}"
    framed = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(payload) + payload
    with pytest.raises(EslProtocolError, match="declares a 50-byte body but only 2 bytes follow"):
        esl.EslParser().feed(framed)


def test_unknown_content_type_is_kept_not_fatal() -> None:
    msgs = esl.EslParser().feed(b"Content-Type: text/event-xml\nContent-Length: 3\n\n<a>")
    assert msgs == [esl.UnknownMessage("text/event-xml", b"<a>", msgs[0].headers)]  # type: ignore[union-attr]


# ---- commands we send ---------------------------------------------------------------------------


def test_commands_match_the_recorded_bytes() -> None:
    out = (FIXTURES / "esl-handshake.esl-out.bin").read_bytes()
    names = (
        "CHANNEL_CREATE CHANNEL_PARK CHANNEL_ANSWER CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE CHANNEL_EXECUTE "
        "CHANNEL_EXECUTE_COMPLETE PLAYBACK_START PLAYBACK_STOP DTMF BACKGROUND_JOB"
    ).split()
    custom = [f"mod_audio_stream::{x}" for x in ("connect", "disconnect", "error", "json", "play")]
    expected = b"".join(
        [
            esl.auth_command("REDACTED"),
            esl.event_command(names, custom, fmt="plain"),
            esl.api_command("status"),
            esl.api_command("no_such_command foo"),
            esl.api_command("uuid_break b287cf34-474e-4bca-9a01-5858a3e4e543"),
            b"bgapi status\n\n",
            esl.event_command(names, custom, fmt="json"),
            b"bgapi status\n\n",
            esl.exit_command(),
        ]
    )
    assert out == expected


def test_sendmsg_playback_matches_the_recording() -> None:
    recorded = next(
        json.loads(line)["data"]
        for line in (FIXTURES / "barge-in.jsonl").read_text().splitlines()
        if '"data": "sendmsg ' in line
    )
    uuid = "b8176bcb-105f-470a-94d0-a5c506ed4e11"
    built = esl.execute_command(
        uuid,
        "playback",
        "/srv/fsrun/test/rec/media/prompt_long.wav",
        event_uuid="e9f574a7-9c0e-4c25-9271-5990708ecf56",
    )
    assert built.decode() == recorded


def test_bgapi_carries_our_job_uuid() -> None:
    assert esl.bgapi_command("status", "abc") == b"bgapi status\nJob-UUID: abc\n\n"


def test_sendmsg_with_body() -> None:
    data = esl.sendmsg_command("u1", {"call-command": "execute", "execute-app-name": "speak"}, b"hello\nworld")
    assert data == (
        b"sendmsg u1\ncall-command: execute\nexecute-app-name: speak\ncontent-length: 11\n\nhello\nworld"
    )


@pytest.mark.parametrize(
    "build",
    [
        lambda: esl.api_command("status\n\nexit"),
        lambda: esl.auth_command("pw\r\nx"),
        lambda: esl.bgapi_command("originate x", "id\nEvil: 1"),
        lambda: esl.sendmsg_command("u", {"execute-app-arg": "/a.wav\ncall-command: hangup"}),
        lambda: esl.filter_command("Unique-ID", "x\n"),
    ],
)
def test_line_injection_is_refused(build: object) -> None:
    with pytest.raises(ValueError, match="must not contain CR, LF or NUL"):
        build()  # type: ignore[operator]


def test_filter_nixevent_and_exit() -> None:
    assert esl.filter_command("Unique-ID", "abc") == b"filter Unique-ID abc\n\n"
    assert esl.filter_delete_command() == b"filter delete all\n\n"
    assert esl.nixevent_command(["DTMF"], ["mod_audio_stream::json"]) == (
        b"nixevent DTMF CUSTOM mod_audio_stream::json\n\n"
    )
    assert esl.exit_command() == b"exit\n\n"


def test_oversized_header_block_refused_even_when_complete() -> None:
    block = b"Content-Type: api/response\n" + b"X-Junk: " + b"a" * 5000 + b"\n\n"
    with pytest.raises(EslProtocolError, match="header block exceeds 4096 bytes"):
        esl.EslParser(max_header_bytes=4096).feed(block)


def test_many_messages_in_one_read_consume_the_buffer() -> None:
    one = b"Content-Type: api/response\nContent-Length: 4\n\n+OK\n"
    parser = esl.EslParser()
    assert len(parser.feed(one * 10000)) == 10000
    assert parser.buffered == 0
