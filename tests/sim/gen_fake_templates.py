"""Derive the fake FreeSWITCH's event templates from the genuine recordings.

Run ``python tests/sim/gen_fake_templates.py`` after the recordings change; it rewrites
``src/parley/sim/data/fake_freeswitch_events.json``. ``test_fake_fidelity.py`` regenerates the templates
and fails when the shipped file is stale, so the package never has to read ``shared/`` at run time.

What is kept (and nothing else): for every event name the order of its headers (``@caller`` and
``@vars`` stand for the Caller-* profile block and the channel variables) with the values that are the
same in every recorded instance; the Caller-* profile; and the channel-variable sets FreeSWITCH adds at
each step of a call (creation, dialplan, answer, the caller's ACK, hangup, CDR). Per-call values are
replaced by ``${token}`` placeholders that the fake fills in (``${uuid}``, ``${caller}``, ``${dest}``,
``${codec}``, ``${pt}``, times).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "freeswitch"
OUTPUT = ROOT / "src" / "parley" / "sim" / "data" / "fake_freeswitch_events.json"

# Scenarios whose calls ran the full `agent` dialplan (answer, set x4, log, park); `streamaudio` ran `park`.
CALL_SCENARIOS = (
    "call-playback-plain",
    "call-playback-json",
    "barge-in",
    "dtmf",
    "ws-error-refused",
    "ws-app-close",
    "streamaudio",
    "timing",
)
CORE_DYNAMIC = {"Core-UUID", "Event-Date-Local", "Event-Date-GMT", "Event-Date-Timestamp", "Event-Sequence"}
# Headers the fake always computes itself (never taken from a template, even when constant in the recordings).
COMPUTED = CORE_DYNAMIC | {
    "Event-Subclass",
    "Channel-State",
    "Channel-Call-State",
    "Channel-State-Number",
    "Answer-State",
    "Hangup-Cause",
    "Application",
    "Application-Data",
    "Application-Response",
    "Application-UUID",
    "Playback-File-Path",
    "Playback-Status",
    "DTMF-Digit",
    "DTMF-Duration",
    "DTMF-Source",
    "Job-UUID",
    "Job-Command",
    "Job-Command-Arg",
    "Caller-Channel-Answered-Time",
    "Caller-Channel-Hangup-Time",
    "Caller-Profile-Created-Time",
    "Caller-Channel-Created-Time",
}
DEST_NAMES = {
    "Caller-Destination-Number",
    "variable_sip_req_user",
    "variable_sip_req_uri",
    "variable_sip_to_user",
    "variable_sip_to_uri",
    "variable_sip_full_to",
    "variable_DP_MATCH",
}
TIME_TOKENS = {
    "sip_invite_stamp": "${created_us}",
    "start_stamp": "${created_stamp}",
    "profile_start_stamp": "${created_stamp}",
    "answer_stamp": "${answered_stamp}",
    "end_stamp": "${hangup_stamp}",
    "start_epoch": "${created_s}",
    "start_uepoch": "${created_us}",
    "profile_start_epoch": "${created_s}",
    "profile_start_uepoch": "${created_us}",
    "answer_epoch": "${answered_s}",
    "answer_uepoch": "${answered_us}",
    "end_epoch": "${hangup_s}",
    "end_uepoch": "${hangup_us}",
    "duration": "${duration_s}",
    "billsec": "${duration_s}",
    "flow_billsec": "${duration_s}",
    "mduration": "${duration_ms}",
    "billmsec": "${duration_ms}",
    "flow_billmsec": "${duration_ms}",
    "uduration": "${duration_us}",
    "billusec": "${duration_us}",
    "flow_billusec": "${duration_us}",
    "last_app": "${last_app}",
    "last_arg": "${last_arg}",
    "session_id": "${session_id}",
    "hangup_cause": "${hangup_cause}",
    "hangup_cause_q850": "${hangup_cause_q850}",
}


def _events(scenario: str, fixtures: Path = FIXTURES) -> list[tuple[str, dict[str, str], list[str]]]:
    """(name, decoded headers, header order) of every event on the scenario's main ESL connection."""
    sys.path.insert(0, str(ROOT / "src"))
    from parley.freeswitch.esl_protocol import EslParser, Event

    out = []
    for line in (fixtures / f"{scenario}.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["channel"] != "esl" or rec["dir"] != "fs->app" or rec["kind"] != "text" or rec["conn"] != "esl":
            continue
        for msg in EslParser().feed(rec["data"].encode()):
            if isinstance(msg, Event):
                out.append((msg.name, dict(msg.headers), _raw_order(rec["data"], msg.format)))
    return out


def _raw_order(text: str, fmt: str) -> list[str]:
    """Header names in wire order, duplicates kept (the parser keeps only the first of a repeated one)."""
    payload = text.partition("\n\n")[2]
    if fmt == "json":
        pairs = json.loads(payload, object_pairs_hook=lambda p: p)
        return [k for k, _ in pairs if k != "_body"]
    head = payload.partition("\n\n")[0]
    return [line.partition(":")[0] for line in head.split("\n") if line]


def _tokenise(name: str, value: str, uuid: str, dest: str) -> str:
    short = name.removeprefix("variable_")
    if name.startswith("variable_") and short in TIME_TOKENS:
        return TIME_TOKENS[short]
    if uuid:
        value = value.replace(uuid, "${uuid}")
    value = value.replace("fixture", "${caller}").replace("PCMU", "${codec}")
    if name in DEST_NAMES:
        value = value.replace(dest, "${dest}")
    if short in ("rtp_audio_recv_pt", "rtp_use_pt"):
        value = "${pt}"
    if short in ("switch_r_sdp", "rtp_local_sdp_str"):
        value = value.replace("RTP/AVP 0 101", "RTP/AVP ${pt} 101").replace("rtpmap:0 ", "rtpmap:${pt} ")
    return value


def _layout(order: list[str]) -> list[str]:
    out: list[str] = []
    for h in order:
        if h == "Content-Length":
            continue
        mark = "@vars" if h.startswith("variable_") else "@caller" if h.startswith("Caller-") else h
        if mark.startswith("@") and mark in out:
            continue
        out.append(mark)
    return out


def _merge(a: list[str], b: list[str]) -> list[str]:
    """Shortest common supersequence of two header layouts (they share most of their order)."""
    n, m = len(a), len(b)
    lcs = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            lcs[i][j] = lcs[i + 1][j + 1] + 1 if a[i] == b[j] else max(lcs[i + 1][j], lcs[i][j + 1])
    out, i, j = [], 0, 0
    while i < n and j < m:
        if a[i] == b[j]:
            out.append(a[i])
            i, j = i + 1, j + 1
        elif lcs[i + 1][j] >= lcs[i][j + 1]:
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    return out + a[i:] + b[j:]


def _var_list(headers: dict[str, str], order: list[str]) -> list[str]:
    return [h.removeprefix("variable_") for h in order if h.startswith("variable_")]


def _sets(before: list[str], after: list[str]) -> list[str]:
    """The variables set (appended, or moved to the end) to turn `before` into `after` (FreeSWITCH
    re-appends a variable when it is set again)."""
    for k in range(len(after), -1, -1):
        tail = after[k:]
        kept = [v for v in before if v not in tail and v in after]
        if kept + tail == after:
            return tail
    raise AssertionError("unreachable")


def build_templates(fixtures: Path = FIXTURES) -> dict[str, Any]:
    kinds: dict[str, dict[str, Any]] = {}
    static_vals: dict[str, dict[str, str | None]] = {}
    for scenario in (*CALL_SCENARIOS, "esl-handshake"):
        uuid = ""
        for name, headers, order in _events(scenario, fixtures):
            uuid = headers.get("Unique-ID", uuid)
            dest = headers.get("Caller-Destination-Number", "agent")
            kind = kinds.setdefault(name, {"layout": []})
            kind["layout"] = _merge(kind["layout"], _layout(order))
            vals = static_vals.setdefault(name, {})
            for h in order:
                if h.startswith(("variable_", "Caller-")) or h == "Content-Length" or h in COMPUTED:
                    continue
                v = _tokenise(h, headers[h], uuid, dest)
                if h not in vals:
                    vals[h] = v
                elif vals[h] != v:
                    vals[h] = None
    events = {}
    for name, kind in kinds.items():
        static = {h: v for h, v in static_vals[name].items() if v is not None}
        events[name] = {"layout": kind["layout"], "static": static}

    # The Caller-* profile and the variable steps, from the plain playback call (agent dialplan).
    evs = _events("call-playback-plain", fixtures)
    uuid = evs[0][1]["Unique-ID"]

    def find(name: str, app: str | None = None, nth: int = 0) -> tuple[dict[str, str], list[str]]:
        hits = [(h, o) for n, h, o in evs if n == name and (app is None or h.get("Application") == app)]
        return hits[nth]

    def named_values(headers: dict[str, str], names: list[str]) -> list[list[str]]:
        return [[v, _tokenise("variable_" + v, headers["variable_" + v], uuid, "agent")] for v in names]

    create_h, create_o = find("CHANNEL_CREATE")
    caller = [
        [h, None if h in COMPUTED else _tokenise(h, create_h[h], uuid, "agent")]
        for h in create_o
        if h.startswith("Caller-")
    ]
    exec_answer_h, exec_answer_o = find("CHANNEL_EXECUTE", "answer")
    answer_h, answer_o = find("CHANNEL_ANSWER")
    done_answer_h, done_answer_o = find("CHANNEL_EXECUTE_COMPLETE", "answer")
    connect_h, connect_o = next((h, o) for n, h, o in evs if h.get("Event-Subclass") == "mod_audio_stream::connect")
    exec_play_h, exec_play_o = find("CHANNEL_EXECUTE", "playback")
    done_play_h, done_play_o = find("CHANNEL_EXECUTE_COMPLETE", "playback", 1)
    hangup_h, hangup_o = find("CHANNEL_HANGUP")
    done_park_h, done_park_o = find("CHANNEL_EXECUTE_COMPLETE", "park")
    complete_h, complete_o = find("CHANNEL_HANGUP_COMPLETE")

    dialplan = _sets(_var_list(create_h, create_o), _var_list(exec_answer_h, exec_answer_o))
    assert dialplan == ["DP_MATCH", "call_uuid", "current_application"], dialplan
    answer = _sets(_var_list(exec_answer_h, exec_answer_o), _var_list(answer_h, answer_o))
    answer_done = _sets(_var_list(answer_h, answer_o), _var_list(done_answer_h, done_answer_o))
    assert answer_done == ["endpoint_disposition"], answer_done
    ack = [
        v for v in _sets(_var_list(connect_h, connect_o), _var_list(exec_play_h, exec_play_o)) if v.startswith("sip_")
    ]
    assert "sip_to_tag" in ack, ack
    hangup = _sets(_var_list(done_play_h, done_play_o), _var_list(hangup_h, hangup_o))
    disposition = _sets(_var_list(hangup_h, hangup_o), _var_list(done_park_h, done_park_o))
    complete = _sets(_var_list(done_park_h, done_park_o), _var_list(complete_h, complete_o))
    assert complete[0] == "hangup_cause", complete

    status_body = next(
        json.loads(line)["data"]
        for line in (fixtures / "esl-handshake.jsonl").read_text().splitlines()
        if "api/response" in json.loads(line).get("data", "") and "UP 0 years" in json.loads(line)["data"]
    ).partition("\n\n")[2]
    return {
        "_comment": "Generated by tests/sim/gen_fake_templates.py from the FreeSWITCH 1.10.12 recordings "
        "in shared/fixtures/freeswitch. Do not edit by hand.",
        "events": dict(sorted(events.items())),
        "caller_profile": caller,
        "variables": {
            "create": named_values(create_h, _var_list(create_h, create_o)),
            "dialplan": named_values(exec_answer_h, ["DP_MATCH", "call_uuid"]),
            "answer": named_values(answer_h, answer),
            "answer_complete": named_values(done_answer_h, answer_done),
            "ack": named_values(exec_play_h, ack),
            "hangup": named_values(hangup_h, hangup),
            "hangup_disposition": named_values(done_park_h, disposition),
            "hangup_complete": named_values(complete_h, complete),
        },
        "status_body": status_body,
    }


def render(templates: dict[str, Any]) -> str:
    return json.dumps(templates, indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render(build_templates()))
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")
