"""What the viewer shows, read from the result tables and trace stores: one (model, dataset) at a time.

Nothing here draws or writes HTML (that is :mod:`peekaboo.viewer.site`); every
function returns plain data, so a notebook can call it and the tests can hold
it against the tables it came from.

- :func:`load_pair` reads the tables of one (model, dataset); a table that is
  missing or unreadable is reported and read as empty, so the pages show what
  the others hold.
- :class:`StoreReader` reads the per-token arrays of one trace from the
  shards' Zarr stores a block of traces at a time (the stores' chunking).
- :func:`step_maps` turns a trace's per-token attention over the image into one
  map per step: the mean over the step's tokens of ``image_attn`` (head mean,
  averaged over the stored map layers), as shares of the step's image attention
  (they sum to 1 over the patches of all the item's images). Where the collapse
  stage excluded attention sinks, those patches are zeroed first and the shares
  renormalised, so the map is the one the collapse measures read. This is
  ``collapse``'s per-step ``patch_map`` normalised as in its ``maps`` table.
- :func:`token_entropies` cuts a step into its generated tokens with their
  entropy and log-probability.
- :func:`item_record` assembles one item's page data: the base trace's steps
  with their tokens and maps, every masked variant with its steps matched to
  the base steps (the CRM alignment) and the per-region attribution and mode.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..cells import as_list, is_missing, json_list, optional_bool, optional_int, parse_meta
from ..logs import get_logger

log = get_logger("viewer")

# masks.variants names -> how a variant id starts
VARIANT_GROUPS = {"drop": "drop:", "drop_all": "drop:all", "keep_evidence": "keep:evidence", "control": "ctrl:"}
_REGION_VARIANT_RE = re.compile(r"^(drop|ctrl):(\d+)$")

# per-trace columns of the collapse traces table shown in the index when present (more vision measures and
# boolean subsets such as a planted 'blink' set are picked up by name and type, see index_columns)
KNOWN_TRACE_NUMBERS = ("entropy_full", "entropy_answer", "vision")
TRACE_FLAG_SKIP = {"correct", "abstained", "truncated", "answer_changed", "sinks_excluded"}


class ViewerError(ValueError):
    """The viewer's inputs are unusable; the message names the file, item or key."""


# ----------------------------------------------------------------------------- names


def safe_name(text: str, taken: set[str] | None = None) -> str:
    """A file name for an id: its safe characters, plus a short hash when any were changed or the name is taken.

    ``taken`` holds lower-cased names already used in the same folder (case-insensitive file systems).
    """
    text = str(text)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "item"
    slug = slug[:80]
    if slug != text or (taken is not None and slug.lower() in taken):
        slug = f"{slug}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:8]}"
    if taken is not None:
        taken.add(slug.lower())
    return slug


