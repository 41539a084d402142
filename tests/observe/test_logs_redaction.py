"""Caller text and phone numbers stay out of the logs unless caller-text logging is on: the number safety
net (what it masks and what it must leave alone), the markers, the handler filter in both formats and on
tracebacks, a whole simulated call logged at DEBUG, and PARLEY_LOG_CALLER_TEXT through the CLI."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from parley.agent.engine import Engine
from parley.freeswitch.call import CallLog
from parley.observe import logs
from parley.observe.redact import CallerText, PhoneNumber, mask_numbers, redact_number, reveal
from parley.sim.caller_voice import caller_voice
from parley.sim.simulate import SimulationResult, load_scenario, run_scenario

UUID = "6f0b3e0a-2f0b-4d8e-9a51-0c3c7f6e2a11"
NUMBER = "+15550001111"  # the fake FreeSWITCH's caller
NUMBER_FORMS = (NUMBER, NUMBER[1:], NUMBER[2:], "%2B" + NUMBER[1:])


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def capture(fmt: str = "text", *, caller_text: bool = False, level: str = "DEBUG") -> io.StringIO:
    stream = io.StringIO()
    logs.setup(level, fmt, caller_text=caller_text, stream=stream)
    return stream


# ---- the safety net ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("+15551234567", "**********67"),
        ("from +15551234567 to parley", "from **********67 to parley"),
        ("5551234567", "********67"),
        ("call 555 123 4567 now", "call **********67 now"),
        ("555-123-4567", "**********67"),
        ("(555) 123-4567", "************67"),
        ("+1 (555) 123-4567", "***************67"),
        ("+44 20 7946 0958", "**************58"),
        ("url ?from=%2B15551234567&x=1", "url ?from=************67&x=1"),
        ("caller_number='+15551234567'", "caller_number='**********67'"),
        ("Caller-Caller-ID-Number: 15551234567", "Caller-Caller-ID-Number: *********67"),
        ("<sip:+15551234567@10.0.0.1:5060>", "<sip:**********67@10.0.0.1:5060>"),
        ("sips:alice@example.com", "sips:*****@example.com"),
        ("sip:1001@pbx", "sip:****@pbx"),
        ("tel:+1-555-123-4567;phone-context=x", "tel:*************67;phone-context=x"),
        ("sofia/internal/+15551234567@1.2.3.4", "sofia/internal/**********67@1.2.3.4"),
        ("call me on 5551234567.", "call me on ********67."),
        # deliberate false positives: a bare 7+ digit count or an epoch is masked like a number
        ("frames=1234567", "frames=*****67"),
        ("at 1732417837", "at ********37"),
        ("1000 2000 4000", "************00"),
    ],
)
def test_phone_numbers_and_sip_users_are_masked(text: str, masked: str) -> None:
    assert mask_numbers(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        UUID,
        "[call 12345678-1234-5678-1234-567812345678] an all-digit UUID",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  # sha256 digest
        "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "utterance 71023320c28d, span 0x1f2e3d4c5b6a7980",
        "voice to voice 1432 ms, v2v 412 ms, 1432ms",
        "ESL connected to 127.0.0.1:8021, port 8021",
        "2026-11-24T03:30:37", "2026-11-24T03:30:37.123Z", "2026-11-24 03:30:37,123", "03:30:37",
        "16000 Hz, PCMU 8000 Hz, 48 kHz",
        "wrote 1920044 bytes, 1,920,044 bytes, 1234567 frames, 2345678 samples, 1000-2000 ms",
        "0.1234567 s", "lag 1234567.5", "version 1.2.3", "10.0.0.1", "fe80::1", "sizes 10,50,100,200",
        "heard 40 of 120 chars", "conn #12 seq 123456", "1234,5678",
        "Hello, nothing to mask here.", "",
    ],
)
def test_ids_timestamps_and_figures_are_left_alone(text: str) -> None:
    assert mask_numbers(text) == text


def test_markers_print_redacted_unless_revealed() -> None:
    said = CallerText("My name is Sarah Miller.")
    assert str(said) == repr(said) == "[caller text: 24 chars]" and f"{said}" == "[caller text: 24 chars]"
    assert str(CallerText("Booked.", who="agent")) == "[agent text: 7 chars]"
    assert str(PhoneNumber(NUMBER)) == redact_number(NUMBER) == "**********11"
    assert str(PhoneNumber(None)) == "-" and reveal(PhoneNumber(None)) == "-"
    assert reveal(said) == "My name is Sarah Miller." and reveal(PhoneNumber(NUMBER)) == NUMBER
    assert reveal(42) == 42


# ---- the handler filter ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("restore_logging")
def test_text_logs_redact_markers_and_numbers() -> None:
    out = capture("text")
    log = CallLog(logging.getLogger("parley.test.redaction"), {"call": UUID})
    log.info("turn %d: caller said %r | from %s", 3, CallerText("call me on 555 1234"), PhoneNumber(NUMBER))
    log.info("unmarked number %s in a port 8021 line of 1432 ms", "+15551234567")
    text = out.getvalue()
    assert f"[call {UUID}] turn 3: caller said [caller text: 19 chars] | from **********11" in text
    assert "unmarked number **********67 in a port 8021 line of 1432 ms" in text
    assert "555 1234" not in text and NUMBER not in text and "15551234567" not in text


@pytest.mark.usefixtures("restore_logging")
def test_json_logs_redact_and_keep_the_call_id() -> None:
    out = capture("json")
    log = CallLog(logging.getLogger("parley.test.redaction"), {"call": UUID})
    log.info("caller said %s at %s", CallerText("Sarah Miller"), PhoneNumber(NUMBER))
    entry = json.loads(out.getvalue())
    assert entry["call"] == UUID
    assert entry["msg"] == f"[call {UUID}] caller said [caller text: 12 chars] at **********11"


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_tracebacks_and_stacks_are_masked(fmt: str) -> None:
    out = capture(fmt)
    log = logging.getLogger("parley.test.redaction")
    try:
        raise ValueError("no route to sip:+15551234567@carrier for 5551234567")
    except ValueError:
        log.exception("dial failed for %s", PhoneNumber("+15551234567"))
    log.warning("stack of %s", "+15557654321", stack_info=True)
    text = out.getvalue()
    assert "ValueError: no route to sip:**********67@carrier for ********67" in text
    assert "dial failed for **********67" in text
    assert "1555123456" not in text and "555765432" not in text and "Stack (most recent call last)" in text
    if fmt == "json":
        first, second = (json.loads(line) for line in text.splitlines())
        assert "Traceback" in first["exc"] and "**********67@carrier" in first["exc"]
        assert "stack" in second


@pytest.mark.usefixtures("restore_logging")
def test_third_party_loggers_and_odd_records_go_through_the_same_filter() -> None:
    out = capture("text")
    logging.getLogger("httpx").info('HTTP Request: GET https://api.example/calls?to=%2B15551234567 "HTTP/1.1 200 OK"')
    logging.getLogger("websockets.server").warning("%(peer)s sent %(what)s", {"peer": "x", "what": CallerText("hi")})
    logging.getLogger("parley.test.redaction").info(PhoneNumber("+15551234567"))  # a marker as the message
    logging.getLogger("parley.test.redaction").info("one %s two %s", "+15551234567")  # bad args must not raise
    text = out.getvalue()
    assert "calls?to=************67 " in text and "x sent [caller text: 2 chars]" in text
    assert "parley.test.redaction **********67\n" in text
    assert "log arguments did not format" in text and "15551234567" not in text


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_caller_text_logging_shows_words_and_numbers(fmt: str) -> None:
    out = capture(fmt, caller_text=True)
    log = CallLog(logging.getLogger("parley.test.redaction"), {"call": UUID})
    log.info("turn 1: caller said %r | from %s", CallerText("call me on 555 123 4567"), PhoneNumber(NUMBER))
    log.info("%(who)s", {"who": PhoneNumber(NUMBER)})
    text = out.getvalue()
    assert "caller said 'call me on 555 123 4567' | from +15550001111" in text
    assert text.count(NUMBER) == 2


@pytest.mark.usefixtures("restore_logging")
def test_a_second_handler_sees_the_redacted_record() -> None:
    out = capture("text")
    seen: list[logging.LogRecord] = []
    probe = logging.Handler()
    probe.emit = seen.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(probe)
    logging.getLogger("parley.test.redaction").info("from %s", PhoneNumber(NUMBER))
    assert seen[0].getMessage() == "from **********11" and "**********11" in out.getvalue()


# ---- a whole call ------------------------------------------------------------------------------------------

SAY_NAME = "Hi, my name is Sarah Miller and I would like to book a cleaning."
SAY_NUMBER = "You can reach me on five five five, one two three, four five six seven."


@pytest.fixture(scope="module")
def engine() -> Engine:
    pytest.importorskip("faster_whisper")
    pytest.importorskip("hibari")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from parley.app import build_engine
    from parley.config import Settings

    return build_engine(Settings())


def logged_call(engine: Engine, tmp: Path, fmt: str, *, caller_text: bool) -> tuple[SimulationResult, str]:
    scenario_file = tmp / "private.yaml"
    scenario_file.write_text(
        "name: private\ntimeout_s: 60\nsteps:\n  - wait_agent: true\n"
        f"  - say: {SAY_NAME!r}\n  - wait_agent: true\n  - say: {SAY_NUMBER!r}\n  - wait_agent: true\n"
        "  - dtmf: '4321#'\n  - wait_agent: true\n  - hangup: true\n"
    )
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = capture(fmt, caller_text=caller_text)
    try:
        result = asyncio.run(run_scenario(load_scenario(scenario_file), engine, caller_voice("hibari-low", engine.tts),
                                          tmp / "spool"))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return result, out.getvalue()


def test_a_whole_call_at_debug_logs_no_caller_words_or_number(engine: Engine, tmp_path: Path) -> None:
    result, text = logged_call(engine, tmp_path, "json", caller_text=False)
    said = [t.caller for t in result.session.turns if t.caller]
    assert len(said) >= 3 and "[DTMF 4321#]" in said  # two utterances were heard, and the keypad input
    lines = [json.loads(line) for line in text.splitlines()]
    turn_lines = [e for e in lines if "caller said" in e["msg"]]
    assert len(turn_lines) >= 3 and all(e["call"] == result.session.call.uuid for e in turn_lines)
    assert "[caller text: " in text and "[agent text: " in text
    assert any("call ready: from **********11" in e["msg"] for e in lines)
    for words in [*said, "Sarah", "Miller", "DTMF 4321", "4321#", SAY_NAME, SAY_NUMBER]:
        assert words not in text, words
    for form in NUMBER_FORMS:
        assert form not in text, form
    agent_said = [t.agent for t in result.session.turns if len(t.agent) > 12]
    assert agent_said and not any(a in text for a in agent_said)


def test_with_caller_text_on_the_call_log_has_the_words(engine: Engine, tmp_path: Path) -> None:
    result, text = logged_call(engine, tmp_path, "text", caller_text=True)
    said = [t.caller for t in result.session.turns if t.caller]
    assert said and all(repr(s) in text for s in said)
    assert f"call ready: from {NUMBER} to parley" in text
    assert "[caller text: " not in text


# ---- the command line ----------------------------------------------------------------------------------------


def test_cli_honours_parley_log_caller_text() -> None:
    """`parley demo -v` logs the call-start line; only PARLEY_LOG_CALLER_TEXT=1 shows the number in it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    runs = {
        flag: subprocess.Popen([sys.executable, "-m", "parley.cli", "demo", "-v", "--out", ""],
                               env={**env, "PARLEY_LOG_CALLER_TEXT": flag}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
        for flag in ("0", "1")
    }
    logged = {flag: p.communicate(timeout=120)[1].decode() for flag, p in runs.items()}
    assert "call ready: from **********11 to parley" in logged["0"] and NUMBER not in logged["0"]
    assert f"call ready: from {NUMBER} to parley" in logged["1"]
