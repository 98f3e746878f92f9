"""Benchmark of the traces stage's two steps: generating the tokens, and the replay that captures attention.

    .venv/bin/python benchmarks/traces_bench.py                 # CPU: tiny and ~100M Qwen3-VL (about 15 minutes)
    .venv/bin/python benchmarks/traces_bench.py --quick         # CPU: tiny model only
    .venv/bin/python benchmarks/traces_bench.py --device cuda --bf16 --models qwen3_2b --compile --find-batch
    .venv/bin/python benchmarks/traces_bench.py --device cuda --bf16 --models qwen3_2b --chains 4096 --batches 8

For each model, chain length (generated tokens per sequence) and batch size it
runs, in a fresh process (so that peak memory is that run's own):

  generate : ``TraceGenerator.generate_ids`` as the stage generates: transformers'
             ``generate`` with plain SDPA and the dynamic cache, nothing recorded;
  static   : the same with ``generation.compile`` (static cache, transformers'
             ``torch.compile`` of the decoding step; CUDA only), timed on a second
             call after a first one that compiles (its time is reported apart);
  replay   : ``TraceReplayer.replay`` (``peekaboo.trace_replay``) of the generated tokens as the stage
             captures: one teacher-forced forward pass per batch with the replay
             attention, entropy and log-probabilities, per-trace results.

The prompt is one 1,024 x 1,024 image (1,024 image tokens on Qwen3-VL) and a
short question, ~1,060 tokens; the model stops only on a token it does not
emit, so every sequence has exactly the chain length. Tokens/s is generated
tokens over the wall time of the call (prefill and image processing
included); replay s per trace is the replay's wall time over the batch size,
and its share is replay time over generation time for the same batch. Peak
memory: ``torch.cuda.max_memory_allocated`` on a GPU, the sampled resident set
on CPU; "above model" is the rise over what was held before the call.

``--find-batch`` (GPU) estimates the largest batch that fits from the peaks at
batch 1 and 8 (memory grows linearly with the batch: KV cache in generation,
activations and score chunks in the replay), then runs it, halving on out of
memory: that batch, per chain length, is the ``batch_size`` to put in the
model entry (docs/traces.md). Then the store size per generated token (the
replayed traces written with the default settings), and the projected
GPU-hours of ``configs/paper.yaml`` at the measured rates.

Random-initialised models built by ``peekaboo.models.tiny.build_tiny``: the
timings are real; the tokens and attention patterns are not a trained model's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

# the tiny model with room for 1,024 image tokens and 4,096 generated ones
TINY_TEXT = dict(max_position_embeddings=8192)
# ~100M parameters: a Qwen3-VL text tower of 14 layers x 768 with GQA (12 query / 4 kv heads)
MEDIUM_TEXT = dict(hidden_size=768, intermediate_size=2560, num_hidden_layers=14, num_attention_heads=12,
                   num_key_value_heads=4, head_dim=64, max_position_embeddings=8192)
MEDIUM_VISION = dict(depth=2, hidden_size=256, intermediate_size=512, num_heads=4, num_position_embeddings=2304,
                     deepstack_visual_indexes=[1])
# Qwen3-VL-2B's published configuration
QWEN3_2B_TEXT = dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                     num_key_value_heads=8, head_dim=128, max_position_embeddings=32768)
QWEN3_2B_VISION = dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                       num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17])

IMAGE_SIDE = 1024  # Qwen3-VL: 32 px per image token, so 32 x 32 = 1,024 image tokens
QUESTION = "Which panel shows the larger shape? Think step by step, then answer."

# Measured before this change on an H100 (docs/traces.md, "Before: decode-time capture"; run C: Qwen3-VL-2B
# shape, bf16, ~1,900-token prompt, 64 new tokens): tokens/s of generation with decode-time capture ("today's"
# rates), and of plain SDPA generation, which is this path's generation step (the same generate call, nothing
# recorded)
BEFORE_H100 = {"decode-time capture": {1: 35.4, 8: 186.2}, "plain SDPA generation": {1: 39.2, 8: 231.1}}

# configs/paper.yaml: items per dataset (docs/datasets.md) and traces per item
PAPER_ITEMS = {"mathvista": 1000, "hallusionbench": 1129, "mmmu_pro": 1730, "visargs": 1611}
PAPER_MODELS = ("qwen3-vl-2b", "qwen3-vl-8b", "glm-4.6v-flash")


def paper_traces(visual_premises: float) -> dict[str, float]:
    """Traces per model and dataset: one per item without masks; VisArgs (masks on, the default variants and
    one fill) base + drop:k and ctrl:k per visual premise + drop:all + keep:evidence."""
    out = {d: float(n) for d, n in PAPER_ITEMS.items() if d != "visargs"}
    out["visargs"] = PAPER_ITEMS["visargs"] * (3 + 2 * visual_premises)
    return out


# -- worker: one (model, chain, batch) in its own process ------------------------------------------
class PeakRSS:
    """Samples the resident set size every few milliseconds in a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page

    def __enter__(self):
        self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def release_freed_memory() -> None:
    """Hand memory freed by earlier calls back to the OS, so the next call's RSS peak is its own."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: peaks may then include earlier calls' leftovers
        pass


def make_request(root: Path):
    from PIL import Image

    from peekaboo.generate import TraceRequest

    path = root / f"bench-{IMAGE_SIDE}.png"
    if not path.exists():
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)).save(path)
    half = IMAGE_SIDE / 2
    return TraceRequest("bench", QUESTION, [path], [{"box": [0, 0, half, half], "image": 0},
                                                    {"box": [half / 2, half / 2, IMAGE_SIDE, IMAGE_SIDE], "image": 0}])


def measured(fn, cuda: bool):
    """(result, wall seconds, peak bytes, peak above the start in bytes) of ``fn()``."""
    import torch

    release_freed_memory()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = PeakRSS().rss()
    # no RSS sampling thread on a GPU: it would compete for the GIL with the kernel launches
    with (nullcontext() if cuda else PeakRSS()) as sampler:
        start = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else sampler.peak
    return out, wall, peak, peak - base


def worker(args) -> dict:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from peekaboo.generate import GenerationSettings, TraceGenerator
    from peekaboo.trace_replay import TraceReplayer

    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    processor = AutoProcessor.from_pretrained(args.model_dir)
    model = AutoModelForImageTextToText.from_pretrained(args.model_dir, attn_implementation="sdpa", dtype=dtype)
    model.to(args.device).eval()
    # stop only on a token this random model does not emit: every sequence has exactly the chain length
    model.generation_config.eos_token_id = [processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")]
    root = Path(args.work)
    requests = [make_request(root)] * args.batch
    settings = GenerationSettings(max_new_tokens=args.chain)
    dynamic = TraceReplayer(model, processor, "qwen3_vl", settings, static_cache=False)
    warm = TraceReplayer(model, processor, "qwen3_vl", GenerationSettings(max_new_tokens=4), static_cache=False)
    warm.replay(requests[:1], warm.generate_ids(requests[:1]))  # first-call costs out of the timings
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    row: dict = {"chain": args.chain, "batch": args.batch, "params_m": model_bytes / dtype.itemsize / 1e6,
                 "model_mb": model_bytes / 2**20}
    prompt_len = dynamic.prepare(requests[0]).prompt_len
    row["prompt_tokens"] = prompt_len
    row["image_tokens"] = len(dynamic.prepare(requests[0]).images)
    try:
        gens, wall, peak, over = measured(lambda: dynamic.generate_ids(requests), cuda)
    except torch.OutOfMemoryError:
        return {**row, "oom": "generate"}
    # out of memory inside generate_ids splits the batch (or fails a single row): the batch did not fit
    if any(not g.ok or g.retries for g in gens):
        return {**row, "oom": "generate", "error": next((g.error for g in gens if not g.ok), "batch split")}
    n = sum(len(g.token_ids) for g in gens)
    row["generate"] = {"wall_s": wall, "tok_s": n / wall, "peak_mb": peak / 2**20, "over_mb": over / 2**20,
                       "tokens": n}
    if args.compile:
        static = TraceGenerator(model, processor, "qwen3_vl", settings, static_cache=True)
        try:
            _, first, _, _ = measured(lambda: static.generate_ids(requests), cuda)  # compiles
            again, wall, peak, over = measured(lambda: static.generate_ids(requests), cuda)
            row["static"] = {"wall_s": wall, "tok_s": sum(len(g.token_ids) for g in again) / wall,
                             "compile_call_s": first, "peak_mb": peak / 2**20, "over_mb": over / 2**20,
                             "same_tokens": [g.token_ids for g in again] == [g.token_ids for g in gens]}
        except torch.OutOfMemoryError:
            row["static"] = {"oom": True}
    try:
        results, wall, peak, over = measured(lambda: dynamic.replay(requests, gens), cuda)
    except torch.OutOfMemoryError:
        return {**row, "oom": "replay"}
    if any(r.status != "ok" or r.retries for r in results):
        return {**row, "oom": "replay", "error": next((r.error for r in results if r.status != "ok"), "batch split")}
    row["replay"] = {"wall_s": wall, "s_per_trace": wall / args.batch, "share": wall / row["generate"]["wall_s"],
                     "peak_mb": peak / 2**20, "over_mb": over / 2**20}
    if args.store:  # one trace: the batch's rows are the same request, and zstd would find the repeats
        row["store"] = store_size(results[:1], dynamic, Path(args.store))
    return row


def store_size(results, gen, path: Path) -> dict:
    """Write replayed traces with the default store settings; sizes per array."""
    from peekaboo.tracestore import ShardWriter

    for k, r in enumerate(results):
        r.request = type(r.request)(f"bench|{k}", r.request.question, r.request.images, r.request.regions)
    writer = ShardWriter(path / "shard-0.zarr", path / "shard-0.parquet", [[r.request.trace_id for r in results]],
                         n_layers=gen.n_layers, n_heads=gen.n_heads, map_layers=gen.map_layers)
    writer.start()
    writer.write_batch(0, results)
    store, _ = writer.finalize()
    import zarr

    group = zarr.open_group(store, mode="r")
    per_array, raw = {}, {}
    for name in ("image_attn", "image_mass", "region_mass"):
        # chunk bytes only (metadata left out) against the array's uncompressed size: the zstd ratio
        per_array[name] = sum(f.stat().st_size for f in (store / name).rglob("*") if f.is_file()
                              and f.name != "zarr.json")
        raw[name] = group[name].nbytes
    total = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    tokens = sum(r.n_tokens for r in results)
    return {"bytes": total, "tokens": tokens, "bytes_per_token": total / max(tokens, 1), "per_array": per_array,
            "raw": raw}


# -- driver ------------------------------------------------------------------------------------
def build(kind: str, root: Path) -> Path:
    from peekaboo.models.tiny import build_tiny

    path = root / kind
    if kind == "tiny":
        return build_tiny("qwen3_vl", path, text=TINY_TEXT, max_image_tokens=1100)
    if kind == "medium":
        return build_tiny("qwen3_vl", path, text=MEDIUM_TEXT, vision=MEDIUM_VISION, max_image_tokens=1100)
    return build_tiny("qwen3_vl", path, text=QWEN3_2B_TEXT, vision=QWEN3_2B_VISION, max_image_tokens=1100)


def run_worker(args, kind: str, model_dir: Path, chain: int, batch: int, tmp: str, store: Path | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(model_dir), str(chain), str(batch), "--work", tmp,
           "--threads", str(args.threads), "--device", args.device]
    if args.bf16:
        cmd.append("--bf16")
    if args.compile and args.device.startswith("cuda"):
        cmd.append("--compile")
    if store is not None:
        cmd += ["--store", str(store)]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr[-3000:])
        if "OutOfMemoryError" in done.stderr or "out of memory" in done.stderr:
            return {"chain": chain, "batch": batch, "oom": "process"}
        raise RuntimeError(f"worker failed: {kind} chain {chain} batch {batch}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row.update(model=kind, elapsed_s=time.perf_counter() - t)
    return row


def find_batch(args, kind, model_dir, chain, tmp, rows: list[dict], capacity_mb: float) -> dict | None:
    """The largest batch that fits for ``chain``: linear in the batch from the peaks at 1 and 8, then verified."""
    one = next((r for r in rows if r["model"] == kind and r["chain"] == chain and r["batch"] == 1 and "oom" not in r),
               None)
    eight = next((r for r in rows if r["model"] == kind and r["chain"] == chain and r["batch"] == 8
                  and "oom" not in r), None)
    if one is None or eight is None:
        return None
    steps = [s for s in ("generate", "replay", "static") if s in one and s in eight and "peak_mb" in one[s]]
    per_row = max((eight[s]["peak_mb"] - one[s]["peak_mb"]) / 7 for s in steps)
    base = max(one[s]["peak_mb"] - per_row for s in steps)
    batch = int(min(args.max_batch, max(8, (0.9 * capacity_mb - base) // max(per_row, 1e-6))))
    while batch > 8:
        row = run_worker(args, kind, model_dir, chain, batch, tmp, None)
        print(f"  {kind} chain {chain} batch {batch}: {'out of memory' if 'oom' in row else 'fits'}", file=sys.stderr,
              flush=True)
        if "oom" not in row:
            row["largest"] = True
            row["estimate"] = {"per_row_mb": per_row, "base_mb": base, "capacity_mb": capacity_mb}
            return row
        batch //= 2
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model only")
    ap.add_argument("--models", help="comma-separated: tiny, medium, qwen3_2b (default: tiny,medium on CPU, "
                                     "qwen3_2b on CUDA)")
    ap.add_argument("--chains", default="256,1024,4096", help="generated tokens per sequence (comma-separated)")
    ap.add_argument("--batches", default="1,8", help="batch sizes (comma-separated)")
    ap.add_argument("--medium-chains", default="256,1024",
                    help="on CPU, the ~100M model's chains (its 4,096-token chains take too long on 2 cores)")
    ap.add_argument("--medium-batches", default="1,8", help="on CPU, the ~100M model's batch sizes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also the static cache + torch.compile (CUDA only)")
    ap.add_argument("--find-batch", action="store_true", help="also the largest batch that fits (CUDA only)")
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--visual-premises", type=float, default=3.0,
                    help="mean visual premises per VisArgs item, for the projection (an assumption; docs/traces.md)")
    ap.add_argument("--json", help="also write the measurements here")
    ap.add_argument("--worker", nargs=3, metavar=("MODEL_DIR", "CHAIN", "BATCH"), help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        args.model_dir, chain, batch = args.worker
        args.chain, args.batch = int(chain), int(batch)
        print(json.dumps(worker(args)))
        return

    cuda = args.device.startswith("cuda")
    kinds = (["qwen3_2b"] if cuda else ["tiny"] if args.quick else ["tiny", "medium"])
    if args.models:
        kinds = [k.strip() for k in args.models.split(",") if k.strip()]
        unknown = set(kinds) - {"tiny", "medium", "qwen3_2b"}
        if unknown:
            ap.error(f"unknown model(s) {sorted(unknown)}")
    chains = [int(c) for c in args.chains.split(",") if c.strip()]
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    notes = []
    if args.compile and not cuda:
        notes.append("static cache + torch.compile: CUDA only (transformers compiles the decoding step on CUDA); "
                     "not run on CPU")
    if args.find_batch and not cuda:
        notes.append("largest batch: not searched on CPU, where time, not memory, bounds the batch")
    capacity_mb = 0.0
    if cuda:
        import torch

        capacity_mb = torch.cuda.get_device_properties(0).total_memory / 2**20
    rows: list[dict] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="traces-bench-") as tmp:
        root = Path(tmp)
        for kind in kinds:
            model_dir = build(kind, root / "models")
            kind_chains, kind_batches = chains, batches
            if kind == "medium" and not cuda:
                kind_chains = [int(c) for c in args.medium_chains.split(",") if c.strip()]
                kind_batches = [int(b) for b in args.medium_batches.split(",") if b.strip()]
            for chain in kind_chains:
                for batch in kind_batches:
                    store = root / f"store-{kind}-{chain}-{batch}" if batch == kind_batches[-1] else None
                    row = run_worker(args, kind, model_dir, chain, batch, tmp, store)
                    rows.append(row)
                    print(f"  {kind} chain {chain} batch {batch}: " + (
                        f"out of memory in {row['oom']}" if "oom" in row else
                        f"{row['generate']['tok_s']:.1f} tok/s, replay {row['replay']['s_per_trace']:.2f} s/trace "
                        f"({row['replay']['share']:.1%}) ({row['elapsed_s']:.0f} s)"), file=sys.stderr, flush=True)
                    if args.json:  # after every worker: a run cut short keeps what it measured
                        Path(args.json).write_text(json.dumps(rows, indent=1))
                if args.find_batch and cuda:
                    found = find_batch(args, kind, model_dir, chain, tmp, rows, capacity_mb)
                    if found is not None:
                        rows.append(found)
    report(rows, args, notes, time.perf_counter() - started)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def machine(args) -> str:
    import torch

    if args.device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = f"CPU ({os.cpu_count()} cores, {args.threads} torch thread(s), {platform.machine()})"
    return f"{cpu}, torch {torch.__version__}"


def report(rows: list[dict], args, notes: list[str], elapsed: float) -> None:
    import transformers

    dtype = "bf16" if args.bf16 else "float32"
    print(f"\nTraces: generation, then replay to capture; {machine(args)}, transformers {transformers.__version__}, "
          f"{dtype}; {time.strftime('%Y-%m-%d')}; {elapsed / 60:.0f} min in all\n")
    for note in notes:
        print(f"- {note}")
    ok = [r for r in rows if "oom" not in r]
    if ok:
        r0 = ok[0]
        print(f"- prompt: {r0['prompt_tokens']} tokens, {r0['image_tokens']} of them image tokens; every sequence "
              "generates exactly its chain length\n")
    print("| model | params | chain | batch | generate tok/s | generate s | static+compile tok/s (compile call s) "
          "| replay s/trace | replay / generate | peak MB generate / replay (above model) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        label = f"{r['batch']} (largest)" if r.get("largest") else str(r["batch"])
        if "oom" in r:
            print(f"| {r.get('model', '')} | | {r['chain']} | {label} | out of memory ({r['oom']}) | | | | | |")
            continue
        g, p = r["generate"], r["replay"]
        st = r.get("static")
        static = ("n/a (CUDA only)" if not args.device.startswith("cuda") else "not run" if st is None
                  else "out of memory" if st.get("oom") else
                  f"{st['tok_s']:.1f} ({st['compile_call_s']:.0f}){'' if st['same_tokens'] else ', other tokens'}")
        print(f"| {r['model']} | {r['params_m']:.1f}M | {r['chain']} | {label} | {g['tok_s']:.1f} | {g['wall_s']:.1f} "
              f"| {static} | {p['s_per_trace']:.3f} | {p['share']:.1%} | {g['peak_mb']:.0f} / {p['peak_mb']:.0f} "
              f"({g['over_mb']:.0f} / {p['over_mb']:.0f}) |")
    largest = [r for r in rows if r.get("largest")]
    if largest:
        print("\nLargest batch that fits (estimated from the peaks at batch 1 and 8, then run):\n")
        print("| model | chain | batch | per row MB | estimate base MB |")
        print("|---|---|---|---|---|")
        for r in largest:
            e = r["estimate"]
            print(f"| {r['model']} | {r['chain']} | {r['batch']} | {e['per_row_mb']:.0f} | {e['base_mb']:.0f} |")
    stores = [r for r in ok if "store" in r]
    if stores:
        print("\n| model | chain | batch | generated tokens | store bytes | bytes per generated token |")
        print("|---|---|---|---|---|---|")
        for r in stores:
            s = r["store"]
            print(f"| {r['model']} | {r['chain']} | {r['batch']} | {s['tokens']} | {s['bytes']} "
                  f"| {s['bytes_per_token']:.0f} |")
        biggest = max(stores, key=lambda r: (r["params_m"], r["chain"]))["store"]
        print("\nProjected store size per trace, Qwen3-VL-8B shape (36 layers, 32 heads, 1,000 image tokens, "
              "1,000 generated tokens, 4 regions):\n")
        print("| traces settings | raw MB | MB with measured zstd ratio |")
        print("|---|---|---|")
        for name, raw, packed in store_projection(biggest):
            print(f"| {name} | {raw:.1f} | {packed:.1f} |")
    projection(ok, args)


def store_projection(measured: dict | None) -> list[tuple[str, float, float]]:
    """Store MB per trace for a Qwen3-VL-8B-shaped run, raw and with the compression measured here."""
    L, H, P, T, R = 36, 32, 1000, 1000, 4
    ratio = {}
    if measured:
        for name, raw in measured["raw"].items():
            ratio[name] = measured["per_array"].get(name, raw) / raw if raw else 1.0
    r_map, r_mass, r_region = (ratio.get(k, 1.0) for k in ("image_attn", "image_mass", "region_mass"))
    fixed = T * (4 + 4 + 4) + P * (16 + 2)  # token_id, logprob, entropy; patch_box, patch_image
    mass = T * L * H * 2 * r_mass + T * L * R * 2 * r_region

    def size(map_layers: int, heads: bool) -> tuple[float, float]:
        raw_map = T * map_layers * P * 2 * (1 + (H if heads else 0))
        raw = fixed + T * L * H * 2 + T * L * R * 2 + raw_map
        return raw / 1e6, (fixed + mass + raw_map * r_map) / 1e6

    return [("map_layers: mean (default)", *size(1, False)),
            ("map_layers: 4 layers", *size(4, False)),
            ("map_layers: all (36)", *size(36, False)),
            ("map_layers: mean + keep_heads", *size(1, True)),
            ("map_layers: all + keep_heads", *size(36, True))]


def projection(rows: list[dict], args) -> None:
    """Device-hours of configs/paper.yaml at the measured rates, per mean chain length (the measured chains)."""
    traces = paper_traces(args.visual_premises)
    per_model = sum(traces.values())
    n_models = len(PAPER_MODELS)
    device = "GPU" if args.device.startswith("cuda") else "CPU"
    print(f"\nProjected {device}-hours for configs/paper.yaml: {per_model:,.0f} traces per model "
          f"(MathVista {traces['mathvista']:,.0f}, HallusionBench {traces['hallusionbench']:,.0f}, MMMU-Pro "
          f"{traces['mmmu_pro']:,.0f}: one each; VisArgs {PAPER_ITEMS['visargs']:,} items x "
          f"(3 + 2 x {args.visual_premises:g} visual premises) = {traces['visargs']:,.0f}), x {n_models} models, at "
          "the rates measured here for each chain length taken as the mean chain (every model at this model's "
          "rates: the 8B and GLM-4.6V-Flash are slower)\n")
    print("| model | mean chain | batch | generate h | replay h | total h | replay share |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        gen_h = n_models * per_model * r["chain"] / r["generate"]["tok_s"] / 3600
        rep_h = n_models * per_model * r["replay"]["s_per_trace"] / 3600
        label = f"{r['batch']} (largest)" if r.get("largest") else str(r["batch"])
        print(f"| {r['model']} | {r['chain']} | {label} | {gen_h:,.1f} | {rep_h:,.1f} | {gen_h + rep_h:,.1f} "
              f"| {rep_h / (gen_h + rep_h):.1%} |")
    print("\nAt the rates measured before this change on an H100 (Qwen3-VL-2B shape, bf16, ~1,900-token prompt, "
          "64 new tokens; docs/traces.md), generation only:\n")
    print("| path | mean chain | batch | tok/s | GPU-hours, 3 models |")
    print("|---|---|---|---|---|")
    for name, rates in BEFORE_H100.items():
        for chain in sorted({r["chain"] for r in rows} or {1024}):
            for batch, rate in rates.items():
                print(f"| {name} | {chain} | {batch} | {rate} | {n_models * per_model * chain / rate / 3600:,.0f} |")


if __name__ == "__main__":
    main()
