"""The call-record writes a store could not commit before it closed, kept on local disk until the next start.

Owns: the spill file format (JSON lines, one queued write per line), writing it durably (temporary file,
fsync, rename: a file is either whole or absent), and claiming the files left by earlier runs so that one
store replays each file once, even with several workers sharing the folder (the claim is an atomic rename).
Must not know the schema: a write is a table name plus its rows, or a call's finish; the store maps names
to its models.

Why: the writer retries a database that is down, full or read-only for as long as the process lives, but
at shutdown (a drain, a deploy, SIGTERM) whatever is still queued would be lost: typically the last turns
and the outcome of the calls that ended while the database was away. Spilled, they land at the next start.

Replay is at-least-once: a batch whose commit reached the database but whose answer was lost with the
connection is written again. A call's start and finish are idempotent (the primary key refuses the second
start, which the writer drops singly; a finish is an update); a turn, usage or event row can then appear
twice, which only a connection cut at the instant of a commit can cause.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.engine import make_url

log = logging.getLogger("parley.records")

PREFIX = "records-spill-"
SUFFIX = ".jsonl"
_DT = "$datetime"


def spill_folder(url: str, configured: str = "") -> Path:
    """Where a store on ``url`` spills: ``configured`` if set; next to a SQLite file (``calls.db`` ->
    ``calls.db.spill/``, so a test's or a second instance's database never replays another's writes);
    else ``$XDG_STATE_HOME/parley/records-spill`` (``~/.local/state/...``)."""
    if configured:
        return Path(configured).expanduser()
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:"):
        db = Path(u.database).expanduser()
        return db.with_name(db.name + ".spill")
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "parley" / "records-spill"


@dataclass(frozen=True, slots=True)
class SpilledWrite:
    """One queued write: rows for ``table`` (``kind="insert"``), or a call's finish (``kind="finish"``)."""

    kind: Literal["insert", "finish"]
    table: str = ""
    rows: tuple[dict[str, Any], ...] = ()
    lifecycle: bool = False
    call_id: str = ""
    values: dict[str, Any] | None = None
    start: dict[str, Any] | None = None


def _encode(value: object) -> object:
    if isinstance(value, datetime):
        return {_DT: value.isoformat()}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: object) -> Any:
    if isinstance(value, dict):
        if set(value) == {_DT}:
            return datetime.fromisoformat(str(value[_DT]))
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def encode_line(write: SpilledWrite) -> str:
    if write.kind == "insert":
        body: dict[str, object] = {"kind": "insert", "table": write.table, "rows": list(write.rows),
                                   "lifecycle": write.lifecycle}
    else:
        body = {"kind": "finish", "call_id": write.call_id, "values": write.values, "start": write.start}
    return json.dumps(_encode(body), separators=(",", ":"), allow_nan=True, default=str)


def decode_line(line: str) -> SpilledWrite:
    """One line back to a write; ValueError for a line that is not one (the file is then left for a human)."""
    raw = _decode(json.loads(line))
    if not isinstance(raw, dict):
        raise ValueError("a spill line must be a JSON object")
    if raw.get("kind") == "insert" and isinstance(raw.get("table"), str) and isinstance(raw.get("rows"), list):
        rows = tuple(r for r in raw["rows"] if isinstance(r, dict))
        return SpilledWrite("insert", table=raw["table"], rows=rows, lifecycle=bool(raw.get("lifecycle")))
    if raw.get("kind") == "finish" and isinstance(raw.get("call_id"), str) and isinstance(raw.get("values"), dict):
        start = raw.get("start") if isinstance(raw.get("start"), dict) else {}
        return SpilledWrite("finish", call_id=raw["call_id"], values=raw["values"], start=start)
    raise ValueError(f"not a spilled write: {line[:80]!r}")


def write_spill(folder: Path, writes: Iterable[SpilledWrite], *, host: str) -> Path | None:
    """Write ``writes`` to a new spill file in ``folder`` (created, mode 700); None when there were none.
    Raises OSError when the disk refuses (the caller logs it: the writes are then lost, as before)."""
    lines = [encode_line(w) + "\n" for w in writes]
    if not lines:
        return None
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    safe_host = "".join(c if c.isalnum() or c in "-_." else "_" for c in host)[:64]
    final = folder / f"{PREFIX}{safe_host}-{datetime.now().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}{SUFFIX}"
    tmp = final.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # caller words: private to this user
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def unclaimed(path: Path) -> Path:
    """A claimed file's name before the claim (``...jsonl.replaying-<pid>`` -> ``...jsonl``)."""
    return path.with_name(path.name.split(".replaying-", 1)[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@dataclass(frozen=True, slots=True)
class Claimed:
    """A spill file this process claimed, and the writes it holds."""

    path: Path
    writes: tuple[SpilledWrite, ...]


def claim_spills(folder: Path) -> Iterator[Claimed]:
    """The spill files left in ``folder``, each claimed by renaming it (so another worker starting at the same
    time never replays it too). A file with an unreadable line is set aside as ``*.bad`` and logged."""
    if not folder.is_dir():
        return
    for orphan in folder.glob(f"{PREFIX}*{SUFFIX}.replaying-*"):  # its claimer died before writing it
        pid = orphan.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.rename(orphan, unclaimed(orphan))
    for path in sorted(folder.glob(f"{PREFIX}*{SUFFIX}")):
        claimed = path.with_name(f"{path.name}.replaying-{os.getpid()}")
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            continue  # another worker claimed it first
        try:
            text = claimed.read_text(encoding="utf-8")
            writes = tuple(decode_line(line) for line in text.splitlines() if line.strip())
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            bad = path.with_name(path.name + ".bad")
            os.rename(claimed, bad)
            log.error("call records: cannot read the spill file %s (%s); kept as %s", path.name, exc, bad.name)
            continue
        yield Claimed(claimed, writes)