def variant_key(variant: str, fill: str) -> str:
    """``drop:0`` + ``gray`` -> ``drop-0-gray`` (variants and fills come from fixed sets)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", f"{variant}-{fill}").strip("-")


def region_of_variant(variant: str) -> tuple[str, int | None]:
    """``drop:3`` -> ("drop", 3), ``ctrl:1`` -> ("ctrl", 1), anything else -> (variant, None)."""
    m = _REGION_VARIANT_RE.match(str(variant))
    return (m.group(1), int(m.group(2))) if m else (str(variant), None)


def variant_shown(variant: str, groups: Sequence[str]) -> bool:
    """Whether a masked variant belongs to one of the configured ``viewer.variants`` groups."""
    for group in groups:
        prefix = VARIANT_GROUPS[group]
        if variant == prefix or (prefix.endswith(":") and variant.startswith(prefix)):
            return True
    return False


# ----------------------------------------------------------------------------- the tables of one (model, dataset)


@dataclass
class PairSources:
    """The files of one (model, dataset), each None when the rule gave none."""

    model: str
    dataset: str
    items: Path | None = None
    masks: Path | None = None
    sidecars: list[Path] = field(default_factory=list)
    stores: list[Path] = field(default_factory=list)
    steps: Path | None = None
    alignment: Path | None = None
    attribution: Path | None = None
    modes: Path | None = None
    collapse_steps: Path | None = None
    collapse_traces: Path | None = None
    collapse_sinks: Path | None = None


# documented layout (docs/architecture.md) of each input, relative to the results folder
_LAYOUT = [
    ("items", re.compile(r"^items/(?P<d>[^/]+)\.parquet$")),
    ("masks", re.compile(r"^masks/(?P<d>[^/]+)\.parquet$")),
    ("sidecars", re.compile(r"^traces/(?P<m>[^/]+)/(?P<d>[^/]+)/shard-\d+\.parquet$")),
    ("stores", re.compile(r"^traces/(?P<m>[^/]+)/(?P<d>[^/]+)/shard-\d+\.zarr$")),
    ("steps", re.compile(r"^steps/(?P<m>[^/]+)/(?P<d>[^/]+)\.parquet$")),
    ("alignment", re.compile(r"^crm/(?P<m>[^/]+)/(?P<d>[^/]+)/alignment\.parquet$")),
    ("attribution", re.compile(r"^crm/(?P<m>[^/]+)/(?P<d>[^/]+)/attribution\.parquet$")),
    ("modes", re.compile(r"^crm/(?P<m>[^/]+)/(?P<d>[^/]+)/modes\.parquet$")),
    # the per-trace and sinks tables before the per-step one, whose pattern would also take them
    ("collapse_traces", re.compile(r"^collapse/(?P<m>[^/]+)/(?P<d>[^/]+)\.traces\.parquet$")),
    ("collapse_sinks", re.compile(r"^collapse/(?P<m>[^/]+)/(?P<d>[^/]+)\.sinks\.parquet$")),
    ("collapse_steps", re.compile(r"^collapse/(?P<m>[^/]+)/(?P<d>[^/]+)\.parquet$")),
]


def _shard_number(path: Path) -> int:
    m = re.search(r"shard-(\d+)\.", path.name)
    return int(m.group(1)) if m else 0


def group_sources(paths: Iterable[str | Path], results_dir: str | Path) -> list[PairSources]:
    """Sort input files into (model, dataset) pairs by their place in the results folder.

    Every (model, dataset) with trace sidecars is a pair; items and masks
    tables go to every pair of their dataset. A file outside the documented
    layout is an error naming it. Pairs come out sorted by model, then dataset.
    """
    results_dir = Path(results_dir).resolve()
    per_dataset: dict[str, dict[str, Path]] = {}
    pairs: dict[tuple[str, str], PairSources] = {}
    for raw in paths:
        path = Path(raw)
        try:
            rel = path.resolve().relative_to(results_dir).as_posix()
        except ValueError:
            raise ViewerError(f"viewer input {path} is not inside the results folder {results_dir}") from None
        for kind, pattern in _LAYOUT:
            m = pattern.match(rel)
            if not m:
                continue
            if kind in ("items", "masks"):
                per_dataset.setdefault(m.group("d"), {})[kind] = path
            else:
                pair = pairs.setdefault((m.group("m"), m.group("d")), PairSources(m.group("m"), m.group("d")))
                if kind in ("sidecars", "stores"):
                    getattr(pair, kind).append(path)
                else:
                    setattr(pair, kind, path)
            break
        else:
            raise ViewerError(f"viewer input {rel} is not a table or store of the documented layout (docs/architecture.md)")
    out = []
    for (m, d), pair in sorted(pairs.items()):
        pair.sidecars.sort(key=_shard_number)
        pair.stores.sort(key=_shard_number)
        tables = per_dataset.get(d, {})
        pair.items, pair.masks = tables.get("items"), tables.get("masks")
        out.append(pair)
    return out


@dataclass
class PairTables:
    """The tables of one (model, dataset); an absent or unreadable one is an empty frame, its problem in ``problems``."""

    model: str
    dataset: str
    items: pd.DataFrame
    masks: pd.DataFrame
    sidecar: pd.DataFrame
    steps: pd.DataFrame
    alignment: pd.DataFrame
    attribution: pd.DataFrame
    modes: pd.DataFrame
    collapse_steps: pd.DataFrame
    collapse_traces: pd.DataFrame
    collapse_sinks: pd.DataFrame
    problems: list[str] = field(default_factory=list)


def _read(path: Path | None, what: str, problems: list[str]) -> pd.DataFrame:
    from ..tables import read_table

    if path is None:
        return pd.DataFrame()
    try:
        return read_table(path)
    except Exception as exc:  # a broken table must not hide the others: reported on the pages and in the log
        problems.append(f"{what} {path}: unreadable ({type(exc).__name__}: {exc})")
        log.error("%s", problems[-1])
        return pd.DataFrame()


def load_pair(src: PairSources) -> PairTables:
    """Read every table of one (model, dataset)."""
    problems: list[str] = []
    sidecars = [_read(p, "trace sidecar", problems) for p in src.sidecars]
    sidecars = [s for s in sidecars if len(s.columns)]
    sidecar = pd.concat(sidecars, ignore_index=True) if sidecars else pd.DataFrame()
    t = PairTables(
        model=src.model, dataset=src.dataset,
        items=_read(src.items, "items table", problems),
        masks=_read(src.masks, "masks table", problems),
        sidecar=sidecar,
        steps=_read(src.steps, "steps table", problems),
        alignment=_read(src.alignment, "CRM alignment table", problems),
        attribution=_read(src.attribution, "CRM attribution table", problems),
        modes=_read(src.modes, "CRM modes table", problems),
        collapse_steps=_read(src.collapse_steps, "collapse steps table", problems),
        collapse_traces=_read(src.collapse_traces, "collapse traces table", problems),
        collapse_sinks=_read(src.collapse_sinks, "collapse sinks table", problems),
        problems=problems,
    )
    for name in ("items", "sidecar"):
        frame = getattr(t, name)
        if len(frame) and ("item_id" not in frame.columns or (name == "sidecar" and "trace_id" not in frame.columns)):
            problems.append(f"the {name} table has no item_id or trace_id column: read as empty")
            log.error("%s/%s: %s", src.model, src.dataset, problems[-1])
            setattr(t, name, pd.DataFrame())
    if src.items is None:
        problems.append(f"no items table for dataset {src.dataset}: items are listed from the traces")
    return t


# ----------------------------------------------------------------------------- trace arrays


@dataclass
class TraceArrays:
    """The per-token arrays of one trace, padding removed."""

    trace_id: str
    n_tokens: int
    entropy: np.ndarray  # [token]
    logprob: np.ndarray | None  # [token]
    attn: np.ndarray | None  # [token, patch]: image_attn, mean over the stored map layers
    patch_box: np.ndarray  # [patch, 4]
    patch_image: np.ndarray  # [patch]


class StoreReader:
    """Per-trace arrays from the Zarr stores of one (model, dataset), reading a block of traces at a time.

    Items are read in store order, so keeping the last block read of each
    shard reads every chunk once. A store that cannot be opened is reported in
    ``problems`` and its traces read as missing.
    """

    def __init__(self, store_paths: Sequence[Path]):
        from ..tracestore import open_traces

        self.problems: list[str] = []
        self.stores = []
        self.index: dict[str, tuple[int, int]] = {}
        self.map_layers: list[int] | None = None
        self._cache: dict[int, tuple[int, dict[str, np.ndarray]]] = {}
        for path in store_paths:
            try:
                ds = open_traces([str(path)])
            except Exception as exc:  # reported; the traces in it show as missing
                self.problems.append(f"trace store {path}: cannot be opened ({type(exc).__name__}: {exc})")
                log.error("%s", self.problems[-1])
                continue
            k = len(self.stores)
            self.stores.append(ds)
            if "trace_id" in ds and int(ds.sizes.get("trace", 0)):
                for i, tid in enumerate(np.asarray(ds["trace_id"].values)):
                    self.index.setdefault(str(tid), (k, i))
            if self.map_layers is None and "map_layers" in ds.attrs:
                self.map_layers = [int(v) for v in json_list(ds.attrs["map_layers"])]

    def block_size(self, k: int) -> int:
        enc = self.stores[k]["entropy"].encoding.get("chunks") if "entropy" in self.stores[k] else None
        return int(enc[0]) if enc else 16

    def _block(self, k: int, i: int) -> tuple[int, dict[str, np.ndarray]]:
        size = self.block_size(k)
        start = (i // size) * size
        cached = self._cache.get(k)
        if cached is not None and cached[0] == start:
            return cached
        ds = self.stores[k]
        stop = min(start + size, int(ds.sizes["trace"]))
        block = ds.isel(trace=slice(start, stop))
        names = [n for n in ("entropy", "logprob", "image_attn", "patch_box", "patch_image", "n_tokens", "n_patches")
                 if n in block]
        data = {n: np.asarray(block[n].values) for n in names}
        self._cache[k] = (start, data)
        return start, data

    def entropies(self, trace_ids: Iterable[str]) -> np.ndarray:
        """The token entropies of the given traces, concatenated (reads only the entropy arrays)."""
        wanted: dict[int, list[int]] = {}
        for tid in trace_ids:
            if str(tid) in self.index:
                k, i = self.index[str(tid)]
                wanted.setdefault(k, []).append(i)
        out = []
        for k, rows in sorted(wanted.items()):
            ds = self.stores[k]
            ent = np.asarray(ds["entropy"].isel(trace=sorted(rows)).values, dtype=np.float64)
            n_tok = np.asarray(ds["n_tokens"].isel(trace=sorted(rows)).values)
            for j, n in enumerate(n_tok):
                row = ent[j, : int(n)]
                out.append(row[np.isfinite(row)])
        return np.concatenate(out) if out else np.array([])

    def get(self, trace_id: str) -> TraceArrays | None:
        where = self.index.get(str(trace_id))
        if where is None:
            return None
        k, i = where
        start, data = self._block(k, i)
        j = i - start
        n_tok = int(data["n_tokens"][j])
        n_patch = int(data["n_patches"][j]) if "n_patches" in data else data["patch_box"].shape[1]
        attn = data.get("image_attn")
        pimg = data.get("patch_image")
        return TraceArrays(
            trace_id=str(trace_id),
            n_tokens=n_tok,
            entropy=data["entropy"][j, :n_tok].astype(np.float64),
            logprob=data["logprob"][j, :n_tok].astype(np.float64) if "logprob" in data else None,
            attn=attn[j, :n_tok, :, :n_patch].astype(np.float64).mean(axis=1) if attn is not None else None,
            patch_box=data["patch_box"][j, :n_patch].astype(np.float64),
            patch_image=pimg[j, :n_patch].astype(int) if pimg is not None else np.zeros(n_patch, dtype=int),
        )


# ----------------------------------------------------------------------------- steps, maps, tokens


@dataclass
class Step:
    """One step of a trace as the steps table gives it; ``token_start``/``token_end`` None when unusable."""

    position: int  # index in the trace's step list (what CRM's base_step and pairs count)
    step: int
    kind: str
    text: str
    char_start: int | None
    char_end: int | None
    token_start: int | None
    token_end: int | None


def trace_steps(steps: pd.DataFrame) -> dict[str, list[Step]]:
    """trace id -> its steps in step order (the order CRM counts positions in)."""
    out: dict[str, list[Step]] = {}
    if steps.empty or "trace_id" not in steps.columns:
        return out
    ordered = steps.assign(_step=steps["step"].astype("Int64")).sort_values(["trace_id", "_step"], kind="stable")
    columns = {c: ordered[c].tolist() if c in ordered.columns else [None] * len(ordered)
               for c in ("trace_id", "step", "kind", "text", "char_start", "char_end", "token_start", "token_end")}
    for i, tid in enumerate(columns["trace_id"]):
        rows = out.setdefault(str(tid), [])
        text = columns["text"][i]
        rows.append(Step(
            position=len(rows), step=int(columns["step"][i]), kind=str(columns["kind"][i] or "think"),
            text="" if is_missing(text) else str(text),
            char_start=optional_int(columns["char_start"][i]), char_end=optional_int(columns["char_end"][i]),
            token_start=optional_int(columns["token_start"][i]), token_end=optional_int(columns["token_end"][i]),
        ))
    return out


def step_maps(attn: np.ndarray | None, steps: Sequence[Step], n_tokens: int,
              sink_patches: Sequence[int] = ()) -> np.ndarray:
    """Per step, the share of its image attention on each patch: ``[n_steps, patch]``.

    ``attn`` is ``[token, patch]`` (``image_attn`` averaged over the stored map
    layers). A step's map is the mean over its tokens, with ``sink_patches``
    zeroed, divided by its sum. A step without tokens (no span, or a span past
    the trace) is a row of NaN.
    """
    n_patch = 0 if attn is None else attn.shape[1]
    out = np.full((len(steps), n_patch), np.nan)
    if attn is None:
        return out
    sinks = np.asarray([p for p in sink_patches if 0 <= int(p) < n_patch], dtype=int)
    for k, s in enumerate(steps):
        if s.token_start is None or s.token_end is None:
            continue
        a, b = max(0, s.token_start), min(s.token_end, n_tokens)
        if b <= a:
            continue
        pmap = np.nanmean(attn[a:b], axis=0)
        if len(sinks):
            pmap = pmap.copy()
            pmap[sinks] = 0.0
        total = float(np.nansum(pmap))
        out[k] = pmap / total if total > 0 else 0.0
    return out


@dataclass
class Token:
    index: int
    text: str
    entropy: float
    logprob: float


def token_entropies(text: str, starts: Any, ends: Any, entropy: np.ndarray, logprob: np.ndarray | None,
                    token_start: int | None, token_end: int | None) -> list[Token] | None:
    """The generated tokens of one step with their entropy and log-probability; None when the offsets are unusable.

    ``starts``/``ends`` are the sidecar's ``token_char_start``/``token_char_end``
    (character offsets of every generated token into ``text``).
    """
    if token_start is None or token_end is None:
        return None
    starts, ends = as_list(starts), as_list(ends)
    n = min(len(starts), len(ends), len(entropy))
    if token_end > n or token_start < 0 or token_end < token_start:
        return None
    out = []
    for t in range(token_start, token_end):
        a, b = int(starts[t]), int(ends[t])
        if not 0 <= a <= b <= len(text):
            return None
        lp = float(logprob[t]) if logprob is not None and t < len(logprob) else math.nan
        out.append(Token(t, text[a:b], float(entropy[t]), lp))
    return out


# ----------------------------------------------------------------------------- one item


def _num(value: Any) -> float | None:
    """A finite float for JSON, or None."""
    if is_missing(value):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def _str(value: Any) -> str | None:
    return None if is_missing(value) else str(value)


def item_regions(item: Mapping[str, Any]) -> list[dict[str, Any]]:
    """An item's evidence regions: index, label, box (XYXY, pixels of image ``image``)."""
    out = []
    for k, region in enumerate(json_list(item.get("regions"))):
        if not isinstance(region, Mapping):
            continue
        box = region.get("box")
        box = [float(v) for v in as_list(box)] if box is not None else []
        if len(box) != 4:
            continue
        label = region.get("label")
        out.append({"index": k, "label": str(label) if not is_missing(label) and label else f"region {k}",
                    "box": box, "image": optional_int(region.get("image")) or 0})
    return out


