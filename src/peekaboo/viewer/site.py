"""Writing the viewer's static site: pages from Jinja2 templates, images and heat maps as files.

Layout under the site folder (``results/viewer/``)::

    index.html                       every (model, dataset) with its counts and the settings behind the maps
    static/                          the viewer's CSS and JS, the vendored Tabulator (with its licence), scales.css
    images/<path in results>         display copies of the items' and masked images
    {m}/{d}/index.html               the sortable, filterable index of the pair's items
    {m}/{d}/index-data.js            its rows (a script, so that it loads from file://, where fetch() may not)
    {m}/{d}/items/<item>.html|.json  one page per item and the data it shows
    {m}/{d}/maps/<item>/<trace>-img<k>.png   each trace's per-step heat maps over image k (one sprite)
    provenance.json                  config and code hashes, package version, counts, problems

Every link is relative and stays inside the site, so the folder opens from
the file system, moves as a whole, and works inside ``snakemake --report``'s
zip. Nothing is fetched from elsewhere. The same tables give the same bytes.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..logs import get_logger, progress
from . import data as vdata
from . import maps as vmaps

log = get_logger("viewer")

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES = PACKAGE_DIR / "templates"
STATIC = PACKAGE_DIR / "static"
MARKER = "provenance.json"


class SiteError(ValueError):
    """The site cannot be written where asked; the message says why."""


def asset_files() -> list[Path]:
    """The templates and static files the site is built from (they are part of the stage's code)."""
    return sorted(p for d in (TEMPLATES, STATIC) for p in d.rglob("*") if p.is_file())


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = _fmt_num
    env.filters["p3"] = lambda v: f"{float(v):.3f}".rstrip("0").rstrip(".")
    env.filters["entropy_class"] = lambda v, top: _cls("e", v, top)
    env.filters["dependence_class"] = lambda v: _cls("d", v, 1.0)
    env.filters["tojson_compact"] = lambda v: json.dumps(v, sort_keys=True, separators=(",", ":"))
    return env


def _fmt_num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{float(value):.{digits}f}"


def _cls(prefix: str, value: float | None, top: float) -> str:
    k = vmaps.class_of(value, top)
    return "" if k is None else f"{prefix}{k}"


# ----------------------------------------------------------------------------- images


@dataclass
class ImageStore:
    """Display copies of the results' images inside the site, each written once; sizes of the originals."""

    results_dir: Path
    site: Path
    max_side: int
    sizes: dict[str, tuple[int, int] | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add(self, rel: str) -> tuple[int, int] | None:
        """Copy ``rel`` (a path inside the results folder) to ``images/rel``; its original (width, height) or None."""
        if rel in self.sizes:
            return self.sizes[rel]
        from PIL import Image

        src = self.results_dir / rel
        dest = self.site / "images" / rel
        size = None
        try:
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise ValueError("not a path inside the results folder")
            with Image.open(src) as im:
                size = im.size
                dest.parent.mkdir(parents=True, exist_ok=True)
                if max(size) > self.max_side:
                    scale = self.max_side / max(size)
                    small = im.convert("RGB").resize((max(1, round(size[0] * scale)), max(1, round(size[1] * scale))),
                                                     Image.Resampling.LANCZOS)
                    small.save(dest, format="PNG")
                else:
                    shutil.copyfile(src, dest)
        except (OSError, ValueError) as exc:
            self.problems.append(f"image {rel}: {exc}")
            log.warning("image %s cannot be read: %s (pages show its place empty)", rel, exc)
        self.sizes[rel] = size
        return size


def site_path(rel: str) -> str:
    """An image's path inside the site."""
    return f"images/{rel}"


# ----------------------------------------------------------------------------- one item's files


def _percent(x0: float, y0: float, x1: float, y1: float, width: float, height: float) -> list[float]:
    """A box as left, top, width, height in percent of the image (three decimals: a thousandth of a percent)."""
    return [round(100 * x0 / width, 3), round(100 * y0 / height, 3), round(100 * (x1 - x0) / width, 3),
            round(100 * (y1 - y0) / height, 3)]


def _figure(images: Sequence[str], sizes: Sequence[tuple[int, int] | None], regions, hidden_boxes, hidden_images,
            root: str) -> list[dict[str, Any]]:
    """The image panels of one trace: display path, aspect, evidence and hidden boxes as percentages."""
    out = []
    for k, (path, size) in enumerate(zip(images, sizes)):
        w, h = size if size else (None, None)

        def pct(box):
            if not w or not h:
                return None
            x0, y0, x1, y1 = (float(v) for v in box)
            return _percent(x0, y0, x1, y1, w, h)

        out.append({
            "index": k, "src": f"{root}{site_path(path)}" if size else None, "width": w, "height": h,
            "regions": [{**r, "pct": pct(r["box"])} for r in regions if r["image"] == k and pct(r["box"])],
            "hidden": [pct(b) for b, i in zip(hidden_boxes, hidden_images) if i == k and pct(b)],
            "map": None, "sinks": [],
        })
    return out


def _sprites(view: vdata.TraceView, panels: list[dict[str, Any]], folder: Path, stem: str, rel_folder: str,
             scale_mode: str, item_top: float, sink_patches: Sequence[int]) -> None:
    """Write the trace's heat-map sprite per image and attach where it goes to ``panels``."""
    if view.maps is None or view.patch_box is None or not len(view.maps):
        return
    maps = view.maps
    n = len(maps)
    if scale_mode == "item":
        scale = [item_top] * n
    else:
        scale = [float(np.nanmax(m)) if np.isfinite(m).any() else 0.0 for m in maps]
    for panel in panels:
        k = panel["index"]
        sel = np.flatnonzero(view.patch_image == k)
        if not len(sel) or not panel["width"]:
            continue
        grid = vmaps.patch_grid(view.patch_box[sel])
        if grid is None:
            continue
        name = f"{stem}-img{k}.png"
        vmaps.write_sprite(vmaps.tiles(maps[:, sel], grid, scale), folder / name)
        x0, y0, x1, y1 = grid.extent
        w, h = panel["width"], panel["height"]
        panel["map"] = {
            "src": f"{rel_folder}/{name}", "rows": n, "exact": grid.exact,
            "pct": _percent(x0, y0, x1, y1, w, h),
        }
        boxes = view.patch_box
        panel["sinks"] = [_percent(*(float(v) for v in boxes[p]), w, h)
                          for p in sink_patches if p < len(boxes) and view.patch_image[p] == k]


def _item_top(views: Mapping[str, vdata.TraceView]) -> float:
    tops = [float(np.nanmax(v.maps)) for v in views.values()
            if v.maps is not None and v.maps.size and np.isfinite(v.maps).any()]
    return max(tops) if tops else 0.0


# ----------------------------------------------------------------------------- the site


@dataclass
class PairSummary:
    model: str
    dataset: str
    href: str | None  # None when the pair's pages could not be built
    counts: dict[str, Any]
    problems: list[str]


def _prepare(out_dir: Path) -> None:
    """Start from an empty site folder; refuse to empty a folder this stage did not write."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise SiteError(f"viewer output {out_dir} exists and is not a folder")
        if any(out_dir.iterdir()):
            if not (out_dir / MARKER).is_file():
                raise SiteError(f"viewer output {out_dir} is not empty and was not written by the viewer ({MARKER} "
                                "missing): refusing to replace it")
            shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def _copy_static(out_dir: Path) -> None:
    shutil.copytree(STATIC, out_dir / "static", ignore=shutil.ignore_patterns("__pycache__"))
    (out_dir / "static" / "scales.css").write_text(vmaps.scales_css(), encoding="utf-8")


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False) + "\n",
                    encoding="utf-8")


def _settings(ctx: vdata.PairContext, reader: vdata.StoreReader, collapse_layers: Any, viewer_cfg: Mapping[str, Any],
              entropy_top: float) -> dict[str, Any]:
    return {
        "map_layers": reader.map_layers,
        "collapse_layers": collapse_layers,
        "sinks_excluded": ctx.sinks_excluded,
        "sink_patches": ctx.sink_patches,
        "excluded_sinks": ctx.excluded_sinks,
        "map_scale": viewer_cfg["map_scale"],
        "entropy_top": entropy_top,
        "confident_z": viewer_cfg["confident_z"],
    }


def build_pair(env, src: vdata.PairSources, out_dir: Path, images: ImageStore,
               viewer_cfg: Mapping[str, Any], collapse_layers: Any) -> PairSummary:
    """Every page of one (model, dataset): its index and one page per item."""
    tables = vdata.load_pair(src)
    ctx = vdata.pair_context(tables, viewer_cfg["variants"])
    reader = vdata.StoreReader(src.stores)
    ctx.problems.extend(reader.problems)
    items = vdata.item_list(ctx)
    if viewer_cfg["max_items"] is not None:
        items = items[: int(viewer_cfg["max_items"])]
    pair_dir = out_dir / src.model / src.dataset
    taken: set[str] = set()
    names = {str(it["item_id"]): vdata.safe_name(str(it["item_id"]), taken) for it in items}
    pages = {item_id: f"items/{name}.html" for item_id, name in names.items()}
    entropy_top = vdata.entropy_scale(ctx, reader, items)
    settings = _settings(ctx, reader, collapse_layers, viewer_cfg, entropy_top)
    counts = {"items": len(items), "traces": 0, "failed_traces": 0, "missing_in_store": 0, "items_with_notes": 0,
              "failed_pages": 0}
    order = [str(it["item_id"]) for it in items]
    bar = progress(total=len(items), desc=f"viewer {src.model}/{src.dataset}", unit="item")
    for pos, item in enumerate(items):
        item_id = str(item["item_id"])
        nav = _nav(pos, order, names)
        try:
            _write_item(env, ctx, reader, item, nav, names[item_id], pair_dir, images, viewer_cfg, settings, counts)
        except Exception as exc:  # one bad item is reported on its page and in the log, never the whole site
            msg = f"item {item_id}: page not built ({type(exc).__name__}: {exc})"
            ctx.problems.append(msg)
            counts["failed_pages"] += 1
            log.exception("%s/%s: %s", src.model, src.dataset, msg)
            html = env.get_template("failed.html").render(
                item_id=item_id, message=msg, nav=nav, root="../../../",
                title=f"{item_id} · {src.model} / {src.dataset}")
            (pair_dir / "items").mkdir(parents=True, exist_ok=True)
            (pair_dir / "items" / f"{names[item_id]}.html").write_text(html, encoding="utf-8")
        bar.update(1)
    bar.close()

    rows, meta = vdata.index_rows(ctx, items, pages, float(viewer_cfg["confident_z"]))
    presets = _presets(rows, meta)
    counts["pages"] = len(pages) - counts["failed_pages"]
    counts["wrong"] = sum(r["flags"]["wrong"] for r in rows)
    counts["abstained"] = sum(r["flags"]["abstained"] for r in rows)
    counts["modes"] = {m: sum(r["flags"][f"mode:{m}"] for r in rows) for m in meta["modes"]}
    (pair_dir / "index-data.js").write_text(
        "window.PEEKABOO_INDEX = " + json.dumps({"rows": rows, "meta": meta, "presets": presets}, sort_keys=True,
                                                 separators=(",", ":"), ensure_ascii=True, allow_nan=False) + ";\n",
        encoding="utf-8")
    html = env.get_template("index.html").render(
        model=src.model, dataset=src.dataset, meta=meta, presets=presets, counts=counts, settings=settings,
        problems=ctx.problems, root="../../", items_per_page=int(viewer_cfg["items_per_page"]),
        title=f"{src.model} / {src.dataset}")
    (pair_dir / "index.html").write_text(html, encoding="utf-8")
    return PairSummary(src.model, src.dataset, f"{src.model}/{src.dataset}/index.html", counts, ctx.problems)


def _nav(pos: int, order: Sequence[str], names: Mapping[str, str]) -> dict[str, Any]:
    return {
        "prev": f"{names[order[pos - 1]]}.html" if pos > 0 else None,
        "next": f"{names[order[pos + 1]]}.html" if pos + 1 < len(order) else None,
        "index": "../index.html", "home": "../../../index.html", "position": pos + 1, "total": len(order),
    }


def _write_item(env, ctx: vdata.PairContext, reader: vdata.StoreReader, item: Mapping[str, Any], nav: Mapping[str, Any],
                name: str, pair_dir: Path, images: ImageStore, viewer_cfg: Mapping[str, Any],
                settings: Mapping[str, Any], counts: dict[str, Any]) -> None:
    """One item's page, its JSON and its heat maps."""
    item_id = str(item["item_id"])
    view = vdata.item_record(ctx, reader, item)
    rec = view.record
    root = "../../../"
    item_images = [images.add(p) for p in rec["images"]]
    top = _item_top(view.traces)
    traces = [t for t in [rec["base"], *rec["variants"]] if t is not None]
    for trace in traces:
        mask_images = trace["mask"]["images"] or rec["images"]
        for p in mask_images:
            images.add(p)
        # masked images keep the original's size: overlays use the original's pixel grid
        sizes = [item_images[k] if k < len(item_images) else images.sizes.get(p) for k, p in enumerate(mask_images)]
        panels = _figure(mask_images, sizes, rec["regions"], trace["mask"]["hidden_boxes"],
                         trace["mask"]["hidden_images"], root)
        _sprites(view.traces[trace["trace_id"]], panels, pair_dir / "maps" / name,
                 vdata.variant_key(trace["variant"], trace["fill"] or "none"), f"../maps/{name}",
                 viewer_cfg["map_scale"], top, ctx.sink_patches)
        trace["panels"] = panels
    variants_by_id = {v["trace_id"]: v for v in rec["variants"]}
    paired = {c[k] for c in rec["crm"] for k in ("evidence_trace", "control_trace") if c[k]}
    html = env.get_template("item.html").render(
        item=rec, settings=settings, nav=nav, root=root, variants_by_id=variants_by_id,
        other_variants=[v for v in rec["variants"] if v["trace_id"] not in paired],
        title=f"{item_id} · {ctx.tables.model} / {ctx.tables.dataset}", json_name=f"{name}.json")
    (pair_dir / "items").mkdir(parents=True, exist_ok=True)
    _write_json(pair_dir / "items" / f"{name}.json", {"item": rec, "settings": settings})
    (pair_dir / "items" / f"{name}.html").write_text(html, encoding="utf-8")
    counts["traces"] += len(traces)
    counts["failed_traces"] += sum(t["status"] != "ok" for t in traces)
    counts["missing_in_store"] += sum(any("not found in the trace store" in n for n in t["notes"]) for t in traces)
    counts["items_with_notes"] += bool(rec["notes"] or any(t["notes"] for t in traces))


def _presets(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The index's one-click filters, only those the data has, each with its row count."""
    out = [("wrong", "wrong", "answered and not correct"),
           ("confident_wrong", "confident and wrong",
            f"wrong with z(entropy_full) ≤ {meta['confident_z']:g} among this model's base traces here"),
           ("abstained", "abstained", "the base trace abstained")]
    out += [(f"mode:{m}", m, f"CRM mode {m} for at least one region") for m in meta["modes"]]
    for c in meta["flags"]:
        where = "the item's meta" if c.startswith("meta.") else "collapse traces table"
        out.append((f"flag:{c}", c, f"{c} is true ({where})"))
    return [{"key": k, "label": label, "title": title, "count": sum(bool(r["flags"].get(k)) for r in rows)}
            for k, label, title in out]


def build_site(pairs: Sequence[vdata.PairSources], results_dir: str | Path, out_dir: str | Path,
               viewer_cfg: Mapping[str, Any], collapse_layers: Any, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """Write the whole site; returns the provenance record written to ``provenance.json`` (with counts)."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    _prepare(out_dir)
    _copy_static(out_dir)
    env = _environment()
    images = ImageStore(results_dir, out_dir, int(viewer_cfg["image_max_side"]))
    summaries = []
    for src in pairs:
        try:
            summaries.append(build_pair(env, src, out_dir, images, viewer_cfg, collapse_layers))
        except Exception as exc:  # one (model, dataset) that cannot be shown must not hide the others
            msg = f"pages not built ({type(exc).__name__}: {exc})"
            log.exception("%s/%s: %s", src.model, src.dataset, msg)
            summaries.append(PairSummary(src.model, src.dataset, None, {"items": 0, "traces": 0, "pages": 0, "wrong": 0,
                                                                        "abstained": 0, "modes": {}, "failed_traces": 0},
                                         [msg]))
    html = env.get_template("home.html").render(pairs=summaries, images_problems=images.problems, root="",
                                                title="peekaboo viewer", viewer_cfg=viewer_cfg,
                                                collapse_layers=collapse_layers)
    (out_dir / "index.html").write_text(html, encoding="utf-8")
    record = {**dict(provenance), "pairs": {f"{s.model}/{s.dataset}": {"counts": s.counts, "problems": s.problems}
                                            for s in summaries}, "image_problems": images.problems}
    _write_json(out_dir / MARKER, record)
    log.info("viewer: %d model/dataset pairs, %d item pages, %d images copied (%d unreadable)", len(summaries),
             sum(s.counts["pages"] for s in summaries), sum(v is not None for v in images.sizes.values()),
             len(images.problems))
    return record
