"""Reading JSON Lines files: one JSON value per line, every unreadable line reported with its number and reason.

Used by every reader of JSONL input (a user's dataset, evidence-box files,
imported generations), so that bad input is treated alike everywhere: a line
that is not valid UTF-8 or not JSON is reported (never read with replacement
characters, never dropped silently) and the lines around it are read as usual.
A UTF-8 byte-order mark at the start of the file is read as such, not as part
of the first record. Lines are split on ``\\n`` only (the JSON Lines rule), so
a ``\\u2028`` inside a string cannot cut a record in two.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


class DuplicateKeyError(ValueError):
    """A JSON object holds the same key twice; ``key`` names it."""

    def __init__(self, key: str):
        self.key = key
        super().__init__(f"duplicate key {key!r}: the object holds it twice")


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(key)
        out[key] = value
    return out


def loads(text: str | bytes) -> Any:
    """``json.loads`` that refuses an object repeating a key (DuplicateKeyError, a ValueError, naming it)."""
    return json.loads(text, object_pairs_hook=_refuse_duplicates)


class MarkedObject(dict):
    """A JSON object read by :func:`load_marked`: ``duplicates`` are the keys it held more than once."""

    duplicates: tuple[str, ...] = ()


def _mark_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A plain dict, or a MarkedObject when a key repeats (so that messages naming a value's type say dict)."""
    out: dict[str, Any] = {}
    seen: list[str] = []
    for key, value in pairs:
        if key in out and key not in seen:
            seen.append(key)
        out[key] = value
    if not seen:
        return out
    marked = MarkedObject(out)
    marked.duplicates = tuple(seen)
    return marked


def load_marked(path: str | Path) -> Any:
    """A whole-file JSON document whose objects remember the keys they repeat (:func:`duplicate_key` finds them).

    For datasets published as one JSON file (a list or a map of records): one record repeating a key must cost
    that record, not the file.
    """
    with open(path, encoding="utf-8-sig") as fh:
        return json.load(fh, object_pairs_hook=_mark_duplicates)


def duplicate_key(value: Any) -> str | None:
    """The first key some object inside ``value`` (read by :func:`load_marked`) repeats; None when none does."""
    if isinstance(value, MarkedObject) and value.duplicates:
        return value.duplicates[0]
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        found = duplicate_key(child)
        if found is not None:
            return found
    return None


def json_error(exc: json.JSONDecodeError) -> str:
    """Why a text is not JSON, as a reject reason: the decoder's message and the column.

    Some of ``json``'s messages end in "at" ("Invalid control character at", "Unterminated string starting
    at"): the column follows them directly rather than after a second "at".
    """
    msg = exc.msg.rstrip()
    return f"not JSON: {msg} column {exc.colno}" if msg.endswith(" at") else f"not JSON: {msg} at column {exc.colno}"


@dataclass(frozen=True)
class Line:
    """One non-blank line: its 1-based number and either the parsed value or why it could not be read."""

    number: int
    value: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def read_lines(path: str | Path) -> Iterator[Line]:
    """Every non-blank line of a JSON Lines file, parsed (see the module doc)."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Line(number, error=f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} "
                                         f"of the line ({exc.reason})")
                continue
            if not text.strip():
                continue
            try:
                value = loads(text)
            except json.JSONDecodeError as exc:
                yield Line(number, error=json_error(exc))
                continue
            except DuplicateKeyError as exc:
                yield Line(number, error=str(exc))
                continue
            yield Line(number, value)


def count_lines(path: str | Path) -> int:
    """Non-blank lines of a file: a cheap upper bound on its records."""
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())