def sink_patches(collapse_sinks: pd.DataFrame) -> tuple[list[int], list[int]]:
    """(detected sink patches, those the collapse stage excluded) from its sinks table."""
    if collapse_sinks.empty or "patch" not in collapse_sinks.columns:
        return [], []
    is_sink = collapse_sinks.get("is_sink", pd.Series(False, index=collapse_sinks.index)).fillna(False).astype(bool)
    excluded = collapse_sinks.get("excluded", pd.Series(False, index=collapse_sinks.index)).fillna(False).astype(bool)
    detected = sorted(int(p) for p in collapse_sinks.loc[is_sink, "patch"])
    dropped = sorted(int(p) for p in collapse_sinks.loc[is_sink & excluded, "patch"])
    return detected, dropped


def sinks_excluded(collapse_steps: pd.DataFrame) -> bool | None:
    """Whether the collapse stage excluded sinks (its per-step ``sinks_excluded``); None without the table."""
    if collapse_steps.empty or "sinks_excluded" not in collapse_steps.columns:
        return None
    values = set(collapse_steps["sinks_excluded"].dropna().astype(bool))
    if len(values) > 1:
        raise ViewerError("collapse steps table: sinks_excluded differs between rows of one model and dataset")
    return values.pop() if values else None


@dataclass
class PairContext:
    """Everything the item records of one (model, dataset) share, indexed once."""

    tables: PairTables
    steps: dict[str, list[Step]]
    sidecar_rows: dict[str, dict[str, Any]]
    traces_by_item: dict[str, list[str]]
    mask_rows: dict[str, dict[str, Any]]
    alignment_rows: dict[str, dict[str, Any]]
    attribution_rows: dict[tuple[str, int, str], list[dict[str, Any]]]
    mode_rows: dict[str, list[dict[str, Any]]]
    step_measures: dict[tuple[str, int], dict[str, Any]]
    trace_features: dict[str, dict[str, Any]]
    sink_patches: list[int]
    excluded_sinks: list[int]
    sinks_excluded: bool | None
    variants: Sequence[str]
    problems: list[str] = field(default_factory=list)


