#!/usr/bin/env python3
"""The fixed load: token-id prompts against an OpenAI-compatible /v1/completions (vLLM) or
SGLang's native /generate (--api sglang).

No tokenizer is needed (the engine runs with --skip-tokenizer-init): prompts are lists of
random token ids (distinct per request, so no prefix-cache hits), ignore_eos with
min_tokens = max_tokens fixes the output length, and streaming gives the time to first token.

SGLang 0.5.14 with --skip-tokenizer-init cannot serve /v1/completions: its streaming handler
reads content["text"] (entrypoints/openai/serving_completions.py), which an output without a
tokenizer lacks (managers/tokenizer_manager.py sends output_ids only), so every stream is one
error chunk. /generate takes input_ids and sampling_params (max_new_tokens, min_new_tokens,
ignore_eos) and streams `data: {"output_ids": [...all so far], "meta_info": {"completion_tokens":
n, ...}}` chunks, then `data: [DONE]` (entrypoints/http_server.py generate_request). The timing
is the same: TTFT is the first chunk that carries a token, the tokens are the engine's count.

Levels (fixed, the same for every plan and baseline):
  warm-up   4 requests,   256 in /  16 out, concurrency 4, then (from round 3 on) 128 requests,
            1024 in / 16 out, all at once: kernels compiled lazily for large batches are built
            before the timed levels (not reported)
  c1        3 requests,  1024 in / 256 out, one at a time
  c32      32 requests,  1024 in / 256 out, all at once
  c128    128 requests,  1024 in / 256 out, all at once

Reported per level: generated tokens / wall second, TTFT mean / p50 / p90 / max, mean time per
output token after the first (TPOT), and the errors. Standard library only (threads).

usage: load.py --port 8000 [--host 127.0.0.1] [--out load.json] [--api-key KEY] [--quick] [--api openai|sglang]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

LEVELS = [  # (name, concurrency, requests, input tokens, output tokens)
    ("c1", 1, 3, 1024, 256),
    ("c32", 32, 32, 1024, 256),
    ("c128", 128, 128, 1024, 256),
]
WARMUP = ("warmup", 4, 4, 256, 16)
WARMUP_LARGE = ("warmup-large", 128, 128, 1024, 16)
VOCAB = (1000, 200000)   # ids inside the 248,320-token vocabulary, clear of special tokens


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _request(api: str, model: str, prompt: list[int], n_out: int) -> tuple[str, str]:
    """(path, JSON body) of one streaming request of fixed output length."""
    if api == "sglang":
        return "/generate", json.dumps({"input_ids": prompt, "stream": True, "sampling_params": {
            "max_new_tokens": n_out, "ignore_eos": True, "temperature": 0.0}})
    return "/v1/completions", json.dumps({"model": model, "prompt": prompt, "max_tokens": n_out, "min_tokens": n_out,
                                          "ignore_eos": True, "temperature": 0.0, "stream": True,
                                          "stream_options": {"include_usage": True}})


def _chunk_error(d: dict) -> str | None:
    """The error a 200 stream carries in a chunk (SGLang's OpenAI and native servers both do)."""
    e = d.get("error") if isinstance(d.get("error"), (dict, str)) else None
    if d.get("object") == "error" or e:
        msg = d.get("message") or (e.get("message") if isinstance(e, dict) else e)
        return f"stream error: {str(msg)[:250]}"
    return None


def _one(host: str, port: int, model: str, prompt: list[int], n_out: int, headers: dict, timeout: float,
         api: str = "openai") -> dict:
    path, body = _request(api, model, prompt, n_out)
    t0 = time.perf_counter()
    ttft = None
    chunks = 0
    usage = None
    meta = None
    err = None
    try:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **headers})
        r = conn.getresponse()
        if r.status != 200:
            err = f"HTTP {r.status}: {r.read()[:300]!r}"
        elif "event-stream" not in (r.getheader("Content-Type") or ""):
            d = json.loads(r.read() or b"{}")          # an engine that ignores stream=True
            usage, meta = d.get("usage"), d.get("meta_info")
            err = _chunk_error(d)
            ttft = time.perf_counter() - t0
            chunks = 1
        else:
            while True:
                line = r.readline()
                if not line:
                    break
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                d = json.loads(data)
                err = err or _chunk_error(d)
                if d.get("usage"):
                    usage = d["usage"]
                if d.get("meta_info"):
                    meta = d["meta_info"]
                if d.get("choices") or d.get("output_ids"):
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    chunks += 1
        conn.close()
    except Exception as e:  # noqa: BLE001 - a failed request is a result, not a crash
        err = f"{type(e).__name__}: {e}"[:300]
    latency = time.perf_counter() - t0
    tokens = ((meta or {}).get("completion_tokens") if api == "sglang" else (usage or {}).get("completion_tokens")) or 0
    out = {"ttft": ttft, "latency": latency, "tokens": tokens, "chunks": chunks, "error": err}
    if (meta or {}).get("spec_accept_length") is not None:
        out["accept_length"] = meta["spec_accept_length"]
    return out


