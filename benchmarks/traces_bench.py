"""Benchmark of trace generation: cost of attention capture, and the trace store's size.

    .venv/bin/python benchmarks/traces_bench.py            # tiny + ~100M Qwen3-VL, ~300 and ~2,000 tokens
    .venv/bin/python benchmarks/traces_bench.py --quick    # tiny model only
    .venv/bin/python benchmarks/traces_bench.py --device cuda --bf16 --qwen3-2b   # on a GPU
    .venv/bin/python benchmarks/traces_bench.py --models medium --contexts 2000,3000,4000   # longer contexts

For each (model, context) it times, on the same prompt, in a fresh process each
(so peak memory is not blurred by an earlier run):

  (a) plain  : ``model.generate`` with SDPA attention, nothing recorded;
  (b) capture: the same with peekaboo's recording (capture attention, entropy and
               log-probability hook), as the traces stage runs it;
  (c) eager  : ``model.generate(output_attentions=True)`` with eager attention,
               the usual way to get attention maps.

Tokens/s is generated tokens over the wall time of ``generate`` (prefill
included); decode tok/s leaves the prefill out. Peak memory is the process's
peak resident set during ``generate`` (CPU) or ``torch.cuda.max_memory_allocated``
(GPU), with one copy of the model counted (the worker holds an SDPA and an eager
copy); "peak above model" is the rise over what was there before the call. Then
it writes the captured traces to a store with the default settings and reports
Zarr bytes per generated token, and projects the store size per trace for a
Qwen3-VL-8B-shaped run (36 layers, 32 heads, ~1,000 image tokens, 1,000-token
chains, 4 regions) from the array shapes and the compression measured here, for
the options that trade size for detail.

Random-initialised models: the timings are real, the attention patterns are not
those of a trained model (compression ratios of real maps may differ; the raw
sizes are exact).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

# ~100M parameters: a Qwen3-VL text tower of 14 layers x 768 with GQA (12 query / 4 kv heads)
MEDIUM_TEXT = dict(hidden_size=768, intermediate_size=2560, num_hidden_layers=14, num_attention_heads=12,
                   num_key_value_heads=4, head_dim=64, max_position_embeddings=8192)
MEDIUM_VISION = dict(depth=2, hidden_size=256, intermediate_size=512, num_heads=4, num_position_embeddings=2304,
                     deepstack_visual_indexes=[1])
# Qwen3-VL-2B's published configuration (GPU runs only)
QWEN3_2B_TEXT = dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                     num_key_value_heads=8, head_dim=128, max_position_embeddings=32768)
QWEN3_2B_VISION = dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                       num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17])

# context -> (image side in pixels, question characters): Qwen3-VL cells are 32 px, one token each
CONTEXTS = {300: (448, 60), 2000: (1024, 880)}


def context_shape(context: int) -> tuple[int, int]:
    """Image side and question length for a target context: the two calibrated ones, or longer
    contexts as the ~2,000-token image (1,024 image tokens) with more text (about a token a character)."""
    if context in CONTEXTS:
        return CONTEXTS[context]
    if context < 2000:
        raise ValueError(f"context {context}: besides {sorted(CONTEXTS)}, only contexts of 2,000 tokens or more")
    side, chars = CONTEXTS[2000]
    return side, chars + context - 2000


# -- worker: one (model, context, mode) in its own process --------------------------------------
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


def make_request(root: Path, context: int):
    from PIL import Image

    from peekaboo.generate import TraceRequest

    side, chars = context_shape(context)
    path = root / f"bench-{side}.png"
    if not path.exists():
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
    sentence = "describe the left panel then compare it with the right one and explain each step "
    words = (sentence * (chars // len(sentence) + 1))[:chars]
    return TraceRequest("bench", words, [path], [{"box": [0, 0, side / 2, side / 2], "image": 0},
                                                 {"box": [side / 4, side / 4, side, side], "image": 0}])


def release_freed_memory() -> None:
    """Hand memory freed by earlier runs back to the OS, so the next run's RSS peak is its own."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: peaks may then include earlier runs' leftovers
        pass