def _records_by(frame: pd.DataFrame, key: str) -> dict[str, dict[str, Any]]:
    if frame.empty or key not in frame.columns:
        return {}
    return {str(r[key]): r for r in frame.to_dict("records")}


def _rows_with(frame: pd.DataFrame, required: Sequence[str], what: str, problems: list[str]) -> list[dict[str, Any]]:
    """The rows of a table that have every ``required`` cell; the others reported by row number and left out."""
    if frame.empty:
        return []
    missing_columns = [c for c in required if c not in frame.columns]
    if missing_columns:
        problems.append(f"{what} table has no column {', '.join(missing_columns)}: not shown")
        return []
    out = []
    for n, r in enumerate(frame.to_dict("records")):
        absent = [c for c in required if is_missing(r.get(c))]
        if absent:
            problems.append(f"{what} table row {n}: no {', '.join(absent)}; left out")
            continue
        out.append(r)
    return out


def pair_context(tables: PairTables, variants: Sequence[str]) -> PairContext:
    """Index the tables of one (model, dataset) by trace and item."""
    problems = list(tables.problems)
    sidecar_rows: dict[str, dict[str, Any]] = {}
    traces_by_item: dict[str, list[str]] = {}
    for r in tables.sidecar.to_dict("records") if len(tables.sidecar) else []:
        tid = str(r.get("trace_id"))
        if tid in sidecar_rows:
            problems.append(f"trace {tid}: two sidecar rows; the later one is left out")
            log.error("%s/%s: %s", tables.model, tables.dataset, problems[-1])
            continue
        sidecar_rows[tid] = r
        traces_by_item.setdefault(str(r.get("item_id")), []).append(tid)
    attribution: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in _rows_with(tables.attribution, ("item_id", "region", "base_step"), "CRM attribution", problems):
        key = (str(r["item_id"]), int(r["region"]), str(r.get("fill")))
        attribution.setdefault(key, []).append(r)
    for rows in attribution.values():
        rows.sort(key=lambda r: int(r["base_step"]))
    modes: dict[str, list[dict[str, Any]]] = {}
    for r in _rows_with(tables.modes, ("item_id", "region"), "CRM modes", problems):
        modes.setdefault(str(r["item_id"]), []).append(r)
    measures: dict[tuple[str, int], dict[str, Any]] = {}
    if len(tables.collapse_steps) and {"trace_id", "step"} <= set(tables.collapse_steps.columns):
        for r in tables.collapse_steps.to_dict("records"):
            measures[(str(r["trace_id"]), int(r["step"]))] = r
    detected, dropped = sink_patches(tables.collapse_sinks)
    excluded = sinks_excluded(tables.collapse_steps)
    return PairContext(
        tables=tables,
        steps=trace_steps(tables.steps),
        sidecar_rows=sidecar_rows,
        traces_by_item=traces_by_item,
        mask_rows=_records_by(tables.masks, "mask_id"),
        alignment_rows=_records_by(tables.alignment, "trace_id"),
        attribution_rows=attribution,
        mode_rows=modes,
        step_measures=measures,
        trace_features=_records_by(tables.collapse_traces, "trace_id"),
        sink_patches=detected,
        excluded_sinks=dropped if excluded else [],
        sinks_excluded=excluded,
        variants=list(variants),
        problems=problems,
    )


