"""Call.transfer sends only `uuid_transfer <uuid> <extension> XML <context>`: never `bridge:... inline`."""

from __future__ import annotations

import pytest

from parley.config import DialplanSettings, FreeSwitchSettings
from parley.freeswitch.call import Call

UUID = "3f2b8c1e-0000-4000-8000-000000000001"


class RecordingEsl:
    def __init__(self) -> None:
        self.commands: list[str] = []

    async def api(self, command: str, *, timeout: float | None = None, check: bool = True) -> str:
        self.commands.append(command)
        return "+OK"


def make_call() -> tuple[Call, RecordingEsl]:
    esl = RecordingEsl()
    settings = FreeSwitchSettings(dialplan=DialplanSettings(context="public"))
    return Call(UUID, esl, settings), esl  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("extension", "context", "command"),
    [
        ("1000", None, f"uuid_transfer {UUID} 1000 XML public"),
        ("1001", "default", f"uuid_transfer {UUID} 1001 XML default"),
        ("front_desk", None, f"uuid_transfer {UUID} front_desk XML public"),
        ("*98", "features", f"uuid_transfer {UUID} *98 XML features"),
        ("+15551234567", None, f"uuid_transfer {UUID} +15551234567 XML public"),
    ],
)
async def test_transfer_goes_through_the_dialplan(extension: str, context: str | None, command: str) -> None:
    call, esl = make_call()
    await call.transfer(extension, context=context)
    assert esl.commands == [command]


@pytest.mark.parametrize(
    ("extension", "context"),
    [
        ("sip:x@attacker.example", None),
        ("sofia/gateway/carrier/011447700900123", None),
        ("sofia/external/011447700900123@carrier", None),
        ("bridge:sofia/gateway/carrier/011", None),
        ("1000 inline", None),
        ("1000 XML default", None),
        ("&bridge(user/1000)", None),
        ("1000,1001", None),
        ("${sofia_contact(1000)}", None),
        ("1000\r\nevent plain ALL", None),
        ("1000\n", None),
        ("-1000", None),
        ("", None),
        ("１０００", None),
        ("x" * 65, None),
        ("1000", "default inline"),
        ("1000", "../etc"),
        ("1000", "public\n"),
    ],
)
async def test_anything_but_a_plain_extension_is_refused_and_nothing_is_sent(
    extension: str, context: str | None
) -> None:
    call, esl = make_call()
    with pytest.raises(ValueError, match=r"^refusing to transfer "):
        await call.transfer(extension, context=context)
    assert esl.commands == []


async def test_only_the_xml_dialplan() -> None:
    call, esl = make_call()
    for dialplan in ("inline", "xml", "XML inline"):
        with pytest.raises(ValueError, match=r"^refusing to transfer with dialplan "):
            await call.transfer("1000", dialplan=dialplan)
    await call.transfer("1000", dialplan="XML")
    assert esl.commands == [f"uuid_transfer {UUID} 1000 XML public"]
