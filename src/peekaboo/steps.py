"""The ``steps`` stage: every trace of one (model, dataset) cut into its reasoning steps, with token spans.

The segmentation itself (segmenters, spans, token positions) is in
``peekaboo.segmentation``; this module applies it to the traces' sidecars.
"""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd
import pyarrow as pa

from . import schema
from .cells import is_missing
from .logs import get_logger, progress
from .segmentation import THINK_CLOSE, THINK_OPEN, resolve_segmenter, segment, token_spans
from .stage import StageCall
from .tables import write_table
from .tracestore import read_sidecars

log = get_logger("steps")

STEPS_COLUMNS = [
    "trace_id", "item_id", "mask_id", "variant", "fill", "step", "kind", "text",
    "char_start", "char_end", "token_start", "token_end", "segmenter",
]
STEPS_SCHEMA = pa.schema(
    [
        ("trace_id", pa.string()),
        ("item_id", pa.string()),
        ("mask_id", pa.string()),
        ("variant", pa.string()),
        ("fill", pa.string()),
        ("step", pa.int32()),
        ("kind", pa.string()),
        ("text", pa.string()),
        ("char_start", pa.int32()),
        ("char_end", pa.int32()),
        ("token_start", pa.int32()),
        ("token_end", pa.int32()),
        ("segmenter", pa.string()),
    ]
)



def _offsets(value: Any) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError):
        return None


def prompt_opens_thinking(sidecar_df: pd.DataFrame) -> tuple[bool, str]:
    """Whether the prompts of these traces opened a thinking block, and how that is known.

    The sidecar's ``thinking_open`` column when the traces stage wrote one
    (any true value); else inferred: a trace that closes a block it never
    opened (``</think>`` without an earlier ``<think>``) shows that the chat
    template wrote the opening tag into the prompt, which it does for every
    trace of the model. Then a cut-off chain (no tag at all) is all thinking.
    """
    if "thinking_open" in sidecar_df.columns and sidecar_df["thinking_open"].notna().any():
        return bool(sidecar_df["thinking_open"].fillna(False).astype(bool).any()), "the sidecar's thinking_open"
    n = 0
    for text in sidecar_df.get("text", pd.Series(dtype=object)):
        if is_missing(text):
            continue
        text = str(text)
        close = text.find(THINK_CLOSE)
        if close != -1 and not (0 <= text.find(THINK_OPEN) < close):
            n += 1
    return n > 0, f"{n} traces close a thinking block they never opened" if n else "no trace closes an unopened block"


def trace_steps(row: Mapping[str, Any], segmenter: str, cfg: Mapping[str, Any],
                thinking_open: bool = False) -> list[dict[str, Any]]:
    """The steps of one sidecar row as table records; a row whose offsets are unusable gets null token spans.

    ``thinking_open``: the prompt opened a thinking block (``prompt_opens_thinking``):
    a text without ``</think>`` is a chain cut off mid-thought, with no answer step.
    """
    text = row.get("text")
    text = "" if is_missing(text) else str(text)
    cut_off = thinking_open and THINK_CLOSE not in text
    name = "think" if cut_off else resolve_segmenter(text, segmenter)
    steps = segment(text, name, cfg["think_split"], int(cfg["min_chars"]), thinking_open=thinking_open)
    spans: list[tuple[int | None, int | None]] = [(None, None)] * len(steps)
    starts, ends = _offsets(row.get("token_char_start")), _offsets(row.get("token_char_end"))
    if steps and starts is not None and ends is not None:
        try:
            spans = token_spans(steps, text, starts, ends)  # type: ignore[assignment]
        except ValueError as exc:
            log.warning("trace %s: token spans left empty: %s", row.get("trace_id"), exc)
    elif steps:
        log.warning("trace %s: no per-token character offsets; token spans left empty", row.get("trace_id"))
    return [
        {
            "trace_id": row.get("trace_id"),
            "item_id": row.get("item_id"),
            "mask_id": row.get("mask_id"),
            "variant": row.get("variant"),
            "fill": row.get("fill"),
            "step": i,
            "kind": s.kind,
            "text": s.text,
            "char_start": s.char_start,
            "char_end": s.char_end,
            "token_start": tok[0],
            "token_end": tok[1],
            "segmenter": name,
        }
        for i, (s, tok) in enumerate(zip(steps, spans))
    ]


def segment_traces(sidecar_df: pd.DataFrame, segmenter: str, cfg: Mapping[str, Any]) -> pd.DataFrame:
    """Steps of every ok trace of a sidecar frame; failed traces are reported and left out.

    ``cfg`` is the config's ``steps`` section (absent keys take the schema's defaults). Columns: ``STEPS_COLUMNS``.
    """
    cfg = schema.section("steps", cfg)
    resolve_segmenter("", segmenter)  # fail early on an unknown name
    missing = [c for c in ("trace_id", "text") if c not in sidecar_df.columns]
    if missing:
        raise ValueError(f"sidecar frame lacks column(s) {', '.join(missing)}")
    records: list[dict[str, Any]] = []
    n_failed = n_empty = 0
    rows = sidecar_df.to_dict("records")
    opened, why = prompt_opens_thinking(sidecar_df)
    if opened:
        log.info("the prompt opens a thinking block (%s): a chain without </think> gets no answer step", why)
    for row in progress(rows, total=len(rows), desc="segment", unit="trace"):
        if str(row.get("status", "ok")) != "ok":
            n_failed += 1
            log.warning("trace %s: status %s (%s); left out", row.get("trace_id"), row.get("status"), row.get("error"))
            continue
        row_open = opened if is_missing(row.get("thinking_open")) else bool(row.get("thinking_open"))
        out = trace_steps(row, segmenter, cfg, thinking_open=row_open)
        n_empty += not out
        records.extend(out)
    log.info(
        "%d traces: %d segmented into %d steps, %d without any step, %d failed (left out)",
        len(rows), len(rows) - n_failed, len(records), n_empty, n_failed,
    )
    return steps_frame(records)


def steps_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """A steps frame with the table's column order and types (also when empty)."""
    table = pa.Table.from_pylist(records, schema=STEPS_SCHEMA) if records else STEPS_SCHEMA.empty_table()
    # nullable integers: token spans are null where the sidecar's offsets were unusable
    return table.to_pandas(types_mapper={pa.int32(): pd.Int32Dtype()}.get)


def run_stage(call: StageCall) -> None:
    """The ``steps`` rule: segment every shard's sidecar of one (model, dataset) into ``output.steps``.

    ``config``: ``steps`` (the section) and ``segmenter`` (the model's).
    """
    steps = segment_traces(read_sidecars(call.paths("sidecars")), call.config["segmenter"], call.config["steps"])
    write_table(steps, call.output("steps"), call.provenance(), schema=STEPS_SCHEMA)
