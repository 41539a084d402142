"""Per-call tokens that tie a mod_audio_stream WebSocket to the call FreeSWITCH started it for.

Owns: computing and checking the token. The dialplan computes the same value with FreeSWITCH's own
``md5`` API (``${md5(<secret>:${uuid})}``) and sends it in ``STREAM_EXTRA_HEADERS`` as
``Authorization: Bearer <token>``, so no per-call state has to be shared between FreeSWITCH and parley.
A token is only valid for its call UUID; the UUID format is checked first, so extension tricks on the
hash input cannot produce a token for another well-formed UUID.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def is_call_uuid(value: str) -> bool:
    return bool(UUID_RE.match(value))


def stream_token(secret: str, call_uuid: str) -> str:
    """md5 hex of ``<secret>:<uuid>``: what FreeSWITCH's ``${md5(...)}`` expansion yields."""
    return hashlib.md5(f"{secret}:{call_uuid}".encode(), usedforsecurity=False).hexdigest()


def check_stream_token(secret: str, call_uuid: str, headers: Mapping[str, str]) -> bool:
    """True when the upgrade request carries ``Authorization: Bearer <token>`` valid for this call."""
    if not is_call_uuid(call_uuid):
        return False
    auth = ""
    for name, value in headers.items():
        if name.lower() == "authorization":
            auth = value
            break
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(token.strip().lower(), stream_token(secret, call_uuid))