def run_level(host: str, port: int, model: str, level: tuple, headers: dict, seed: int, timeout: float,
              api: str = "openai") -> dict:
    name, conc, n_req, n_in, n_out = level
    rng = random.Random(seed)
    prompts = [[rng.randrange(*VOCAB) for _ in range(n_in)] for _ in range(n_req)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=conc) as pool:
        outs = list(pool.map(lambda p: _one(host, port, model, p, n_out, headers, timeout, api), prompts))
    wall = time.perf_counter() - t0
    ok = [o for o in outs if not o["error"]]
    toks = sum(o["tokens"] for o in ok)
    ttfts = [o["ttft"] for o in ok if o["ttft"] is not None]
    tpots = [(o["latency"] - o["ttft"]) / (o["tokens"] - 1) for o in ok
             if o["ttft"] is not None and o["tokens"] > 1]
    r = {"concurrency": conc, "requests": n_req, "input_tokens": n_in, "output_tokens": n_out,
         "completed": len(ok), "errors": [o["error"] for o in outs if o["error"]][:3],
         "seconds": round(wall, 3), "completion_tokens": toks,
         "tok_per_s": round(toks / wall, 1) if wall > 0 else None,
         "ttft_mean_s": round(statistics.mean(ttfts), 4) if ttfts else None,
         "ttft_p50_s": _pct(ttfts, 0.5), "ttft_p90_s": _pct(ttfts, 0.9), "ttft_max_s": max(ttfts) if ttfts else None,
         "tpot_mean_s": round(statistics.mean(tpots), 5) if tpots else None}
    for k in ("ttft_p50_s", "ttft_p90_s", "ttft_max_s"):
        if r[k] is not None:
            r[k] = round(r[k], 4)
    accepted = [o["accept_length"] for o in ok if o.get("accept_length") is not None]
    if accepted:     # SGLang: tokens per verify step, bonus token included (what MTP achieved)
        r["spec_accept_length_mean"] = round(statistics.mean(accepted), 3)
    return r


def served_model(host: str, port: int, headers: dict, api: str = "openai") -> str:
    """The model name requests carry (OpenAI), or the path SGLang serves (/model_info; /generate
    names no model)."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", "/model_info" if api == "sglang" else "/v1/models", headers=headers)
    d = json.loads(conn.getresponse().read())
    return d["model_path"] if api == "sglang" else d["data"][0]["id"]


def run(args) -> dict:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    api = getattr(args, "api", "openai")
    model = served_model(args.host, args.port, headers, api)
    levels = LEVELS
    warm = WARMUP
    if args.quick:
        levels = [(n, c, min(r, 4), 64, 8) for n, c, r, _, _ in LEVELS]
        warm = ("warmup", 1, 1, 16, 4)
    res = {"model": model, "api": api, "levels": {}}
    t0 = time.perf_counter()
    res["warmup"] = run_level(args.host, args.port, model, warm, headers, 7, args.timeout, api)
    if not args.quick:
        res["warmup_large"] = run_level(args.host, args.port, model, WARMUP_LARGE, headers, 8, args.timeout, api)
    res["warmup_seconds"] = round(time.perf_counter() - t0, 2)
    print(f"warm-up {res['warmup_seconds']} s", flush=True)
    for i, lv in enumerate(levels):
        r = run_level(args.host, args.port, model, lv, headers, 1000 + i, args.timeout, api)
        res["levels"][lv[0]] = r
        print(f"{lv[0]}: {r['completion_tokens']} tokens in {r['seconds']} s = {r['tok_per_s']} tok/s, "
              f"TTFT p50 {r['ttft_p50_s']} s, TPOT {r['tpot_mean_s']} s, errors {len(r['errors'])}", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds one request may take")
    ap.add_argument("--quick", action="store_true", help="tiny load, for rehearsals against a fake engine")
    ap.add_argument("--api", choices=("openai", "sglang"), default="openai",
                    help="openai: /v1/completions (vLLM); sglang: SGLang's native /generate with input_ids")
    args = ap.parse_args(argv)
    res = run(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