def item_list(ctx: PairContext) -> list[dict[str, Any]]:
    """The items of the pair in items-table order; items only the traces know come after, in trace order."""
    items = ctx.tables.items
    out = [] if items.empty else items.to_dict("records")
    known = {str(r["item_id"]) for r in out}
    for item_id in ctx.traces_by_item:
        if item_id not in known:
            out.append({"item_id": item_id})
            known.add(item_id)
    return out


def base_trace_id(ctx: PairContext, item_id: str) -> str | None:
    """The item's base trace: the first sidecar row with variant ``base``."""
    for tid in ctx.traces_by_item.get(item_id, []):
        if str(ctx.sidecar_rows[tid].get("variant")) == "base":
            return tid
    return None


def _trace_summary(ctx: PairContext, tid: str) -> dict[str, Any]:
    row = ctx.sidecar_rows[tid]
    feats = ctx.trace_features.get(tid, {})
    status = str(row.get("status") or "ok")
    return {
        "trace_id": tid,
        "mask_id": _str(row.get("mask_id")),
        "variant": str(row.get("variant")),
        "fill": _str(row.get("fill")),
        "status": status,
        "error": _str(row.get("error")),
        "text": _str(row.get("text")) or "",
        "answer_text": _str(row.get("answer_text")),
        "correct": optional_bool(row.get("correct")),
        "abstained": optional_bool(row.get("abstained")),
        "truncated": optional_bool(row.get("truncated")),
        "n_tokens": optional_int(row.get("n_tokens")),
        "entropy_full": _num(feats.get("entropy_full")),
        "entropy_answer": _num(feats.get("entropy_answer")),
        "vision": _num(feats.get("vision")),
        "note": _str(feats.get("note")) or "",
    }


@dataclass
class TraceView:
    """One trace's page data (``record``) and its per-step maps (``maps``, [n_steps, patch]) for drawing."""

    record: dict[str, Any]
    maps: np.ndarray | None
    patch_box: np.ndarray | None
    patch_image: np.ndarray | None


