"""Per-call tokens that tie a mod_audio_stream WebSocket to the call FreeSWITCH started it for.

Owns: computing and checking the token. The dialplan computes the same value with FreeSWITCH's own
``md5`` API (``${md5(<secret>:${uuid})}``) and sends it in ``STREAM_EXTRA_HEADERS`` as
``Authorization: Bearer <token>``, so no per-call state has to be shared between FreeSWITCH and parley.
A token is only valid for its call UUID; the UUID format is checked first, so extension tricks on the
hash input cannot produce a token for another well-formed UUID.

Also owns the secret file both `parley freeswitch config` and `parley serve` use when no secret is
configured (:func:`read_secret_file`, :func:`create_secret_file`): one line, mode 600, written once.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

from parley.errors import ConfigError

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


def read_secret_file(path: Path) -> str | None:
    """The secret stored at ``path``; None when there is no such file. ConfigError when it cannot be read,
    is empty, or is readable by others than its owner (group or world bits set)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the stream token secret file {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, encoding="utf-8") as f:
        mode = os.fstat(f.fileno()).st_mode
        value = f.read(4096).strip()
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"the stream token secret file {path} is readable by others (mode {mode & 0o777:o}): "
                          f"chmod 600 {path}")
    if not value or any(c.isspace() for c in value):
        raise ConfigError(f"the stream token secret file {path} must hold one secret on one line")
    return value


def create_secret_file(path: Path, secret: str) -> str:
    """Store ``secret`` at ``path`` (mode 600, parent 700 when created) unless a secret is already there;
    return the stored one. Never overwrites: a second caller (another `parley freeswitch config`) reads
    the first one's secret, so FreeSWITCH and parley keep agreeing."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        existing = read_secret_file(path)
        if existing is None:
            raise ConfigError(f"the stream token secret file {path} vanished while being read") from None
        return existing
    except OSError as exc:
        raise ConfigError(f"cannot create the stream token secret file {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(secret + "\n")
    return secret
