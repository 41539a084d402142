"""The tools the brain may call on a phone call: hang up, and transfer to a person.

Owns: their specifications (names, descriptions, JSON-schema parameters) as offered to the brain.
Carrying them out is the session's job (after the goodbye or handover sentence has been heard).
"""

from __future__ import annotations

from parley.config import ConversationSettings
from parley.providers.base import ToolSpec

TERMINAL_TOOLS = frozenset({"hangup", "transfer"})


def tool_specs(settings: ConversationSettings) -> tuple[ToolSpec, ...]:
    specs = [
        ToolSpec(
            "hangup",
            "End the call after saying goodbye. Use when the caller is done or asks to hang up.",
            {"type": "object", "properties": {}, "additionalProperties": False},
        )
    ]
    if settings.transfer_destination:
        specs.append(
            ToolSpec(
                "transfer",
                "Transfer the caller to a human at the front desk. Say you are transferring them first.",
                {
                    "type": "object",
                    "properties": {
                        "destination": {
                            "type": "string",
                            "enum": [settings.transfer_destination],
                            "description": "where to transfer the call",
                        }
                    },
                    "required": ["destination"],
                    "additionalProperties": False,
                },
            )
        )
    return tuple(specs)
