"""Logging for stages: one logger tree, written to the rule's log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def get_logger(name: str) -> logging.Logger:
    if not name.startswith("peekaboo"):
        name = f"peekaboo.{name}"
    return logging.getLogger(name)


def to_file(path: str | Path | None, level: int = logging.INFO) -> logging.Logger:
    """Send the package's log records to ``path`` (and stderr), replacing earlier handlers."""
    root = logging.getLogger("peekaboo")
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, mode="w", encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(handler)
    root.propagate = False
    return root


def progress(iterable=None, *, total=None, desc: str = "", unit: str = "it", **kwargs):
    """A tqdm progress bar that writes plain lines to stderr (the rule's log when redirected)."""
    from tqdm.auto import tqdm

    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        mininterval=kwargs.pop("mininterval", 5.0),
        ascii=True,
        dynamic_ncols=False,
        **kwargs,
    )
