"""The bounded fuzz run of every parser of untrusted input (the long run is ``scripts/fuzz.py``).

Each parser gets a few thousand seeded mutations of real input (the FreeSWITCH recordings, the vendor fakes'
messages) and hypothesis-generated values in the places the protocols put values. A parser may only raise its
own documented protocol error (``EslProtocolError``, ``ProviderError``); the HTTP error-body readers may not
raise at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.errors import EslProtocolError
from parley.freeswitch import esl_protocol as esl
from testkit.fuzz import Mutator, Target, run_target, targets

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "freeswitch"
TARGETS = {t.name: t for t in targets(FIXTURES)}
VENDOR = [name for name, t in TARGETS.items() if t.json_frames and not name.startswith("esl")]
INPUTS = 3000

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples every run: a failure here is a parser bug, never luck
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def test_every_parser_is_under_fuzz() -> None:
    names = set(TARGETS)
    assert {"deepgram-listen", "deepgram-speak", "assemblyai", "elevenlabs", "cartesia", "openai-sse",
            "anthropic-sse", "http-error-bodies"} <= names
    if FIXTURES.is_dir():
        assert {"esl", "esl-event-json", "esl-event-plain"} <= names


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_unmutated_seeds_are_accepted(name: str) -> None:
    """The seeds drive the parser's real, successful path (a fuzzer fed only garbage tests only refusals)."""
    target = TARGETS[name]
    accepted = 0
    for session in target.sessions:
        try:
            target.run(target.join(session))
            accepted += 1
        except target.allowed:
            pass
    assert accepted >= len(target.sessions) // 2


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_mutated_inputs_end_only_in_the_parsers_own_errors(name: str) -> None:
    target = TARGETS[name]
    report = run_target(target, Mutator(target, seed=20261204).inputs(INPUTS))
    examples = {k: v[:200] for k, v in report.examples.items()}
    assert not report.crashes, f"{name}: {dict(report.crashes)}; first inputs: {examples}"
    assert report.inputs == INPUTS
    if target.allowed:  # both paths ran: some inputs were refused, some accepted
        assert 0 < report.protocol_errors < INPUTS


def _replace_one_value(frame: bytes, value: object, pick: int) -> bytes:
    """``frame`` (JSON) with its ``pick``-th value (depth-first) replaced by ``value``."""
    doc = json.loads(frame)
    slots: list[tuple[dict[str, object] | list[object], str | int]] = []
    stack: list[object] = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            slots += [(node, k) for k in node]
            stack += list(node.values())
        elif isinstance(node, list):
            slots += [(node, i) for i in range(len(node))]
            stack += node
    if not slots:
        return json.dumps(value).encode()
    parent, key = slots[pick % len(slots)]
    if isinstance(parent, dict):
        parent[str(key)] = value
    else:
        parent[int(key)] = value
    return json.dumps(doc).encode()


def _run(target: Target, data: bytes) -> None:
    try:
        target.run(data)
    except target.allowed:
        pass


@pytest.mark.parametrize("name", VENDOR)
@FUZZ
@given(value=json_values, session=st.integers(min_value=0), frame=st.integers(min_value=0),
       pick=st.integers(min_value=0))
def test_any_json_value_anywhere_in_a_vendor_message(name: str, value: object, session: int, frame: int,
                                                     pick: int) -> None:
    target = TARGETS[name]
    frames = list(target.sessions[session % len(target.sessions)])
    i = frame % len(frames)
    try:
        json.loads(frames[i])
    except ValueError:  # [DONE], an HTML error page: no JSON to put values in
        return
    frames[i] = _replace_one_value(frames[i], value, pick)
    _run(target, target.join(frames))


@pytest.mark.parametrize("name", sorted(TARGETS))
@FUZZ
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes(name: str, data: bytes) -> None:
    _run(TARGETS[name], data)


_HEADER_NAMES = st.sampled_from(["Content-Type", "Content-Length", "Event-Name", "Reply-Text", "Job-UUID",
                                 "Event-Date-Timestamp", "X-Junk"])
_CONTENT_TYPES = st.sampled_from(["auth/request", "command/reply", "api/response", "text/event-plain",
                                  "text/event-json", "text/disconnect-notice", "text/rude-rejection", "log/data",
                                  "text/event-xml", ""])


@FUZZ
@given(
    ctype=_CONTENT_TYPES,
    headers=st.lists(st.tuples(_HEADER_NAMES, st.text(max_size=30)), max_size=6),
    body=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()),
    declared=st.none() | st.integers(min_value=0, max_value=400) | st.text(max_size=8),
)
def test_esl_envelopes_built_from_parts(ctype: str, headers: list[tuple[str, str]], body: bytes,
                                        declared: int | str | None) -> None:
    """Well-formed framing with anything inside: every outcome is a message or an EslProtocolError."""
    lines = [f"Content-Type: {ctype}", *(f"{k}: {v}" for k, v in headers)]
    if declared is not None:
        lines.insert(0, f"Content-Length: {declared}")
    else:
        lines.insert(0, f"Content-Length: {len(body)}")
    data = "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n\n" + body
    try:
        for message in esl.parse_stream(data):
            if isinstance(message, esl.Event):
                assert message.timestamp_us is None or message.timestamp_us >= 0
    except EslProtocolError:
        pass