def trace_view(ctx: PairContext, reader: StoreReader, tid: str, with_tokens: bool) -> TraceView:
    """The steps of one trace with their collapse measures, maps and (``with_tokens``) per-token entropy."""
    rec = _trace_summary(ctx, tid)
    steps = ctx.steps.get(tid, [])
    notes = []
    arrays = reader.get(tid) if rec["status"] == "ok" else None
    if rec["status"] == "ok" and arrays is None:
        notes.append("trace not found in the trace store: no maps or token entropies")
    if rec["status"] == "ok" and not steps:
        notes.append("no steps in the steps table")
    maps = None
    if arrays is not None and arrays.attn is not None and steps:
        maps = step_maps(arrays.attn, steps, arrays.n_tokens, ctx.excluded_sinks)
    elif arrays is not None and arrays.attn is None:
        notes.append("the trace store has no per-patch map (image_attn)")
    row = ctx.sidecar_rows[tid]
    out_steps = []
    for k, s in enumerate(steps):
        m = ctx.step_measures.get((tid, s.step), {})
        entry: dict[str, Any] = {
            "position": s.position, "step": s.step, "kind": s.kind, "text": s.text,
            "token_start": s.token_start, "token_end": s.token_end,
            "image_share": _num(m.get("image_share")), "evidence_share": _num(m.get("evidence_share")),
            "lift": _num(m.get("lift")), "topk_overlap": _num(m.get("topk_overlap")),
            "has_map": bool(maps is not None and np.isfinite(maps[k]).all() and maps.shape[1] > 0),
            "max_share": _num(np.nanmax(maps[k])) if maps is not None and maps.shape[1] and np.isfinite(maps[k]).any() else None,
        }
        if with_tokens:
            tokens = None
            if arrays is not None:
                tokens = token_entropies(rec["text"], row.get("token_char_start"), row.get("token_char_end"),
                                         arrays.entropy, arrays.logprob, s.token_start, s.token_end)
            entry["tokens"] = None if tokens is None else [
                {"index": t.index, "text": t.text, "entropy": _num(t.entropy), "logprob": _num(t.logprob)}
                for t in tokens]
            if tokens is None and s.token_start is not None and arrays is not None:
                notes.append(f"step {s.step}: token offsets unusable, shown without per-token entropy")
        out_steps.append(entry)
    rec["steps"] = out_steps
    rec["notes"] = notes
    return TraceView(rec, maps, arrays.patch_box if arrays is not None else None,
                     arrays.patch_image if arrays is not None else None)


def _alignment(ctx: PairContext, tid: str) -> dict[str, Any] | None:
    row = ctx.alignment_rows.get(tid)
    if row is None:
        return None
    pairs = []
    for p in as_list(row.get("pairs")):
        if isinstance(p, Mapping) and not is_missing(p.get("base_step")) and not is_missing(p.get("step")):
            pairs.append({"base_step": int(p["base_step"]), "step": int(p["step"]),
                          "similarity": _num(p.get("similarity"))})
    return {
        "base_trace_id": _str(row.get("base_trace_id")),
        "precision": _num(row.get("precision")), "recall": _num(row.get("recall")),
        "match_f1": _num(row.get("match_f1")), "ordered_match_f1": _num(row.get("ordered_match_f1")),
        "kendall_tau": _num(row.get("kendall_tau")), "order_score": _num(row.get("order_score")),
        "answer_changed": optional_bool(row.get("answer_changed")),
        "n_base_steps": optional_int(row.get("n_base_steps")), "n_steps": optional_int(row.get("n_steps")),
        "n_matched": optional_int(row.get("n_matched")),
        "pairs": pairs,
    }


def link_steps(steps: list[dict[str, Any]], alignment: dict[str, Any] | None) -> None:
    """Give each step of a masked trace its matched base step and similarity (``match``; None: unmatched).

    ``change`` is 1 - similarity (1 when unmatched): the same quantity CRM calls
    a base step's dependence, seen from the masked trace's side.
    """
    by_step = {p["step"]: p for p in (alignment or {}).get("pairs", [])}
    for s in steps:
        p = by_step.get(s["position"])
        s["match"] = None if p is None else {"base_step": p["base_step"], "similarity": p["similarity"]}
        if alignment is None:
            s["change"] = None
        elif p is None or p["similarity"] is None:
            s["change"] = 1.0
        else:
            s["change"] = float(min(1.0, max(0.0, 1.0 - p["similarity"])))


def _mask_info(ctx: PairContext, mask_id: str | None) -> dict[str, Any]:
    row = ctx.mask_rows.get(str(mask_id)) if mask_id is not None else None
    if row is None:
        return {"images": [], "hidden_boxes": [], "hidden_images": [], "area_fraction": None, "region": None}
    boxes = [[float(v) for v in as_list(b)] for b in json_list(row.get("hidden_boxes"))]
    images = [int(v) for v in json_list(row.get("hidden_images"))] or [0] * len(boxes)
    return {
        "images": [str(p) for p in json_list(row.get("images"))] or ([str(row["image"])] if _str(row.get("image")) else []),
        "hidden_boxes": boxes,
        "hidden_images": images,
        "area_fraction": _num(row.get("area_fraction")),
        "region": optional_int(row.get("region")),
    }


def _attribution_steps(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{
        "base_step": int(r["base_step"]), "base_kind": _str(r.get("base_kind")), "base_text": _str(r.get("base_text")),
        "dependence": _num(r.get("dependence")), "control_dependence": _num(r.get("control_dependence")),
        "changed": optional_bool(r.get("changed")), "control_changed": optional_bool(r.get("control_changed")),
        "depends": optional_bool(r.get("depends")), "gold_depends": optional_bool(r.get("gold_depends")),
    } for r in rows]


