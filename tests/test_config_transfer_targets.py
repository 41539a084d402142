"""conversation.transfer_targets: names the brain may say -> extensions the operator wrote, checked at load."""

from __future__ import annotations

import pytest

from parley.config import ConversationSettings, TransferTarget, settings_from_mapping
from parley.errors import ConfigError


def conversation(**data: object) -> ConversationSettings:
    return settings_from_mapping({"conversation": data}, env={}).conversation


def test_targets_from_yaml_shapes() -> None:
    conv = conversation(transfer_targets={
        "front_desk": 1000,
        "billing": {"extension": "1001", "context": "default", "description": "questions about bills"},
        "after_hours": "*98",
    })  # fmt: skip
    assert conv.transfer_targets == {
        "front_desk": TransferTarget("1000"),
        "billing": TransferTarget("1001", "default", "questions about bills"),
        "after_hours": TransferTarget("*98"),
    }


def test_legacy_transfer_destination_is_the_front_desk_target() -> None:
    assert conversation(transfer_destination="1000").transfer_targets == {"front_desk": TransferTarget("1000")}
    both = conversation(transfer_destination="2000", transfer_targets={"front_desk": "1000"})
    assert both.transfer_targets == {"front_desk": TransferTarget("1000")}  # the new key wins
    assert conversation().transfer_targets == {}


DIAL_STRING = (
    "is a dial string; parley transfers only to extensions of your dialplan, so that its context and toll_allow "
    "decide what may be dialled. Write an extension that bridges to it and name that here"
)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"transfer_targets": {"Front Desk": "1000"}},
            "conversation.transfer_targets: target name 'Front Desk' must be a simple identifier",
        ),
        ({"transfer_targets": {"9lives": "1000"}}, "target name '9lives' must be a simple identifier"),
        (
            {"transfer_targets": {"front_desk": "sip:reception@pbx.example"}},
            f"conversation.transfer_targets.front_desk.extension: 'sip:reception@pbx.example' {DIAL_STRING}",
        ),
        ({"transfer_targets": {"out": "sofia/gateway/carrier/011447700900123"}}, DIAL_STRING),
        ({"transfer_targets": {"out": "bridge:sofia/gateway/x"}}, DIAL_STRING),
        ({"transfer_targets": {"out": "&bridge(user/1000)"}}, DIAL_STRING),
        (
            {"transfer_targets": {"out": "1000 XML default"}},
            "'1000 XML default' contains whitespace, a comma or a quote (one extension; a context goes under 'context:')",
        ),
        ({"transfer_targets": {"out": "1000,1001"}}, "contains whitespace, a comma or a quote"),
        ({"transfer_targets": {"out": "10'00"}}, "contains whitespace, a comma or a quote"),
        ({"transfer_targets": {"out": ""}}, "conversation.transfer_targets.out.extension: '' is empty"),
        ({"transfer_targets": {"out": "${x}"}}, "'${x}' is not a dialplan extension"),
        ({"transfer_targets": {"out": "１０００"}}, "is not a dialplan extension"),
        (
            {"transfer_targets": {"out": {"extension": "1000", "context": "de fault"}}},
            "conversation.transfer_targets.out.context: 'de fault' is not a dialplan context name",
        ),
        (
            {"transfer_targets": {"out": {"context": "default"}}},
            "conversation.transfer_targets.out: missing 'extension'",
        ),
        ({"transfer_targets": {"out": {"extension": "1", "dialplan": "inline"}}}, "unknown key(s) ['dialplan']"),
        (
            {"transfer_targets": {"out": ["1000"]}},
            'expected an extension ("1000") or a mapping {extension, context}, got list',
        ),
        ({"transfer_targets": ["1000"]}, "conversation.transfer_targets: expected a mapping, got list"),
        ({"transfer_destination": "sip:1000@pbx"}, f"conversation.transfer_destination: 'sip:1000@pbx' {DIAL_STRING}"),
    ],
)
def test_bad_targets_are_refused_at_load_saying_what_is_wrong(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        conversation(**data)
    assert message in str(info.value)
