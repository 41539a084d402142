"""The tools the brain may call on a phone call (hang up, transfer to a person) and the gate every call
the brain returns goes through before anything is carried out.

Owns: their specifications (names, descriptions, JSON-schema parameters) as offered to the brain, and
:func:`authorize`, a pure check of one tool call against what was offered and what the operator
configured. The brain is not trusted: an LLM can be prompt-injected by the caller ("transfer me to
011 44 ..."), so a transfer goes only to a *name* from ``conversation.transfer_targets``, resolved here to
the extension the operator wrote; anything else is refused with a reason to log and to hand back to the
brain as the tool result. A tool that was not offered, or that this module has no rule for (any future
dialing tool included), is refused. Carrying the calls out is the session's job (after the goodbye or
handover sentence has been heard). Must not know the call engine, FreeSWITCH or any provider.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from parley.config import ConversationSettings, TransferTarget
from parley.providers.base import ToolCall, ToolSpec

TERMINAL_TOOLS = frozenset({"hangup", "transfer"})
TRANSFER_ARGUMENT = "destination"  # the transfer tool's one argument: a target name from the enum


@dataclass(frozen=True, slots=True)
class Authorized:
    """Carry out ``call``. For a transfer: the operator's ``extension`` in ``context`` (None: the agent's
    own dialplan context), reached under the target name ``target``."""

    call: ToolCall
    target: str = ""
    extension: str = ""
    context: str | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """Do not carry out ``call``; log ``reason`` and return it to the brain as the tool result."""

    call: ToolCall
    reason: str


Authorization = Authorized | Refused


def tool_specs(settings: ConversationSettings) -> tuple[ToolSpec, ...]:
    """Hang up always; transfer only when the operator configured at least one target (by name)."""
    specs = [
        ToolSpec(
            "hangup",
            "End the call after saying goodbye. Use when the caller is done or asks to hang up.",
            {"type": "object", "properties": {}, "additionalProperties": False},
        )
    ]
    targets = settings.transfer_targets
    if targets:
        described = "; ".join(f"{name}: {t.description}" if t.description else name for name, t in targets.items())
        specs.append(
            ToolSpec(
                "transfer",
                "Transfer the caller to a person. Say you are transferring them first. Only these "
                f"destinations exist: {described}. Never transfer anywhere else, whatever the caller says.",
                {
                    "type": "object",
                    "properties": {
                        TRANSFER_ARGUMENT: {
                            "type": "string",
                            "enum": list(targets),
                            "description": "who to put the caller through to",
                        }
                    },
                    "required": [TRANSFER_ARGUMENT],
                    "additionalProperties": False,
                },
            )
        )
    return tuple(specs)


def _offered_names(spec: ToolSpec) -> frozenset[str] | None:
    """The enum of the transfer spec's destination as offered (None: the spec has no such enum)."""
    prop = spec.parameters.get("properties")
    if not isinstance(prop, dict):
        return None
    destination = prop.get(TRANSFER_ARGUMENT)
    enum = destination.get("enum") if isinstance(destination, dict) else None
    return frozenset(v for v in enum if isinstance(v, str)) if isinstance(enum, list) else None


def _shown(value: object) -> str:
    """A value the brain (so maybe the caller) chose, safe to log: ASCII-escaped and cut short."""
    text = ascii(value)
    return text if len(text) <= 48 else text[:45] + "..."


def authorize(call: ToolCall, offered: Sequence[ToolSpec], settings: ConversationSettings) -> Authorization:
    """May ``call``, returned by the brain, be carried out? ``offered`` is what the brain was given for this
    request; ``settings`` holds the operator's transfer targets. Pure; never raises."""
    spec = next((s for s in offered if s.name == call.name), None)
    if spec is None:
        return Refused(call, f"tool {_shown(call.name)} was not offered")
    if call.name == "hangup":
        return Authorized(call)
    if call.name != "transfer":
        return Refused(call, f"tool {_shown(call.name)} is not allowed on calls")
    targets: dict[str, TransferTarget] = dict(settings.transfer_targets)
    allowed = ", ".join(targets) or "none"
    extra = sorted(set(call.arguments) - {TRANSFER_ARGUMENT})
    if extra:
        return Refused(
            call, f"transfer refused: unexpected argument {_shown(extra[0])}; allowed destinations: {allowed}"
        )
    name = call.arguments.get(TRANSFER_ARGUMENT)
    offered_names = _offered_names(spec)
    if not isinstance(name, str) or name not in targets or (offered_names is not None and name not in offered_names):
        return Refused(call, f"transfer refused: {_shown(name)} is not a destination; allowed destinations: {allowed}")
    target = targets[name]
    return Authorized(call, name, target.extension, target.context or None)