@dataclass
class ItemView:
    """One item's page data (``record``, JSON-able) and the traces' maps for drawing."""

    record: dict[str, Any]
    traces: dict[str, TraceView]


def item_record(ctx: PairContext, reader: StoreReader, item: Mapping[str, Any]) -> ItemView:
    """The page data of one item: question, images, regions, base trace, masked variants, CRM per region."""
    item_id = str(item["item_id"])
    notes: list[str] = []
    try:
        meta = parse_meta(item.get("meta"))
    except (ValueError, TypeError) as exc:
        notes.append(f"meta is not JSON ({exc})")
        meta = {}
    try:
        regions = item_regions(item)
    except (ValueError, TypeError) as exc:
        notes.append(f"regions unreadable ({exc})")
        regions = []
    images = [str(p) for p in json_list(item.get("images"))] or ([str(item["image"])] if _str(item.get("image")) else [])
    rec: dict[str, Any] = {
        "model": ctx.tables.model, "dataset": ctx.tables.dataset, "item_id": item_id,
        "question": _str(item.get("question")) or "", "choices": [str(c) for c in json_list(item.get("choices"))],
        "answer": _str(item.get("answer")), "answer_type": _str(item.get("answer_type")),
        "task_type": _str(item.get("task_type")), "images": images,
        "width": optional_int(item.get("width")), "height": optional_int(item.get("height")),
        "regions": regions, "source_line": optional_int(item.get("source_line")),
        "gold_steps": [str(g.get("text", "")) for g in meta.get("gold_steps", []) if isinstance(g, Mapping)],
    }
    views: dict[str, TraceView] = {}
    base_tid = base_trace_id(ctx, item_id)
    if base_tid is None:
        notes.append("no base trace")
        rec["base"] = None
    else:
        view = trace_view(ctx, reader, base_tid, with_tokens=True)
        view.record["mask"] = _mask_info(ctx, view.record["mask_id"])
        views[base_tid] = view
        rec["base"] = view.record
    variants = []
    for tid in ctx.traces_by_item.get(item_id, []):
        variant = str(ctx.sidecar_rows[tid].get("variant"))
        if tid == base_tid or variant == "base" or not variant_shown(variant, ctx.variants):
            continue
        view = trace_view(ctx, reader, tid, with_tokens=False)
        view.record["mask"] = _mask_info(ctx, view.record["mask_id"])
        view.record["alignment"] = _alignment(ctx, tid)
        kind, k = region_of_variant(variant)
        view.record["region"] = k if k is not None else view.record["mask"]["region"]
        view.record["role"] = {"drop": "evidence", "ctrl": "control"}.get(kind, "other")
        link_steps(view.record["steps"], view.record["alignment"])
        if view.record["alignment"] is None and view.record["status"] == "ok":
            view.record["notes"].append("no CRM alignment row for this trace")
        views[tid] = view
        variants.append(view.record)
    rec["variants"] = variants
    crm = []
    by_variant = {(v["variant"], v["fill"]): v["trace_id"] for v in variants}
    for mode in sorted(ctx.mode_rows.get(item_id, []), key=lambda r: (int(r["region"]), str(r.get("fill")))):
        k, fill = int(mode["region"]), str(mode.get("fill"))
        crm.append({
            "region": k, "label": _str(mode.get("region_label")) or f"region {k}", "fill": fill,
            "mode": _str(mode.get("mode")), "rule": _str(mode.get("rule")), "detail": _str(mode.get("detail")),
            "evidence_change": _num(mode.get("evidence_change")), "control_change": _num(mode.get("control_change")),
            "evidence_change_pct": _num(mode.get("evidence_change_pct")),
            "control_change_pct": _num(mode.get("control_change_pct")),
            "null_threshold": _num(mode.get("null_threshold")), "null_fallback": optional_bool(mode.get("null_fallback")),
            "match_f1": _num(mode.get("match_f1")),
            "evidence_trace": by_variant.get((f"drop:{k}", fill)),
            "control_trace": by_variant.get((f"ctrl:{k}", fill)),
            "steps": _attribution_steps(ctx.attribution_rows.get((item_id, k, fill), [])),
        })
    rec["crm"] = crm
    rec["notes"] = notes
    return ItemView(rec, views)


# ----------------------------------------------------------------------------- the index


