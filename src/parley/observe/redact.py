"""What must not leave the process in clear: callers' phone numbers (and, via the log filter, their words).

Owns: the one masking rule for phone numbers, shared by the dashboard, the logs and the trace attributes.
"""

from __future__ import annotations


def redact_number(value: str | None) -> str | None:
    """Mask all but the last two characters (all of a short number such as an extension)."""
    if not value:
        return value
    return "*" * len(value) if len(value) < 6 else "*" * (len(value) - 2) + value[-2:]
