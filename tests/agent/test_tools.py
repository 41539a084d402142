"""The brain's tools and the gate in front of them: what is offered, and which tool calls a (possibly
prompt-injected) brain may have carried out. Table tests, no event loop."""

from __future__ import annotations

import pytest

from parley.agent.tools import Authorized, Refused, authorize, tool_specs
from parley.config import ConversationSettings, TransferTarget
from parley.providers.base import ToolCall, ToolSpec

SETTINGS = ConversationSettings(
    transfer_targets={
        "front_desk": "1000",  # type: ignore[dict-item]  # as YAML gives it
        "billing": {"extension": "1001", "context": "default", "description": "questions about bills"},  # type: ignore[dict-item]
    }
)
OFFERED = tool_specs(SETTINGS)


def transfer(destination: object, **extra: object) -> ToolCall:
    return ToolCall("t1", "transfer", {"destination": destination, **extra})


def test_transfer_is_offered_with_the_target_names_only() -> None:
    hangup, spec = OFFERED
    assert hangup.name == "hangup"
    assert spec.name == "transfer"
    assert spec.parameters["properties"] == {  # type: ignore[comparison-overlap]
        "destination": {
            "type": "string",
            "enum": ["front_desk", "billing"],
            "description": "who to put the caller through to",
        }
    }
    assert "front_desk; billing: questions about bills" in spec.description
    assert "1000" not in spec.description and "1001" not in str(spec.parameters)  # extensions stay with the operator


def test_no_transfer_tool_without_targets() -> None:
    assert [s.name for s in tool_specs(ConversationSettings())] == ["hangup"]


def test_legacy_transfer_destination_becomes_front_desk() -> None:
    settings = ConversationSettings(transfer_destination="1000")
    assert settings.transfer_targets == {"front_desk": TransferTarget("1000")}
    assert authorize(transfer("front_desk"), tool_specs(settings), settings) == Authorized(
        transfer("front_desk"), "front_desk", "1000", None
    )


@pytest.mark.parametrize(
    ("name", "extension", "context"),
    [("front_desk", "1000", None), ("billing", "1001", "default")],
)
def test_a_configured_name_resolves_to_the_operators_extension(name: str, extension: str, context: str | None) -> None:
    call = transfer(name)
    assert authorize(call, OFFERED, SETTINGS) == Authorized(call, name, extension, context)


def test_hangup_is_authorized_whatever_its_arguments() -> None:
    for arguments in ({}, {"reason": "done"}):
        call = ToolCall("h", "hangup", arguments)
        assert authorize(call, OFFERED, SETTINGS) == Authorized(call)


INJECTED = [
    "011 44 7700 900123",
    "011447700900123",
    "+447700900123",
    "sip:x@attacker.example",
    "sofia/gateway/carrier/011447700900123",
    "bridge:sofia/gateway/carrier/011447700900123 inline",
    "front_desk inline",
    "front_desk XML default",
    "front_desk&bridge(sofia/gateway/carrier/011)",
    "&bridge(sofia/gateway/carrier/011)",
    "1000",  # the extension itself is not a name the brain may use
    "Front_Desk",
    " front_desk",
    "front_desk\n",
    "front_\u0434esk",  # Cyrillic de
    "ｆｒｏｎｔ_ｄｅｓｋ",  # fullwidth
    "front\u200bdesk",  # zero-width space
    "",
    "front_desk" * 1000,
    "${sofia_contact(1000)}",
    None,
    42,
    ["front_desk"],
    {"name": "front_desk"},
]


@pytest.mark.parametrize("destination", INJECTED, ids=range(len(INJECTED)))
def test_anything_but_a_configured_name_is_refused(destination: object) -> None:
    result = authorize(transfer(destination), OFFERED, SETTINGS)
    assert isinstance(result, Refused)
    assert result.reason.startswith("transfer refused: ")
    assert result.reason.endswith("allowed destinations: front_desk, billing")
    assert len(result.reason) < 160 and result.reason.isascii() and "\n" not in result.reason


def test_refusal_reasons_are_exact() -> None:
    assert authorize(transfer("sip:x@attacker.example"), OFFERED, SETTINGS) == Refused(
        transfer("sip:x@attacker.example"),
        "transfer refused: 'sip:x@attacker.example' is not a destination; allowed destinations: front_desk, billing",
    )
    assert authorize(transfer("front_\u0434esk"), OFFERED, SETTINGS).reason == (  # type: ignore[union-attr]
        "transfer refused: 'front_\\u0434esk' is not a destination; allowed destinations: front_desk, billing"
    )
    smuggled = transfer("front_desk", context="default")
    assert authorize(smuggled, OFFERED, SETTINGS) == Refused(
        smuggled, "transfer refused: unexpected argument 'context'; allowed destinations: front_desk, billing"
    )


@pytest.mark.parametrize(
    ("call", "offered", "reason"),
    [
        (transfer("front_desk"), OFFERED[:1], "tool 'transfer' was not offered"),
        (transfer("front_desk"), (), "tool 'transfer' was not offered"),
        (ToolCall("h", "hangup", {}), (), "tool 'hangup' was not offered"),
        (ToolCall("d", "dial", {"number": "011447700900123"}), OFFERED, "tool 'dial' was not offered"),
        (
            ToolCall("d", "dial", {"number": "1"}),
            (*OFFERED, ToolSpec("dial", "x")),
            "tool 'dial' is not allowed on calls",
        ),
        (ToolCall("x", "x" * 500, {}), OFFERED, "tool '" + "x" * 44 + "... was not offered"),
    ],
)
def test_a_tool_not_offered_or_unknown_is_refused(call: ToolCall, offered: tuple[ToolSpec, ...], reason: str) -> None:
    assert authorize(call, offered, SETTINGS) == Refused(call, reason)


def test_a_name_outside_the_offered_enum_is_refused_even_if_configured() -> None:
    """The offer of this request narrows the configuration (e.g. a session that offers front_desk only)."""
    narrow = ToolSpec(
        "transfer", "x", {"type": "object", "properties": {"destination": {"type": "string", "enum": ["front_desk"]}}}
    )
    assert isinstance(authorize(transfer("billing"), (narrow,), SETTINGS), Refused)
    assert isinstance(authorize(transfer("front_desk"), (narrow,), SETTINGS), Authorized)


def test_an_offered_transfer_with_no_targets_configured_is_refused() -> None:
    spec = ToolSpec("transfer", "x", {"type": "object", "properties": {"destination": {"type": "string"}}})
    result = authorize(transfer("front_desk"), (spec,), ConversationSettings())
    assert result == Refused(
        transfer("front_desk"), "transfer refused: 'front_desk' is not a destination; allowed destinations: none"
    )
