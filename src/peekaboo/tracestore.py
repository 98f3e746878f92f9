"""The trace store of a shard: a Zarr v3 store plus a parquet sidecar, written resumably.

Layout (docs/architecture.md, "Traces"; docs/traces.md for sizes):
``traces/{m}/{d}/shard-{i}.zarr`` holds the per-token arrays of every trace
of the shard, padded along ``token``, ``patch`` and ``region``; it opens with
``xarray.open_zarr``. ``shard-{i}.parquet`` holds one row per trace (text,
parsed answer, status), in the store's ``trace`` order.

Resume: while a shard runs, each finished batch is written to the sibling
folder ``shard-{i}.partial/`` (arrays as ``.npz`` without pickle, sidecar rows
as JSON; the JSON file is written last and marks the batch finished). That
folder is not a Snakemake output, so it survives a killed job. A re-run with
the same plan (same trace ids, batches, config and code) skips the finished
batches; the final store is assembled from the batch files only at the end, so
it is the same whether or not the job was interrupted. The partial folder is
removed once the store and the sidecar are complete. That mechanism is
:mod:`peekaboo.resume` (``PartialBatches``), on its own so that the
generations file of :mod:`peekaboo.generations` resumes through it without
the store among the ``generate`` stage's code inputs.

Batches need not follow the store's order (generation batches are sorted by
prompt length): ``order`` gives the trace ids in store order, and the store and
sidecar are assembled in that order.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from . import tables
from .logs import get_logger
from .provenance import canonical_json
from .resume import PartialBatches, has_partial_batches, partial_dir  # noqa: F401 - has_partial_batches: for traces

log = get_logger("tracestore")

SIDECAR_SCHEMA = pa.schema([
    ("trace_id", pa.string()),
    ("model", pa.string()),
    ("dataset", pa.string()),
    ("item_id", pa.string()),
    ("mask_id", pa.string()),
    ("variant", pa.string()),
    ("fill", pa.string()),
    ("trace_index", pa.int32()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("text", pa.string()),
    ("answer_text", pa.string()),
    ("correct", pa.bool_()),
    ("abstained", pa.bool_()),
    ("truncated", pa.bool_()),
    ("n_tokens", pa.int32()),
    ("token_char_start", pa.list_(pa.int32())),
    ("token_char_end", pa.list_(pa.int32())),
    ("retries", pa.int32()),
    # largest |replay - engine| log-probability over the trace's tokens, where the engine gave its own (else null)
    ("engine_logprob_diff", pa.float32()),
])
SIDECAR_COLUMNS = SIDECAR_SCHEMA.names

# per-trace arrays kept in a batch file (name -> dtype)
_ARRAYS = {
    "token_ids": np.int32,
    "logprob": np.float32,
    "entropy": np.float32,
    "image_attn": np.float16,
    "image_attn_heads": np.float16,
    "image_mass": np.float16,
    "region_mass": np.float16,
    "patch_box": np.float32,
    "patch_image": np.int16,
}


def _sidecar_row(result, trace_index: int) -> dict[str, Any]:
    meta = result.request.meta
    return {
        "trace_id": result.request.trace_id,
        "model": meta.get("model"),
        "dataset": meta.get("dataset"),
        "item_id": meta.get("item_id"),
        "mask_id": meta.get("mask_id"),
        "variant": meta.get("variant"),
        "fill": meta.get("fill"),
        "trace_index": int(trace_index),
        "status": result.status,
        "error": result.error,
        "text": result.text,
        "answer_text": result.answer_text,
        "correct": None if result.correct is None else bool(result.correct),
        "abstained": bool(result.abstained),
        "truncated": bool(result.truncated),
        "n_tokens": int(result.n_tokens),
        "token_char_start": [int(x) for x in result.token_char_start],
        "token_char_end": [int(x) for x in result.token_char_end],
        "retries": int(result.retries),
        "engine_logprob_diff": getattr(result, "engine_logprob_diff", None),
        "n_regions": int(result.n_regions),
    }


class ShardWriter:
    """Writes one shard batch by batch into the partial folder, then assembles store and sidecar.

    ``plan`` is the list of batches (each a list of trace ids) in the order they
    run; ``order`` the trace ids in the store's order (default: the plan's);
    ``fingerprint`` anything that must match for a resume to be valid (config
    and code hashes, model id); ``attrs`` the store's attributes.
    """

    def __init__(
        self,
        store_path: str | Path,
        sidecar_path: str | Path,
        plan: Sequence[Sequence[str]],
        *,
        n_layers: int,
        n_heads: int,
        map_layers: Sequence[int],
        keep_heads: bool = False,
        chunk_traces: int = 16,
        compression_level: int = 3,
        attrs: Mapping[str, Any] | None = None,
        fingerprint: Mapping[str, Any] | None = None,
        provenance: Mapping[str, Any] | None = None,
        order: Sequence[str] | None = None,
    ):
        self.store_path = Path(store_path)
        self.sidecar_path = Path(sidecar_path)
        self.partial = partial_dir(self.store_path)
        self.plan = [list(b) for b in plan]
        planned = [t for b in self.plan for t in b]
        self.order = list(order) if order is not None else planned
        if sorted(self.order) != sorted(planned) or len(set(planned)) != len(planned):
            raise ValueError(f"{self.store_path}: the store order and the batches must hold the same distinct "
                             "trace ids")
        self.index = {t: i for i, t in enumerate(self.order)}  # trace id -> position in the store
        self.where = {t: (k, j) for k, b in enumerate(self.plan) for j, t in enumerate(b)}
        self.n_layers, self.n_heads = int(n_layers), int(n_heads)
        self.map_layers = [int(x) for x in map_layers]
        self.keep_heads = bool(keep_heads)
        self.chunk_traces = max(1, int(chunk_traces))
        self.compression_level = int(compression_level)
        self.attrs = dict(attrs or {})
        # the store order joins the fingerprint only where it differs from the plan's (old partial folders stay valid)
        extra = {"order": self.order} if self.order != planned else {}
        self.fingerprint = {"plan": self.plan, **extra, **dict(fingerprint or {})}
        self.provenance = dict(provenance or {})
        self.batches = PartialBatches(self.partial, len(self.plan), self.fingerprint, (".npz", ".json"),
                                      self.store_path.name)

    # -- resume -------------------------------------------------------------
    def _batch_files(self, index: int) -> tuple[Path, Path]:
        files = self.batches.files(index)
        return files[".npz"], files[".json"]

    def start(self) -> set[int]:
        """Prepare the partial folder; the indices of batches already finished by an earlier run."""
        return self.batches.start()

    def write_batch(self, index: int, results: Sequence[Any]) -> None:
        """Persist one finished batch (``TraceResult`` list in the batch's order)."""
        ids = [r.request.trace_id for r in results]
        if ids != self.plan[index]:
            raise ValueError(f"batch {index}: results for {ids}, planned {self.plan[index]}")
        arrays: dict[str, np.ndarray] = {}
        for j, r in enumerate(results):
            for name, dtype in _ARRAYS.items():
                value = getattr(r, name)
                if value is not None:
                    arrays[f"{j}/{name}"] = np.asarray(value).astype(dtype, copy=False)
        rows = [_sidecar_row(r, self.index[r.request.trace_id]) for r in results]
        self.batches.write(index, {
            ".npz": lambda fh: np.savez(fh, **arrays),
            ".json": json.dumps(rows, ensure_ascii=False, sort_keys=True).encode(),
        })

    # -- assembling ---------------------------------------------------------
    def _load_batch(self, index: int) -> tuple[list[dict[str, np.ndarray]], list[dict[str, Any]]]:
        npz, meta = self._batch_files(index)
        rows = json.loads(meta.read_text(encoding="utf-8"))
        with np.load(npz, allow_pickle=False) as data:
            per_trace: list[dict[str, np.ndarray]] = [{} for _ in rows]
            for key in data.files:
                j, name = key.split("/", 1)
                per_trace[int(j)][name] = data[key]
        return per_trace, rows

    def finalize(self) -> tuple[Path, Path]:
        """Assemble the Zarr store and the sidecar from the batch files; remove the partial folder."""
        from zarr.codecs import ZstdCodec

        missing = self.batches.missing()
        if missing:
            raise RuntimeError(f"{self.store_path}: batches {missing} are not finished")
        by_id: dict[str, dict[str, Any]] = {}
        T = P = R = 1  # padded sizes; at least 1 so every chunk shape is valid
        for k in range(len(self.plan)):
            arrays, batch_rows = self._load_batch(k)
            for a, row in zip(arrays, batch_rows):
                by_id[row["trace_id"]] = row
                T = max(T, row["n_tokens"])
                P = max(P, len(a.get("patch_image", ())))
                R = max(R, row["n_regions"])
        rows = [by_id[t] for t in self.order]
        dims = dict(T=T, P=P, R=R, L=self.n_layers, H=self.n_heads, M=len(self.map_layers))
        tmp = self.store_path.with_name(self.store_path.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        compressor = (ZstdCodec(level=self.compression_level),)
        attrs = {**self.attrs, **self.provenance, "map_layers": self.map_layers,
                 "n_traces": len(rows), "padded_sizes": {"token": T, "patch": P, "region": R}}
        attrs = {k: (v if isinstance(v, (str, int, float, bool, list)) or v is None else canonical_json(v))
                 for k, v in attrs.items()}
        groups = [self.order[i:i + self.chunk_traces] for i in range(0, len(self.order), self.chunk_traces)] or [[]]
        cache: dict[int, list[dict[str, np.ndarray]]] = {}
        for g, group in enumerate(groups):
            needed = {self.where[t][0] for t in group}
            for k in set(cache) - needed:  # batch files in store order are read once; others as few times as needed
                del cache[k]
            traces = []
            for t in group:
                k, j = self.where[t]
                if k not in cache:
                    cache[k] = self._load_batch(k)[0]
                traces.append((cache[k][j], by_id[t]))
            ds = self._dataset(traces, dims)
            ds.attrs = attrs  # every write: an append would otherwise replace them with none
            if g == 0:
                encoding = {name: {"compressors": compressor, "chunks": self._chunks(name, ds[name].shape, dims)}
                            for name in ds.data_vars}
                ds.to_zarr(tmp, mode="w", zarr_format=3, encoding=encoding, consolidated=False)
            else:
                ds.to_zarr(tmp, append_dim="trace", zarr_format=3, consolidated=False)
        import warnings

        import zarr

        with warnings.catch_warnings():
            # consolidated metadata is a zarr-python extension in format 3; xarray reads it (one file, fast open)
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            zarr.consolidate_metadata(tmp)
        if self.store_path.exists():
            shutil.rmtree(self.store_path)
        tmp.replace(self.store_path)
        frame = pd.DataFrame([{c: r.get(c) for c in SIDECAR_COLUMNS} for r in rows], columns=SIDECAR_COLUMNS)
        tables.write_table(frame, self.sidecar_path, provenance=self.provenance, schema=SIDECAR_SCHEMA)
        self.batches.remove()
        n_failed = sum(r["status"] != "ok" for r in rows)
        log.info("wrote %s: %d traces (%d failed), padded to %d tokens, %d patches, %d regions",
                 self.store_path, len(rows), n_failed, T, P, R)
        return self.store_path, self.sidecar_path

    def _chunks(self, name: str, shape: tuple[int, ...], dims: Mapping[str, int]) -> tuple[int, ...]:
        if name == "image_attn_heads":
            # per-head maps are large: one trace and 64 tokens per chunk
            return (1, min(64, dims["T"])) + tuple(shape[2:])
        return (self.chunk_traces,) + tuple(shape[1:])

    def _dataset(self, traces: list[tuple[dict[str, np.ndarray], dict[str, Any]]], dims: Mapping[str, int]):
        import xarray as xr

        N, T, P, R, L, H, M = (len(traces), dims["T"], dims["P"], dims["R"], dims["L"], dims["H"], dims["M"])
        token_id = np.full((N, T), -1, np.int32)
        logprob = np.full((N, T), np.nan, np.float32)
        entropy = np.full((N, T), np.nan, np.float32)
        image_attn = np.full((N, T, M, P), np.nan, np.float16)
        image_mass = np.full((N, T, L, H), np.nan, np.float16)
        region_mass = np.full((N, T, L, R), np.nan, np.float16)
        patch_box = np.full((N, P, 4), np.nan, np.float32)
        patch_image = np.full((N, P), -1, np.int16)
        heads = np.full((N, T, M, H, P), np.nan, np.float16) if self.keep_heads else None
        n_tokens = np.zeros(N, np.int32)
        n_patches = np.zeros(N, np.int32)
        n_regions = np.zeros(N, np.int32)
        ids = []
        for i, (a, row) in enumerate(traces):
            ids.append(row["trace_id"])
            n = row["n_tokens"]
            n_tokens[i] = n
            n_regions[i] = row["n_regions"]
            if "token_ids" in a and n:
                token_id[i, :n] = a["token_ids"]
                logprob[i, :n] = a["logprob"]
                entropy[i, :n] = a["entropy"]
            p = len(a.get("patch_image", ()))
            n_patches[i] = p
            if p:
                patch_box[i, :p] = a["patch_box"]
                patch_image[i, :p] = a["patch_image"]
            if "image_attn" in a and n:
                image_attn[i, :n, :, :p] = a["image_attn"]
                image_mass[i, :n] = a["image_mass"]
                region_mass[i, :n, :, : a["region_mass"].shape[-1]] = a["region_mass"]
            if heads is not None and "image_attn_heads" in a and n:
                heads[i, :n, :, :, :p] = a["image_attn_heads"]
        data = {
            "token_id": (("trace", "token"), token_id),
            "n_tokens": (("trace",), n_tokens),
            "logprob": (("trace", "token"), logprob),
            "entropy": (("trace", "token"), entropy),
            "image_attn": (("trace", "token", "map_layer", "patch"), image_attn),
            "image_mass": (("trace", "token", "layer", "head"), image_mass),
            "region_mass": (("trace", "token", "layer", "region"), region_mass),
            "patch_box": (("trace", "patch", "box"), patch_box),
            "patch_image": (("trace", "patch"), patch_image),
            "n_patches": (("trace",), n_patches),
            "n_regions": (("trace",), n_regions),
        }
        if heads is not None:
            data["image_attn_heads"] = (("trace", "token", "map_layer", "head", "patch"), heads)
        coords = {
            "trace_id": ("trace", np.array(ids, dtype=object).reshape(N)),
            "layer": ("layer", np.arange(L, dtype=np.int32)),
            "map_layer": ("map_layer", np.asarray(self.map_layers, np.int32)),
            "box": ("box", np.array(["x0", "y0", "x1", "y1"], dtype=object)),
        }
        return xr.Dataset(data, coords=coords)


# -- reading ----------------------------------------------------------------
def _as_paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def open_traces(paths: str | Path | Iterable[str | Path]):
    """The trace stores of one or more shards as one xarray Dataset along ``trace``.

    A single store opens lazily. Several are padded to common ``token``,
    ``patch`` and ``region`` sizes (NaN for floats, -1 for ids) and
    concatenated, which reads them into memory; open shards one at a time to
    stream a large run.
    """
    import xarray as xr

    stores = [xr.open_zarr(p) for p in _as_paths(paths)]
    if not stores:
        raise ValueError("open_traces: no store given")
    if len(stores) == 1:
        return stores[0]
    sizes = {d: max(s.sizes[d] for s in stores) for d in ("token", "patch", "region")}
    padded = []
    for s in stores:
        widths = {d: (0, sizes[d] - s.sizes[d]) for d in sizes if sizes[d] > s.sizes[d]}
        if widths:
            variables = {}
            for name, var in s.data_vars.items():
                w = {d: widths[d] for d in var.dims if d in widths}
                if w:
                    fill = -1 if var.dtype.kind in "iu" else np.nan
                    var = var.load().pad(w, constant_values=fill).astype(var.dtype)
                variables[name] = var
            s = xr.Dataset(variables, coords=dict(s.coords), attrs=s.attrs)
        padded.append(s)
    out = xr.concat(padded, dim="trace", data_vars="all", coords="different", compat="equals",
                    combine_attrs="drop_conflicts")
    return out[list(stores[0].data_vars)]


def read_sidecars(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """The sidecars of one or more shards, concatenated in the given order."""
    frames = [tables.read_table(p) for p in _as_paths(paths)]
    if not frames:
        return pd.DataFrame(columns=SIDECAR_COLUMNS)
    return pd.concat(frames, ignore_index=True)
