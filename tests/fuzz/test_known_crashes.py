"""The crashes the first ESL fuzz run found (issue 10, 400,000 mutated captures), and their JSON relatives in
the vendor parsers: each now ends in the parser's own protocol error with a message that says why."""

from __future__ import annotations

import pytest

from parley import wire_json
from parley.errors import EslProtocolError
from parley.freeswitch import esl_protocol as esl
from parley.providers import anthropic_llm, assemblyai_stt, cartesia_tts, deepgram_stt, elevenlabs_tts, openai_llm
from parley.providers.errors import ProviderProtocolError

DEEP = "[" * 1000 + "]" * 1000  # ~2 KB: enough for RecursionError in the stdlib decoder
HUGE_INT = "9" * 4301  # the stdlib refuses to convert it with a ValueError that is not a JSONDecodeError


def test_content_length_of_4301_digits_is_an_oversized_body() -> None:
    with pytest.raises(EslProtocolError, match="body of 4301-digit bytes exceeds the limit"):
        esl.EslParser().feed(b"Content-Type: api/response\nContent-Length: " + HUGE_INT.encode() + b"\n\n")


def test_leading_zeros_do_not_make_a_small_content_length_big() -> None:
    (reply,) = esl.EslParser().feed(b"Content-Type: api/response\nContent-Length: " + b"0" * 5000 + b"2\n\nok")
    assert isinstance(reply, esl.ApiResponse) and reply.body == "ok"


def test_json_event_nested_1000_deep() -> None:
    body = b'{"Event-Name":"CUSTOM","x":' + DEEP.encode() + b"}"
    frame = b"Content-Type: text/event-json\nContent-Length: %d\n\n" % len(body) + body
    with pytest.raises(EslProtocolError, match=r"not valid JSON .*nested deeper than 64 levels"):
        esl.EslParser().feed(frame)


def test_json_event_with_a_huge_number() -> None:
    with pytest.raises(EslProtocolError, match="integer literal of 4301 characters"):
        esl.parse_json_event(b'{"Event-Name":"CUSTOM","x":' + HUGE_INT.encode() + b"}")


@pytest.mark.parametrize("raw", ["\u00b2\u00b3", "\u0663\u0664", "1" * 5000, "", "12a"])
def test_timestamp_us_is_none_for_anything_but_ascii_digits(raw: str) -> None:
    event = esl.Event("HEARTBEAT", {"Event-Date-Timestamp": raw}, None, "plain")
    assert event.timestamp_us is None


def test_timestamp_us_reads_the_real_thing() -> None:
    assert esl.Event("X", {"Event-Date-Timestamp": "1764000000123456"}, None, "json").timestamp_us == 1764000000123456


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (DEEP, "nested deeper than 64"),
        (HUGE_INT, "integer literal of 4301"),
        ("1e999", "out of range"),
        ('{"a": NaN}', "NaN is not JSON"),
        ("-Infinity", "-Infinity is not JSON"),
        ("1." + "0" * 100, "number literal of 102"),
        ("{", "Expecting property name"),
    ],
)
def test_wire_json_bounds(text: str, why: str) -> None:
    with pytest.raises(wire_json.WireJsonError, match=why):
        wire_json.loads(text)


def test_wire_json_keeps_ordinary_values() -> None:
    text = '{"a":[1,2.5,{"b":null}],"c":"\\u00e9","d":-0,"e":true}'
    assert wire_json.loads(text) == {"a": [1, 2.5, {"b": None}], "c": "é", "d": 0, "e": True}
    assert wire_json.depth(wire_json.loads("[" * 64 + "]" * 64)) == 64


@pytest.mark.parametrize("text", [DEEP, '{"type":"Results","start":' + HUGE_INT + "}"])
def test_vendor_frames_nested_or_huge_are_protocol_errors(text: str) -> None:
    parsers = [
        lambda t: deepgram_stt.parse_message(t, "key"),
        assemblyai_stt.parse_message,
        cartesia_tts.parse_message,
        elevenlabs_tts.parse_message,
        lambda t: openai_llm.decode_event(t, "openai"),
        lambda t: anthropic_llm.decode_event(t, "anthropic"),
    ]
    for parse in parsers:
        with pytest.raises(ProviderProtocolError, match="not JSON"):
            parse(text)


def test_a_number_too_big_for_a_float_no_longer_overflows_the_listen_assembler() -> None:
    # 400 digits is a valid JSON int; float() of it raised OverflowError in ListenAssembler
    with pytest.raises(ProviderProtocolError):
        deepgram_stt.parse_message('{"type":"SpeechStarted","timestamp":' + "9" * 400 + "}", "key")
