"""What the viewer costs on a study-sized results folder: build time, memory, files and page sizes.

Writes a synthetic results folder in the documented formats (items, masks,
sharded trace stores with per-token maps, sidecars, steps, CRM and collapse
tables) of ``--items`` items with ``--variants`` traces each (the default:
1,112 items x 9 = 10,008 traces, each ``--tokens`` tokens over a
``--grid`` x ``--grid`` patch grid), then builds the viewer from it
in-process and prints a table. The attention values are random (the heat
maps compress as badly as they can); the images are flat panels like the
default datasets' (photos would make the image copies larger and slower).

    .venv/bin/python benchmarks/viewer_bench.py                 # 10,008 traces
    .venv/bin/python benchmarks/viewer_bench.py --items 100     # a quick look

Not a test: nothing is asserted; the numbers go into docs/viewer.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402
from PIL import Image  # noqa: E402

from peekaboo.tables import write_table  # noqa: E402
from peekaboo.viewer import data as vdata  # noqa: E402
from peekaboo.viewer import site as vsite  # noqa: E402

VIEWER_CFG = {"variants": ["drop", "drop_all", "keep_evidence", "control"], "items_per_page": 50, "max_items": None,
              "image_max_side": 768, "map_scale": "step", "confident_z": -1.0}
COLOURS = [(220, 40, 40), (40, 90, 230), (40, 170, 60), (240, 200, 40)]


def variants_of(n: int) -> list[str]:
    """base, then drop:k and ctrl:k for as many regions as fit, then drop:all and keep:evidence."""
    out, k = ["base"], 0
    while len(out) + 2 <= n - 2:
        out += [f"drop:{k}", f"ctrl:{k}"]
        k += 1
    return (out + ["drop:all", "keep:evidence"])[:n]


def write_results(root: Path, n_items: int, n_variants: int, n_tokens: int, grid: int, n_steps: int,
                  shard_size: int, size: int) -> int:
    rng = np.random.default_rng(0)
    d, m = "study", "model"
    variants = variants_of(n_variants)
    n_regions = max(1, sum(v.startswith("drop:") and v != "drop:all" for v in variants))
    cell = size / grid
    boxes = np.array([[c * cell, r * cell, (c + 1) * cell, (r + 1) * cell] for r in range(grid) for c in range(grid)],
                     dtype=np.float32)
    half = size // 2
    region_boxes = [[(k % 2) * half, (k // 2 % 2) * half, (k % 2 + 1) * half, (k // 2 % 2 + 1) * half]
                    for k in range(n_regions)]
    words = [" the", " shape", " in", " panel", " looks", " red", ",", " so", " it", " is", " bigger", "."]
    pieces = [words[t % len(words)] for t in range(n_tokens - 1)] + [""]
    starts = np.cumsum([0] + [len(p) for p in pieces[:-1]]).tolist()
    ends = [s + len(p) for s, p in zip(starts, pieces)]
    text = "".join(pieces)
    bounds = np.linspace(0, n_tokens - 1, n_steps + 1).astype(int)

    (root / f"items/{d}/images").mkdir(parents=True)
    (root / f"masks/{d}/images").mkdir(parents=True)
    items, masks, side, steps, alignment, attribution, modes, csteps, ctraces = ([] for _ in range(9))
    for i in range(n_items):
        item_id = f"{d}-{i:06d}"
        im = Image.new("RGB", (size, size), (250, 250, 250))
        for k in range(4):
            im.paste(COLOURS[(i + k) % 4], ((k % 2) * half + 8, (k // 2) * half + 8, (k % 2 + 1) * half - 8,
                                            (k // 2 + 1) * half - 8))
        image = f"items/{d}/images/{item_id}.png"
        im.save(root / image)
        items.append({"item_id": item_id, "dataset": d, "image": image, "images": [image], "width": size,
                      "height": size, "question": f"What colour is shape {i}?", "choices": None, "answer": "red",
                      "answer_type": "text", "task_type": "visual_reference",
                      "regions": [{"label": f"panel {k}", "box": [float(v) for v in region_boxes[k]], "image": 0}
                                  for k in range(n_regions)], "meta": "{}", "source_line": i + 1})
        for variant in variants:
            fill = "none" if variant == "base" else "gray"
            mask_id = f"{item_id}|{variant}|{fill}"
            path = image
            if variant != "base":
                path = f"masks/{d}/images/{item_id}__{variant.replace(':', '-')}__gray.png"
                masked = im.copy()
                masked.paste((128, 128, 128), (0, 0, half, half))
                masked.save(root / path)
            masks.append({"mask_id": mask_id, "item_id": item_id, "dataset": d, "variant": variant, "fill": fill,
                          "region": None, "hidden_boxes": [] if variant == "base" else [[0.0, 0.0, half, half]],
                          "hidden_images": [] if variant == "base" else [0], "area_fraction": 0.25, "image": path,
                          "images": [path]})
            tid = f"{m}|{mask_id}"
            side.append({"trace_id": tid, "model": m, "dataset": d, "item_id": item_id, "mask_id": mask_id,
                         "variant": variant, "fill": fill, "trace_index": len(side), "status": "ok", "error": None,
                         "text": text, "answer_text": "red", "correct": bool(rng.random() < 0.7), "abstained": False,
                         "truncated": False, "n_tokens": n_tokens, "token_char_start": starts, "token_char_end": ends,
                         "retries": 0})
            for k in range(n_steps):
                kind = "answer" if k == n_steps - 1 else "think"
                steps.append({"trace_id": tid, "item_id": item_id, "mask_id": mask_id, "variant": variant,
                              "fill": fill, "step": k, "kind": kind, "text": f"step {k} of {item_id}",
                              "char_start": starts[bounds[k]], "char_end": ends[bounds[k + 1] - 1],
                              "token_start": int(bounds[k]), "token_end": int(bounds[k + 1]), "segmenter": "sentences"})
                csteps.append({"trace_id": tid, "step": k, "image_share": 0.3, "evidence_share": float(rng.random()),
                               "lift": 1.0, "topk_overlap": 0.5, "sinks_excluded": False})
            ctraces.append({"trace_id": tid, "entropy_full": float(rng.gamma(2, 0.2)), "entropy_answer": 0.1,
                            "vision": float(rng.random())})
            if variant != "base":
                alignment.append({"trace_id": tid, "base_trace_id": f"{m}|{item_id}|base|none", "item_id": item_id,
                                  "mask_id": mask_id, "variant": variant, "fill": fill, "match_f1": 0.8,
                                  "answer_changed": variant.startswith("drop"), "n_base_steps": n_steps,
                                  "n_steps": n_steps, "n_matched": n_steps,
                                  "pairs": [{"base_step": k, "step": k, "similarity": float(rng.random())}
                                            for k in range(n_steps)]})
        for k in range(n_regions):
            for b in range(n_steps):
                attribution.append({"item_id": item_id, "region": k, "fill": "gray", "base_step": b,
                                    "base_kind": "think", "base_text": f"step {b}", "dependence": float(rng.random()),
                                    "control_dependence": float(rng.random() / 4), "depends": True})
            modes.append({"item_id": item_id, "region": k, "region_label": f"panel {k}", "fill": "gray",
                          "mode": ["grounded", "hallucination", "collapse", "insensitive"][(i + k) % 4],
                          "rule": "constructed", "detail": ""})
    write_table(pd.DataFrame(items), root / f"items/{d}.parquet")
    masks_df = pd.DataFrame(masks)
    masks_df["region"] = masks_df["region"].astype("Int64")
    write_table(masks_df, root / f"masks/{d}.parquet")
    write_table(pd.DataFrame(steps), root / f"steps/{m}/{d}.parquet")
    write_table(pd.DataFrame(alignment), root / f"crm/{m}/{d}/alignment.parquet")
    write_table(pd.DataFrame(attribution), root / f"crm/{m}/{d}/attribution.parquet")
    write_table(pd.DataFrame(modes), root / f"crm/{m}/{d}/modes.parquet")
    write_table(pd.DataFrame(csteps), root / f"collapse/{m}/{d}.parquet")
    write_table(pd.DataFrame(ctraces), root / f"collapse/{m}/{d}.traces.parquet")
    write_table(pd.DataFrame({"patch": pd.Series([], dtype="int64"), "is_sink": pd.Series([], dtype=bool),
                              "excluded": pd.Series([], dtype=bool)}), root / f"collapse/{m}/{d}.sinks.parquet")

    sidecar = pd.DataFrame(side)
    per_shard = shard_size * len(variants)
    import zarr

    for s, start in enumerate(range(0, len(sidecar), per_shard)):
        part = sidecar.iloc[start:start + per_shard]
        write_table(part, root / f"traces/{m}/{d}/shard-{s}.parquet")
        n = len(part)
        attn = rng.random((n, n_tokens, 1, grid * grid), dtype=np.float32).astype(np.float16)
        ds = xr.Dataset(
            {"entropy": (("trace", "token"), rng.gamma(2, 0.2, (n, n_tokens)).astype(np.float32)),
             "logprob": (("trace", "token"), -rng.random((n, n_tokens), dtype=np.float32)),
             "image_attn": (("trace", "token", "map_layer", "patch"), attn),
             "patch_box": (("trace", "patch", "box"), np.broadcast_to(boxes, (n, *boxes.shape)).copy()),
             "patch_image": (("trace", "patch"), np.zeros((n, grid * grid), np.int16)),
             "n_tokens": ("trace", np.full(n, n_tokens, np.int32)),
             "n_patches": ("trace", np.full(n, grid * grid, np.int32))},
            coords={"trace_id": ("trace", np.array(part["trace_id"], dtype=object))},
            attrs={"map_layers": [-1]})
        path = root / f"traces/{m}/{d}/shard-{s}.zarr"
        encoding = {name: {"chunks": (16,) + ds[name].shape[1:]} for name in ds.data_vars}
        ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False, encoding=encoding)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            zarr.consolidate_metadata(path)
    return len(sidecar)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1112)
    ap.add_argument("--variants", type=int, default=9, help="traces per item, base included")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--grid", type=int, default=16, help="patch grid side (grid x grid image tokens)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--shard-size", type=int, default=128, help="items per trace shard")
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder, removed)")
    args = ap.parse_args()

    work = args.dir or Path(tempfile.mkdtemp(prefix="viewer-bench-"))
    results = work / "results"
    try:
        t0 = time.perf_counter()
        # in a child process, so that this process's peak memory is the build's alone
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(1) as pool:
            n_traces = pool.apply(write_results, (results, args.items, args.variants, args.tokens, args.grid,
                                                  args.steps, args.shard_size, args.image_size))
        made = time.perf_counter() - t0
        inputs = [p for p in sorted(results.rglob("*")) if p.suffix in (".parquet", ".zarr")
                  and p.parent.suffix != ".zarr" and ".zarr/" not in p.as_posix()]
        pairs = vdata.group_sources(inputs, results)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        vsite.build_site(pairs, results, results / "viewer", VIEWER_CFG, "all", {"config_hash": "bench"})
        built = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        site = results / "viewer"
        files = [p for p in site.rglob("*") if p.is_file()]
        pages = [p.stat().st_size / 1024 for p in site.glob("*/*/items/*.html")]
        jsons = [p.stat().st_size / 1024 for p in site.glob("*/*/items/*.json")]
        sprites = [p.stat().st_size / 1024 for p in site.glob("*/*/maps/*/*.png")]
        index = sum(p.stat().st_size for p in site.glob("*/*/index-data.js")) / 1024
        rows = [
            ("traces", f"{n_traces:,}"), ("items (pages)", f"{len(pages):,}"),
            ("tokens x patches per trace", f"{args.tokens} x {args.grid * args.grid}"),
            ("steps per trace", args.steps), ("trace store on disk (MB)", f"{_size(results / 'traces') / 2**20:,.0f}"),
            ("writing the synthetic results (s)", f"{made:.1f}"),
            ("building the viewer (s)", f"{built:.1f}"), ("per item (ms)", f"{1000 * built / max(1, len(pages)):.1f}"),
            ("peak memory (RSS) before / after the build (MB)", f"{rss_before:,.0f} / {rss:,.0f}"),
            ("site files", f"{len(files):,}"), ("site size (MB)", f"{sum(p.stat().st_size for p in files) / 2**20:,.1f}"),
            ("item page KB: median / max", f"{statistics.median(pages):.0f} / {max(pages):.0f}"),
            ("item JSON KB: median / max", f"{statistics.median(jsons):.0f} / {max(jsons):.0f}"),
            ("heat-map sprite KB: median / max", f"{statistics.median(sprites):.1f} / {max(sprites):.1f}"),
            ("index rows file (KB)", f"{index:,.0f}"),
        ]
        width = max(len(k) for k, _ in rows)
        print(f"| {'measure'.ljust(width)} | value |")
        print(f"|{'-' * (width + 2)}|-------|")
        for k, v in rows:
            print(f"| {k.ljust(width)} | {v} |")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


if __name__ == "__main__":
    main()
