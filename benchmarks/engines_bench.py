"""Benchmark of the two generation engines, transformers and vLLM, on the same requests, and the replay's share.

    .venv/bin/python benchmarks/engines_bench.py                    # CPU: tiny Qwen3-VL (head size 32), 32 requests
    .venv/bin/python benchmarks/engines_bench.py --chains 256 1024 --hidden 128 512

Needs vLLM's environment (``scripts/setup_env.sh --engine vllm``; ``--python`` to point elsewhere). For each
model shape and chain length, in this order:

  transformers : ``TraceGenerator.generate_ids`` in batches of ``--batch`` (the generate stage's path);
  vLLM         : the generate stage's vLLM path (``peekaboo.engines``: requests rendered and checked here, the
                 worker in vLLM's environment, ``--max-num-seqs`` at once); its wall time includes starting the
                 engine (a separate figure: the worker's own generation time, from its log line);
  replay       : ``TraceGenerator.replay`` of vLLM's generations in batches of ``--batch``.

Every request has one 256 x 256 noise image and a short question; the model stops only on a token it does not
emit, so every chain has exactly the chain length on both engines. Random-initialised tiny models
(``peekaboo.models.tiny``; vLLM's CPU attention needs a head size of 32 or more): the timings are real, the
tokens are not a trained model's. Peak memory is not measured: the vLLM worker's own processes are not this
one's children, and a child's resident peak starts from the parent's at the fork. Printed as a table and as
ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build(root: Path, hidden: int) -> Path:
    from transformers import GenerationConfig

    from peekaboo.models.tiny import build_tiny

    path = build_tiny("qwen3_vl", root / f"qwen3-vl-h{hidden // 4}", seed=0, text={"hidden_size": hidden})
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    cfg = GenerationConfig.from_pretrained(path)
    cfg.eos_token_id = [tok.convert_tokens_to_ids("<|video_pad|>")]  # never emitted: full-length chains
    cfg.save_pretrained(path)
    return path


def requests(root: Path, n: int):
    import numpy as np
    from PIL import Image

    from peekaboo.generate import TraceRequest

    out = []
    for k in range(n):
        img = root / "img" / f"{k}.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(k)
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(img)
        out.append(TraceRequest(f"r{k}", f"Describe picture {k} step by step.", [img], [],
                                meta={"mask_id": f"q{k}|base|none"}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=str(REPO / ".venv-vllm" / "bin" / "python"))
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--chains", type=int, nargs="+", default=[256])
    ap.add_argument("--hidden", type=int, nargs="+", default=[128], help="text hidden size (4 heads: head = /4)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    from peekaboo import schema
    from peekaboo.engines import engine_python, engine_requests, read_outputs, run_worker
    from peekaboo.generate import GenerationSettings, TraceGenerator, plan_batches
    from peekaboo.generations import Generation

    torch.set_num_threads(args.threads)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        reqs = requests(root, args.requests)
        for hidden in args.hidden:
            path = build(root, hidden)
            from transformers import AutoModelForImageTextToText, AutoProcessor

            model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
            processor = AutoProcessor.from_pretrained(path)
            for chain in args.chains:
                spec = schema.definition("model", {"source": str(path), "dtype": "float32", "engine": "vllm",
                                                   "generation": {"max_new_tokens": chain},
                                                   "vllm": {"python": args.python, "max_model_len": 4096,
                                                            "max_num_seqs": args.max_num_seqs}}, where="bench")
                gen = TraceGenerator(model, processor, "qwen3_vl", GenerationSettings(max_new_tokens=chain))
                batches = plan_batches(reqs, args.batch)
                t0 = time.perf_counter()
                ours = [g for b in batches for g in gen.generate_ids(b)]
                t_hf = time.perf_counter() - t0
                todo, expected, failed = engine_requests(reqs, processor, spec, "bench", 4096)
                assert not failed, failed
                req_path, out_path = root / "req.jsonl", root / "out.jsonl"
                req_path.write_text("".join(json.dumps(r) + "\n" for r in todo))
                t0 = time.perf_counter()
                said = run_worker(engine_python("bench", spec), "bench", path, spec, req_path, out_path)
                t_vllm = time.perf_counter() - t0
                gen_line = next(s for s in said if s.startswith("generated "))
                t_vllm_gen = float(gen_line.split(" in ")[1].split(" s")[0])
                outputs = read_outputs(out_path)
                vllm_gens = [Generation(r.generation_id, token_ids=tuple(outputs[r.generation_id]["token_ids"]),
                                        finish_reason=outputs[r.generation_id]["finish_reason"]) for r in reqs]
                n_tokens = sum(len(g.token_ids) for g in vllm_gens)
                equal = sum(tuple(o.token_ids) == v.token_ids for o, v in zip(ours, vllm_gens))
                prompts_equal = sum(outputs[r.generation_id]["prompt_token_ids"] == expected[r.generation_id]
                                    for r in reqs)
                t0 = time.perf_counter()
                k = 0
                for b in batches:
                    gen.replay(b, vllm_gens[k:k + len(b)])
                    k += len(b)
                t_replay = time.perf_counter() - t0
                rows.append(dict(head=hidden // 4, chain=chain, tokens=n_tokens, hf_tok_s=n_tokens / t_hf,
                                 vllm_tok_s=n_tokens / t_vllm, vllm_gen_tok_s=n_tokens / t_vllm_gen,
                                 vllm_start_s=t_vllm - t_vllm_gen, replay_s=t_replay,
                                 replay_share_hf=t_replay / (t_hf + t_replay),
                                 replay_share_vllm=t_replay / (t_vllm_gen + t_replay),
                                 ids_equal=f"{equal}/{len(reqs)}", prompts_equal=f"{prompts_equal}/{len(reqs)}"))
                print(json.dumps(rows[-1]), flush=True)
    print("\n| head | chain | transformers tok/s | vLLM tok/s (with start) | vLLM tok/s (generation) | vLLM start s "
          "| vLLM / transformers | replay s | replay share (transformers) | replay share (vLLM) | ids equal "
          "| prompts equal |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['head']} | {r['chain']} | {r['hf_tok_s']:.0f} | {r['vllm_tok_s']:.0f} | {r['vllm_gen_tok_s']:.0f} "
              f"| {r['vllm_start_s']:.0f} | {r['vllm_gen_tok_s'] / r['hf_tok_s']:.1f}x | {r['replay_s']:.1f} "
              f"| {100 * r['replay_share_hf']:.0f} % | {100 * r['replay_share_vllm']:.0f} % | {r['ids_equal']} "
              f"| {r['prompts_equal']} |")


if __name__ == "__main__":
    main()
