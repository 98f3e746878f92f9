"""Generate with vLLM's offline API: requests in, one output line per request out.

Run by the generate stage (``peekaboo.engines.run_worker``) with the
interpreter of vLLM's own environment, by path and isolated (``python -I``):
that environment has vLLM's torch and transformers, not the project's, so this
module imports nothing but the standard library and vLLM (and Pillow, which
vLLM needs). The project renders the prompts and checks the prompt ids vLLM
reports; this module only generates.

Input, one JSON object per line: ``id``, ``prompt`` (the rendered chat
prompt, one image placeholder per image), ``images`` (paths), ``max_tokens``,
``temperature``, ``top_p``, ``top_k``, ``seed``. Output, one line per
request: ``id``, ``prompt_token_ids``, ``token_ids`` (the stop token
included, as vLLM gives it), ``text``, ``finish_reason``, ``logprobs`` (the
sampled tokens'), or ``id`` and ``error``. A request that fails (an image that
cannot be read, a prompt vLLM rejects) is an error line; the others go on. An
engine that cannot start (an architecture vLLM does not support, no memory)
or dies while generating (a head size its kernels do not take) exits with status 3 and a line
``engine_vllm: <reason>`` on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _say(message: str) -> None:
    print(f"engine_vllm: {message}", file=sys.stderr, flush=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def read_requests(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_images(request: dict):
    """The request's images as RGB PIL images, or the reason one cannot be read."""
    from PIL import Image

    images = []
    for k, path in enumerate(request.get("images") or []):
        try:
            with Image.open(path) as img:
                img.load()
                images.append(img.convert("RGB"))
        except Exception as exc:  # noqa: BLE001 - an unreadable image fails its request only
            return f"image {k} ({path}) could not be read: {_first_line(exc)}"
    return images


def sampled_logprobs(completion) -> list[float] | None:
    """The log-probability of each generated token (vLLM returns the sampled token's with logprobs=0)."""
    if completion.logprobs is None:
        return None
    out = []
    for token_id, entry in zip(completion.token_ids, completion.logprobs):
        lp = entry.get(token_id) if hasattr(entry, "get") else None
        if lp is None:
            return None
        out.append(float(getattr(lp, "logprob", lp)))
    return out


def output_line(request_id: str, result) -> dict:
    completion = result.outputs[0]
    return {"id": request_id, "prompt_token_ids": [int(t) for t in result.prompt_token_ids],
            "token_ids": [int(t) for t in completion.token_ids], "text": completion.text,
            "finish_reason": completion.finish_reason, "logprobs": sampled_logprobs(completion)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--requests", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--revision", default=None)
    ap.add_argument("--trust-remote-code", action="store_true")
    ap.add_argument("--batch-invariant", action="store_true")
    args = ap.parse_args(argv)
    if args.batch_invariant:  # read when vLLM is imported: kernels whose results do not depend on the batch
        os.environ["VLLM_BATCH_INVARIANT"] = "1"
    requests = read_requests(args.requests)
    lines: dict[str, dict] = {}
    ready = []
    for r in requests:
        images = load_images(r)
        if isinstance(images, str):
            lines[r["id"]] = {"id": r["id"], "error": images}
        else:
            ready.append((r, images))
    try:
        from vllm import LLM, SamplingParams
    except Exception as exc:  # noqa: BLE001
        _say(f"vLLM cannot be imported in {sys.executable}: {_first_line(exc)}")
        return 3
    n_images = max([len(imgs) for _, imgs in ready] + [1])
    try:
        llm = LLM(model=args.model, revision=args.revision, dtype=args.dtype, seed=args.seed,
                  max_num_seqs=args.max_num_seqs, gpu_memory_utilization=args.gpu_memory_utilization,
                  max_model_len=args.max_model_len, trust_remote_code=args.trust_remote_code,
                  limit_mm_per_prompt={"image": n_images})
    except Exception as exc:  # noqa: BLE001 - unsupported architecture, no memory, ...: the whole run
        _say(f"the engine did not start: {_first_line(exc)}")
        return 3

    def prompt(r, images):
        p = {"prompt": r["prompt"]}
        if images:
            p["multi_modal_data"] = {"image": images}
        return p

    def params(r):
        return SamplingParams(max_tokens=int(r["max_tokens"]), temperature=float(r["temperature"]),
                              top_p=float(r["top_p"]), top_k=int(r["top_k"]) if int(r["top_k"]) > 0 else -1,
                              seed=int(r["seed"]), logprobs=0, skip_special_tokens=False)

    def run(batch):
        return llm.generate([prompt(r, imgs) for r, imgs in batch], [params(r) for r, _ in batch], use_tqdm=False)

    started = time.perf_counter()
    try:
        results = run(ready) if ready else []
        for (r, _), result in zip(ready, results):
            lines[r["id"]] = output_line(r["id"], result)
    except Exception as exc:  # noqa: BLE001 - one request vLLM rejects: run them one by one to find it
        if type(exc).__name__ == "EngineDeadError":  # the engine itself failed (e.g. a head size its kernels lack)
            _say(f"the engine died while generating: {_first_line(exc)}")
            return 3
        _say(f"a batch of {len(ready)} failed ({_first_line(exc)}): running each request alone")
        for r, imgs in ready:
            try:
                lines[r["id"]] = output_line(r["id"], run([(r, imgs)])[0])
            except Exception as one:  # noqa: BLE001
                if type(one).__name__ == "EngineDeadError":
                    _say(f"the engine died while generating: {_first_line(one)}")
                    return 3
                lines[r["id"]] = {"id": r["id"], "error": _first_line(one)}
    n_tokens = sum(len(x.get("token_ids") or []) for x in lines.values())
    took = max(time.perf_counter() - started, 1e-9)
    _say(f"generated {n_tokens} tokens for {len(ready)} requests in {took:.2f} s ({n_tokens / took:.1f} tokens/s)")
    tmp = args.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in requests:
            fh.write(json.dumps(lines[r["id"]], ensure_ascii=False) + "\n")
    os.replace(tmp, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
