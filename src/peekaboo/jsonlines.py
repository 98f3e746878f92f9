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
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                yield Line(number, error=f"not JSON: {exc.msg} at column {exc.colno}")
                continue
            yield Line(number, value)


def count_lines(path: str | Path) -> int:
    """Non-blank lines of a file: a cheap upper bound on its records."""
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())