def worker(args) -> list[dict]:
    """Time the three modes on one (model, context), interleaved round by round.

    Interleaving matters on a shared machine: other jobs come and go, and a mode
    timed alone in its own window would carry that window's load. Each mode's
    figures are medians over the rounds (per-step medians for decoding).
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from peekaboo.generate import GenerationSettings, TraceGenerator

    torch.set_num_threads(args.threads)
    device = args.device
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    processor = AutoProcessor.from_pretrained(args.model_dir)
    stop = [processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")]
    models = {}
    for attn in ("sdpa", "eager"):
        model = AutoModelForImageTextToText.from_pretrained(args.model_dir, attn_implementation=attn, dtype=dtype)
        model.to(device).eval()
        # stop only on a token this random model does not emit: every run generates exactly n_new tokens
        model.generation_config.eos_token_id = stop
        models[attn] = model
    gens = {
        "plain": TraceGenerator(models["sdpa"], processor, "qwen3_vl", GenerationSettings(args.new_tokens),
                                capture_attention=False),
        "capture": TraceGenerator(models["sdpa"], processor, "qwen3_vl", GenerationSettings(args.new_tokens)),
        "eager": TraceGenerator(models["eager"], processor, "qwen3_vl", GenerationSettings(args.new_tokens),
                                capture_attention=False),
    }
    root = Path(args.work)
    prepared = gens["plain"].prepare(make_request(root, args.context))
    warm = gens["plain"].prepare(make_request(root, 300))
    stamps: list[float] = []
    for model in models.values():
        model.register_forward_pre_hook(lambda *a: stamps.append(time.perf_counter()))

    gens["hook"] = gens["plain"]  # --breakdown: the stage's path without the capture attention

    def run(mode: str, prep, n_new: int):
        gen = gens[mode]
        # capture: the traces stage's path (capture, entropy hook, per-trace results); hook: the same, no capture
        if mode in ("capture", "hook"):
            return gen._generate_batch([replace(prep, budget=n_new)] * args.batch, retries=0)
        batch, _ = gen.collate([prep] * args.batch)
        batch = {k: v.to(device) for k, v in batch.items()}
        extra = dict(output_attentions=True, return_dict_in_generate=True) if mode == "eager" else {}
        with torch.inference_mode():
            return gen.model.generate(**batch, max_new_tokens=n_new, do_sample=False, pad_token_id=gen.pad_id,
                                      eos_token_id=stop, temperature=None, top_p=None, top_k=None, **extra)

    modes = ("plain", "capture", "eager") + (("hook",) if args.breakdown else ())
    for mode in modes:
        run(mode, warm, 2)  # warm-up on a short prompt: first-call overheads out of the timing
        if cuda:  # and on the timed prompt: kernel choices for its shapes out of the first round
            run(mode, prepared, 2)
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    last = {}
    for r in range(args.repeats):
        for mode in modes[r % len(modes):] + modes[: r % len(modes)]:  # rotate the order between rounds
            release_freed_memory()
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() if cuda else PeakRSS().rss()
            stamps.clear()
            # no RSS sampling thread on a GPU: it would compete for the GIL with the kernel launches
            with (nullcontext() if cuda else PeakRSS()) as sampler:
                start = time.perf_counter()
                out = run(mode, prepared, args.new_tokens)
                if cuda:
                    torch.cuda.synchronize()
                end = time.perf_counter()
            peak = torch.cuda.max_memory_allocated() if cuda else sampler.peak
            steps = np.diff(stamps + [end])  # forward-to-forward: a whole generation step each
            runs[mode].append({"wall": end - start, "prefill": stamps[1] - stamps[0], "steps": steps[1:],
                               "peak": peak, "over": peak - base})
            if mode == "capture":  # the store is written from these; other outputs are dropped at once
                last[mode] = out  # (eager's holds every layer's attention, which would sit in later runs' peaks)
            del out
    n = args.new_tokens * args.batch
    prompt_len = int(prepared.encoding["input_ids"].shape[1])
    rows = []
    for mode in modes:
        rr = runs[mode]
        step = float(np.median(np.concatenate([x["steps"] for x in rr])))
        row = {
            "mode": mode, "context": prompt_len, "batch": args.batch, "new_tokens": n, "rounds": len(rr),
            "wall_s": float(np.median([x["wall"] for x in rr])),
            "prefill_s": float(np.median([x["prefill"] for x in rr])),
            "decode_tok_s": args.batch / step,
            "peak_over_model_mb": max(x["over"] for x in rr) / 2**20,
            "params_m": sum(p.numel() for p in models["sdpa"].parameters()) / 1e6,
            # per round, for ratios paired within a round (the machine's load drifts between rounds)
            "round_tok_s": [n / x["wall"] for x in rr],
            "round_decode_tok_s": [args.batch / float(np.median(x["steps"])) for x in rr],
        }
        # both an SDPA and an eager copy are loaded (in RAM or on the GPU): count one, as a real run would
        other = sum(p.numel() * p.element_size() for p in models["eager"].parameters())
        row["peak_mb"] = (max(x["peak"] for x in rr) - other) / 2**20
        row["tok_s"] = n / row["wall_s"]
        if mode == "capture" and args.store:
            row["store"] = store_size(last["capture"], gens["capture"], Path(args.store))
        rows.append(row)
    return rows


def store_size(results, gen, path: Path) -> dict:
    """Write the captured traces with the default store settings; sizes per array."""
    from peekaboo.tracestore import ShardWriter

    for k, r in enumerate(results):
        r.request.trace_id = f"bench|{k}"
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
            "raw": raw, "patches": len(results[0].patch_box)}


# -- driver ------------------------------------------------------------------------------------
def build(kind: str, root: Path) -> Path:
    from peekaboo.models.tiny import build_tiny

    path = root / kind
    if kind == "tiny":
        return build_tiny("qwen3_vl", path, max_image_tokens=1100)
    if kind == "medium":
        return build_tiny("qwen3_vl", path, text=MEDIUM_TEXT, vision=MEDIUM_VISION, max_image_tokens=1100)
    return build_tiny("qwen3_vl", path, text=QWEN3_2B_TEXT, vision=QWEN3_2B_VISION, max_image_tokens=1100)


def projection(measured: dict | None) -> list[tuple[str, float, float]]:
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

    rows = [("map_layers: mean (default)", *size(1, False)),
            ("map_layers: 4 layers", *size(4, False)),
            ("map_layers: all (36)", *size(36, False)),
            ("map_layers: mean + keep_heads", *size(1, True)),
            ("map_layers: all + keep_heads", *size(36, True))]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model only")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="interleaved rounds per (model, context); medians count")
    ap.add_argument("--long-repeats", type=int,
                    help="rounds for the non-tiny models at ~2,000 tokens and more "
                         "(default: 1 on CPU, --repeats on a GPU)")
    ap.add_argument("--models", help="comma-separated models to run, in this order (tiny, medium, qwen3_2b); "
                                     "overrides --quick and --qwen3-2b")
    ap.add_argument("--contexts", default="300,2000",
                    help="comma-separated target contexts in tokens (default 300,2000; longer ones add text to the "
                         "~2,000-token prompt, e.g. 4000 to see where eager's quadratic cost shows)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--qwen3-2b", action="store_true", help="add a random model with Qwen3-VL-2B's configuration")
    ap.add_argument("--json", help="also write the measurements here")
    ap.add_argument("--breakdown", action="store_true",
                    help="add a mode 'hook': the stage's path (entropy/log-probability hook, per-trace results) "
                         "without the capture attention, to split capture's cost")
    ap.add_argument("--worker", nargs=3, metavar=("MODEL_DIR", "CONTEXT", "ALL"), help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        args.model_dir, context, _ = args.worker
        args.context = int(context)
        print(json.dumps(worker(args)))
        return

    kinds = ["tiny"] if args.quick else ["tiny", "medium"] + (["qwen3_2b"] if args.qwen3_2b else [])
    if args.models:
        kinds = [k.strip() for k in args.models.split(",") if k.strip()]
        unknown = set(kinds) - {"tiny", "medium", "qwen3_2b"}
        if unknown:
            ap.error(f"unknown model(s) {sorted(unknown)}")
    try:
        contexts = [int(c) for c in args.contexts.split(",") if c.strip()]
        for c in contexts:
            context_shape(c)
    except ValueError as exc:
        ap.error(f"--contexts: {exc}")
    if args.long_repeats is None:
        args.long_repeats = args.repeats if args.device.startswith("cuda") else 1
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="traces-bench-") as tmp:
        root = Path(tmp)
        for kind in kinds:
            model_dir = build(kind, root / "models")
            for context in contexts:
                cmd = [sys.executable, __file__, "--worker", str(model_dir), str(context), "all", "--work", tmp,
                       "--new-tokens", str(args.new_tokens), "--batch", str(args.batch),
                       "--threads", str(args.threads), "--device", args.device,
                       "--repeats", str(args.repeats if (context < 1000 or kind == "tiny") else args.long_repeats),
                       "--store", str(root / f"store-{kind}-{context}")]
                if args.bf16:
                    cmd.append("--bf16")
                if args.breakdown:
                    cmd.append("--breakdown")
                t = time.perf_counter()
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:  # report it and go on: the other (model, context) pairs still count
                    sys.stderr.write(done.stderr[-3000:])
                    print(f"  worker failed: {kind} {context}", file=sys.stderr, flush=True)
                    failed.append(f"{kind} ~{context}")
                    continue
                for row in json.loads(done.stdout.strip().splitlines()[-1]):
                    row.update(model=kind, target_context=context)
                    rows.append(row)
                    print(f"  {kind:8s} ~{context:5d} {row['mode']:8s} {row['tok_s']:8.2f} tok/s "
                          f"{row['decode_tok_s']:8.2f} decode tok/s {row['peak_mb']:8.0f} MB", file=sys.stderr,
                          flush=True)
                print(f"  ({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
                if args.json:  # after every worker: a run cut short keeps what it measured
                    Path(args.json).write_text(json.dumps(rows, indent=1))
    report(rows, args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if failed:
        raise SystemExit(f"worker(s) failed: {', '.join(failed)}")


def report(rows: list[dict], args) -> None:
    print(f"\nTrace generation on {args.device} ({args.threads} thread(s), batch {args.batch}, "
          f"{args.new_tokens} new tokens per sequence, {'bf16' if args.bf16 else 'float32'}; medians over "
          f"interleaved rounds; paired: the median over rounds of the ratio within each round)\n")
    print("| model | params | context | mode | tok/s | prefill s | decode tok/s | peak MB | peak above model MB "
          "| capture / plain: tok/s, decode tok/s, peak | paired capture / plain: tok/s, decode tok/s "
          "| capture / eager: tok/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    by = {(r["model"], r["target_context"], r["mode"]): r for r in rows}
    for r in rows:
        plain = by[(r["model"], r["target_context"], "plain")]
        eager = by[(r["model"], r["target_context"], "eager")]
        vs_plain = paired = vs_eager = ""
        if r["mode"] in ("capture", "hook"):
            vs_plain = (f"{r['tok_s'] / plain['tok_s']:.2f}x, {r['decode_tok_s'] / plain['decode_tok_s']:.2f}x, "
                        f"{r['peak_mb'] / plain['peak_mb'] - 1:+.1%}")
            paired = ", ".join(f"{np.median(np.divide(r[k], plain[k])):.2f}x"
                               for k in ("round_tok_s", "round_decode_tok_s"))
        if r["mode"] == "capture":
            vs_eager = f"{r['tok_s'] / eager['tok_s']:.2f}x"
        print(f"| {r['model']} | {r['params_m']:.1f}M | {r['context']} | {r['mode']} | {r['tok_s']:.2f} | "
              f"{r['prefill_s']:.2f} | {r['decode_tok_s']:.1f} | {r['peak_mb']:.0f} | {r['peak_over_model_mb']:.0f} "
              f"| {vs_plain} | {paired} | {vs_eager} |")
    stores = [r for r in rows if "store" in r]
    print("\n| model | context | generated tokens | store bytes | bytes per generated token |")
    print("|---|---|---|---|---|")
    for r in stores:
        s = r["store"]
        print(f"| {r['model']} | {r['context']} | {s['tokens']} | {s['bytes']} | {s['bytes_per_token']:.0f} |")
    biggest = max(stores, key=lambda r: (r["model"] != "tiny", r["target_context"]))["store"] if stores else None
    print("\nProjected store size per trace, Qwen3-VL-8B shape (36 layers, 32 heads, 1,000 image tokens, "
          "1,000 generated tokens, 4 regions):\n")
    print("| traces settings | raw MB | MB with measured zstd ratio |")
    print("|---|---|---|")
    for name, raw, packed in projection(biggest):
        print(f"| {name} | {raw:.1f} | {packed:.1f} |")


if __name__ == "__main__":
    main()
