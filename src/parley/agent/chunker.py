"""Sentence and clause chunking of streamed LLM text, so speech synthesis can start before the reply ends.

Owns: deciding where a streamed reply is cut into pieces for TTS. Pure: no asyncio, no clock, no I/O.
Must not know about providers, audio or calls.

Policy (one :class:`SentenceChunker` per reply; :meth:`SentenceChunker.flush` ends the reply and resets):

* The **first** chunk is cut as early as a natural pause allows: at a sentence end of any length
  ("Hi." alone is fine), or at a clause mark (``,`` ``;`` ``:`` or a dash) once it is at least
  ``first_min_chars`` long. TTS starts on it while the model keeps writing.
* **Later** chunks are cut at sentence ends (``. ! ? …``, a newline) once at least ``min_chars`` long,
  so short sentences ("Sure.") ride along with the next one instead of being synthesized alone.
* No chunk exceeds ``max_chars``: with no acceptable end in reach it is cut at the last clause mark in
  its second half, else at the last space (a single longer token is never broken).
* A period is a sentence end only when whitespace follows, which keeps numbers, decimals, prices,
  times, URLs and e-mail addresses ("3.5", "$4.99", "10:30", "example.com") whole; titles and other
  abbreviations ("Dr.", "Mr.", "St.", "e.g.", single initials) never end a sentence; "a.m.", "p.m.",
  "etc." end one only when a capital letter follows; "No." does unless a digit follows; a number
  opening a chunk or line ("1. ") is a list marker.
* Whitespace runs collapse to one space; chunks are stripped and never empty.

Cuts depend only on the text, never on how it was split into deltas: where a decision needs a character
that has not arrived yet, the chunker waits for it. So feeding a reply whole, in pieces or one character
at a time gives the same chunks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import Enum

__all__ = ["SentenceChunker"]

_TERMINATORS = ".!?…"
_CLOSERS = "\"')]}”’»"
_OPENERS = "\"'([{“‘«"
_CLAUSE_MARKS = ",;:"
_WHITESPACE_RUN = re.compile(r"\s+")

# A period after these never ends a sentence (compared lower-case, without the final period).
_TITLES = frozenset(
    "mr mrs ms mx dr prof st sr jr vs e.g i.e approx apt ave blvd capt col dept est fig gen gov hon lt mt "
    "ft rd rev sgt vol".split()
)
# ... and after these only when a capital letter follows ("at 9 a.m. See you then").
_SENTENCE_FINAL_ABBREVIATIONS = frozenset({"a.m", "p.m", "etc", "inc", "ltd"})
_INITIALISM = re.compile(r"(?:[a-z]\.)+[a-z]")


class _Kind(Enum):
    SENTENCE = "sentence"
    CLAUSE = "clause"


class _Wait(Enum):
    """The decision at the end of the buffer needs a character that has not arrived yet."""

    SENTENCE = "sentence"
    CLAUSE = "clause"


def _normalize(text: str) -> str:
    """Collapse whitespace runs (a run holding a newline becomes one newline) and drop leading space."""

    def one(match: re.Match[str]) -> str:
        return "\n" if "\n" in match.group() else " "

    return _WHITESPACE_RUN.sub(one, text).lstrip()


def _clean(chunk: str) -> str:
    return chunk.replace("\n", " ").strip()


def _period_ends_sentence(buf: str, dot: int, after: int, final: bool) -> bool | None:
    """Whether the single period at ``dot`` (whitespace at ``after``) ends a sentence; None: wait."""
    start = max(buf.rfind(" ", 0, dot), buf.rfind("\n", 0, dot)) + 1
    token = buf[start:dot].lstrip(_OPENERS)
    lower = token.lower()
    if lower in _TITLES or (len(token) == 1 and token.isalpha()):
        return False
    if token.isdigit() and (start == 0 or buf[start - 1] == "\n"):
        return False  # "1. " opening a chunk or a line is a list marker
    capital_rule = lower in _SENTENCE_FINAL_ABBREVIATIONS
    if not capital_rule and lower != "no" and _INITIALISM.fullmatch(lower):
        return False  # "e.g", "u.s"
    if not capital_rule and lower != "no":
        return True
    if after + 1 >= len(buf):
        return True if final else None
    following = buf[after + 1]
    if lower == "no":
        return not following.isdigit()
    return following.isupper()


def _boundaries(buf: str, final: bool) -> Iterator[tuple[int, _Kind] | _Wait]:
    """Every possible cut in ``buf`` in order, as (end index, kind); a trailing undecidable one as _Wait."""
    n = len(buf)
    i = 0
    while i < n:
        ch = buf[i]
        if ch == "\n":
            yield i, _Kind.SENTENCE
        elif ch in _TERMINATORS:
            j = i
            while j < n and buf[j] in _TERMINATORS:
                j += 1
            run_end = j
            while j < n and buf[j] in _CLOSERS:
                j += 1
            if j == n:
                if not final:
                    yield _Wait.SENTENCE
                return
            if buf[j].isspace():
                ends = True if run_end - i > 1 or ch != "." else _period_ends_sentence(buf, i, j, final)
                if ends is None:
                    yield _Wait.SENTENCE
                    return
                if ends:
                    yield j, _Kind.SENTENCE
            i = j
            continue
        elif ch in _CLAUSE_MARKS or ch in "-–":
            spaced_dash = ch not in _CLAUSE_MARKS
            if spaced_dash and (i == 0 or buf[i - 1] != " "):
                pass  # a hyphen or range inside a word or number ("walk-in", "9–5")
            elif i + 1 == n:
                if not final:
                    yield _Wait.CLAUSE
                return
            elif buf[i + 1].isspace():
                yield i + 1, _Kind.CLAUSE
        elif ch == "—":
            yield i + 1, _Kind.CLAUSE
        i += 1


class SentenceChunker:
    """Cuts a streamed reply into speakable chunks; see the module docstring for the policy."""

    __slots__ = ("_buf", "_first", "first_min_chars", "max_chars", "min_chars")

    def __init__(self, first_min_chars: int = 15, min_chars: int = 20, max_chars: int = 200) -> None:
        if not 1 <= first_min_chars <= max_chars or not 1 <= min_chars <= max_chars:
            raise ValueError(
                f"need 1 <= first_min_chars, min_chars <= max_chars; got {first_min_chars}, {min_chars}, {max_chars}"
            )
        self.first_min_chars = first_min_chars
        self.min_chars = min_chars
        self.max_chars = max_chars
        self._buf = ""
        self._first = True

    @property
    def pending(self) -> str:
        """Text received but not yet emitted (whitespace-normalized)."""
        return self._buf

    def push(self, delta: str) -> list[str]:
        """Add streamed text; return the chunks that are now complete (often none)."""
        if not delta:
            return []
        self._buf = _normalize(self._buf + delta)
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """The reply ended: return the remaining chunks and get ready for a new reply."""
        chunks = self._drain(final=True)
        rest = _clean(self._buf)
        if rest:
            chunks.append(rest)
        self._buf = ""
        self._first = True
        return chunks

    def _drain(self, *, final: bool) -> list[str]:
        chunks: list[str] = []
        while (cut := self._next_cut(final)) is not None:
            chunk = _clean(self._buf[:cut])
            self._buf = self._buf[cut:].lstrip()
            if chunk:
                chunks.append(chunk)
                self._first = False
        return chunks

    def _accepts(self, kind: _Kind, length: int) -> bool:
        if kind is _Kind.SENTENCE:
            return self._first or length >= self.min_chars
        return self._first and length >= self.first_min_chars

    def _next_cut(self, final: bool) -> int | None:
        """Index to cut the buffer at, or None to wait for more text (or, when ``final``, for none)."""
        buf = self._buf
        fallback: int | None = None
        for candidate in _boundaries(buf, final):
            if isinstance(candidate, _Wait):
                if candidate is _Wait.SENTENCE or self._first:
                    return None
                break  # an undecided clause mark only matters for a first chunk
            end, kind = candidate
            chunk = _clean(buf[:end])
            if not any(c.isalnum() for c in chunk):
                continue  # nothing speakable yet ("...", a dash)
            length = len(chunk)
            if length > self.max_chars:
                break
            if self._accepts(kind, length):
                return end
            fallback = end
        if len(buf.rstrip()) <= self.max_chars:
            return None
        # Nothing acceptable within max_chars, and nothing later can be: cap this chunk.
        if fallback is not None and len(_clean(buf[:fallback])) * 2 >= self.max_chars:
            return fallback
        space = max(buf.rfind(" ", 0, self.max_chars + 1), buf.rfind("\n", 0, self.max_chars + 1))
        if space > 0:
            return space
        beyond = _WHITESPACE_RUN.search(buf, self.max_chars)  # one token longer than max_chars: keep it whole
        if beyond is not None:
            return beyond.start()
        return len(buf) if final else None