def index_columns(collapse_traces: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Extra index columns the collapse traces table offers: (numbers, flags).

    Numbers: ``entropy_full``, ``entropy_answer``, ``vision`` and any other
    numeric ``vision*`` column (a second vision measure). Flags: boolean columns
    beyond the known per-trace ones (a planted subset such as ``blink``).
    """
    numbers = [c for c in KNOWN_TRACE_NUMBERS if c in collapse_traces.columns]
    flags = []
    for c in collapse_traces.columns:
        dtype = collapse_traces[c].dtype
        if c.startswith("vision") and c not in numbers and pd.api.types.is_numeric_dtype(dtype) \
                and not pd.api.types.is_bool_dtype(dtype):
            numbers.append(c)
        elif pd.api.types.is_bool_dtype(dtype) and c not in TRACE_FLAG_SKIP:
            flags.append(c)
    return numbers, flags


def meta_flags(items: Sequence[Mapping[str, Any]]) -> list[str]:
    """Boolean keys of the items' meta (a planted subset such as the blinker's ``blink``), as ``meta.<key>``.

    A key counts when at least one item holds a boolean under it and no item
    holds anything else there but nothing; meta that is not JSON is skipped
    (the item's page says so).
    """
    seen: dict[str, bool] = {}
    for it in items:
        try:
            meta = parse_meta(it.get("meta"))
        except (ValueError, TypeError):
            continue
        for key, value in meta.items():
            if isinstance(value, bool):
                seen.setdefault(key, True)
            elif value is not None:
                seen[key] = False
    return [f"meta.{k}" for k, ok in sorted(seen.items()) if ok]


def _meta_value(item: Mapping[str, Any], key: str) -> bool | None:
    try:
        value = parse_meta(item.get("meta")).get(key)
    except (ValueError, TypeError):
        return None
    return value if isinstance(value, bool) else None


def index_rows(ctx: PairContext, items: Sequence[Mapping[str, Any]], pages: Mapping[str, str],
               confident_z: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One index row per item (its base trace) and what the filters need.

    ``pages`` maps item id -> its page (relative to the index). ``confident``
    is ``z(entropy_full) <= confident_z`` among this pair's base traces.
    Returns (rows, meta) where meta lists the numeric and flag columns (flags
    of the collapse traces table, then the items' boolean meta as
    ``meta.<key>``) and the CRM modes present.
    """
    numbers, trace_flags = index_columns(ctx.tables.collapse_traces)
    item_flags = meta_flags(items)
    flags = trace_flags + item_flags
    base_ids = {str(it["item_id"]): base_trace_id(ctx, str(it["item_id"])) for it in items}
    ent = np.array([_nan_if_none(_num(ctx.trace_features.get(t or "", {}).get("entropy_full")))
                    for t in base_ids.values()], dtype=float)
    finite = ent[np.isfinite(ent)]
    mean = float(finite.mean()) if len(finite) else math.nan
    sd = float(finite.std(ddof=1)) if len(finite) > 1 else math.nan
    flips: dict[str, dict[str, bool]] = {}
    for tid, row in ctx.alignment_rows.items():
        kind, _ = region_of_variant(str(row.get("variant")))
        changed = optional_bool(row.get("answer_changed"))
        if kind in ("drop", "ctrl") and changed is not None:
            entry = flips.setdefault(str(row.get("item_id")), {})
            entry[kind] = entry.get(kind, False) or changed
    modes_present: set[str] = set()
    rows = []
    for it in items:
        item_id = str(it["item_id"])
        tid = base_ids[item_id]
        side = ctx.sidecar_rows.get(tid, {}) if tid else {}
        feats = ctx.trace_features.get(tid, {}) if tid else {}
        modes = sorted({str(m["mode"]) for m in ctx.mode_rows.get(item_id, []) if not is_missing(m.get("mode"))})
        modes_present |= set(modes)
        e = _num(feats.get("entropy_full"))
        z = (e - mean) / sd if e is not None and sd and math.isfinite(sd) and sd > 0 else None
        correct = optional_bool(side.get("correct"))
        abstained = optional_bool(side.get("abstained"))
        row: dict[str, Any] = {
            "item": item_id, "page": pages.get(item_id),
            "task_type": _str(it.get("task_type")), "question": (_str(it.get("question")) or "")[:160],
            "gold": _str(it.get("answer")), "answer": _str(side.get("answer_text")),
            "status": str(side.get("status") or "ok") if tid else "no base trace",
            "correct": correct, "abstained": abstained, "truncated": optional_bool(side.get("truncated")),
            "n_steps": len(ctx.steps.get(tid, [])) if tid else 0,
            "modes": ", ".join(modes), "entropy_z": z,
            "evidence_flip": flips.get(item_id, {}).get("drop"), "control_flip": flips.get(item_id, {}).get("ctrl"),
        }
        for c in numbers:
            row[c] = _num(feats.get(c))
        for c in trace_flags:
            row[c] = optional_bool(feats.get(c))
        for c in item_flags:
            row[c] = _meta_value(it, c[len("meta."):])
        wrong = correct is False and abstained is not True
        row["flags"] = {
            "wrong": wrong,
            "confident_wrong": bool(wrong and z is not None and z <= confident_z),
            "abstained": abstained is True,
            **{f"mode:{m}": m in modes for m in sorted(modes_present | set(modes))},
            **{f"flag:{c}": row[c] is True for c in flags},
        }
        rows.append(row)
    for row in rows:  # every row names every mode, so a filter on one never reads a missing key
        for m in modes_present:
            row["flags"].setdefault(f"mode:{m}", False)
    meta = {"numbers": numbers, "flags": flags, "modes": sorted(modes_present),
            "entropy_mean": mean if math.isfinite(mean) else None, "entropy_sd": sd if math.isfinite(sd) else None,
            "confident_z": confident_z}
    return rows, meta


def entropy_scale(ctx: PairContext, reader: StoreReader, items: Sequence[Mapping[str, Any]], q: float = 0.99) -> float:
    """Top of the per-token entropy colour scale: the ``q`` quantile of the base traces' token entropies (nats).

    One scale per (model, dataset), so that a confident trace looks pale and an
    unsure one dark on every page; tokens above it take the top colour.
    """
    base = [base_trace_id(ctx, str(it["item_id"])) for it in items]
    ok = [t for t in base if t is not None and str(ctx.sidecar_rows[t].get("status") or "ok") == "ok"]
    values = reader.entropies(ok)
    top = float(np.quantile(values, q)) if len(values) else 0.0
    return top if top > 0 else 1.0
