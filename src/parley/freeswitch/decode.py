"""``parley freeswitch decode-esl``: print a raw ESL capture one message per line.

Owns: presenting parsed messages to an operator (text) or a tool (JSON lines). Parsing itself is
:mod:`parley.freeswitch.esl_protocol`'s job; a capture that breaks the protocol prints everything up to
the break, then the precise error, and exits 1.
"""

from __future__ import annotations

import json
from typing import TextIO

from parley.errors import EslProtocolError
from parley.freeswitch import esl_protocol as esl


def message_record(index: int, msg: esl.Message) -> dict[str, object]:
    rec: dict[str, object] = {"index": index}
    match msg:
        case esl.Event():
            rec.update(
                content_type=f"text/event-{msg.format}",
                event=msg.name,
                subclass=msg.subclass,
                unique_id=msg.unique_id,
                job_uuid=msg.job_uuid,
                headers=dict(msg.headers),
                body=msg.body,
            )
        case esl.CommandReply():
            rec.update(
                content_type="command/reply", reply=msg.reply_text, job_uuid=msg.job_uuid, headers=dict(msg.headers)
            )
        case esl.UnknownMessage():
            body = msg.body.decode("utf-8", "replace")
            rec.update(content_type=msg.content_type, headers=dict(msg.headers), body=body)
        case esl.AuthRequest():
            rec.update(content_type="auth/request", headers=dict(msg.headers))
        case esl.ApiResponse() | esl.DisconnectNotice() | esl.RudeRejection() | esl.LogData():
            rec.update(content_type=msg.headers.get("Content-Type"), headers=dict(msg.headers), body=msg.body)
    return rec


def _line(rec: dict[str, object]) -> str:
    ctype = str(rec.get("content_type"))
    parts = [f"#{rec['index']:<4}", f"{ctype:<24}"]
    if "event" in rec:
        name = str(rec["event"]) + (f" {rec['subclass']}" if rec.get("subclass") else "")
        parts.append(f"{name:<40}")
        headers = rec.get("headers")
        assert isinstance(headers, dict)
        for key in ("Unique-ID", "Job-UUID", "Application", "Playback-Status", "Hangup-Cause", "DTMF-Digit"):
            if headers.get(key):
                parts.append(f"{key}={headers[key]}")
    elif rec.get("reply"):
        parts.append(str(rec["reply"]))
        if rec.get("job_uuid"):
            parts.append(f"Job-UUID={rec['job_uuid']}")
    body = rec.get("body")
    if isinstance(body, str) and body:
        first = body.strip().splitlines()[0] if body.strip() else ""
        parts.append(f"body[{len(body.encode())}B]={first[:60]!r}")
    return " ".join(parts).rstrip()


def decode_capture(data: bytes, *, as_json: bool, out: TextIO, err: TextIO) -> int:
    """Print each message as soon as it is complete; on a protocol error, print it and return 1."""
    parser = esl.EslParser()
    index = 0
    try:
        for pos in range(0, max(len(data), 1), 65536):
            for msg in parser.feed(data[pos : pos + 65536]):
                rec = message_record(index, msg)
                out.write((json.dumps(rec, ensure_ascii=False) if as_json else _line(rec)) + "\n")
                index += 1
        parser.feed_eof()
    except EslProtocolError as exc:
        err.write(f"parley: {exc} (after {index} complete messages)\n")
        return 1
    err.write(f"{index} messages\n")
    return 0
