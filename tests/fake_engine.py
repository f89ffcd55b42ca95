#!/usr/bin/env python3
"""A stand-in for `vllm serve` and `python -m sglang.launch_server`, for tests without GPUs.

It parses the argv the way the real engine would (flags outside the real version's flag set
are "unrecognized arguments", read from profiles/flags/), writes the real engine's memory
lines to its log, serves /health, /v1/models, /v1/chat/completions and /v1/completions on the
address it was given, and forwards nothing: like vLLM it runs an "EngineCore" child process,
so tests can check that no orphan remains.

FAKE_ENGINE_MODE picks a behaviour: ok (default), slow (takes FAKE_ENGINE_DELAY seconds to
become healthy), and the failures a launcher must recognise: kv-too-small, oom-profile,
no-cache-blocks, mamba-blocks, mtp-keyerror, marlin, unsupported-arch, crash (exits without a
known signature), hang (never healthy). And fit: honours the memory the argv asks for — fails
as kv-too-small when --max-model-len exceeds FAKE_ENGINE_FIT_LEN (169184), as mamba-blocks when
--max-num-seqs exceeds FAKE_ENGINE_MAMBA_BLOCKS (135), runs out of memory after loading the
weights when --gpu-memory-utilization exceeds FAKE_ENGINE_FIT_UTILIZATION (1), serves otherwise —
for retry loops.
FAKE_ENGINE_WEIGHTS_GIB sets the weights it reports loading (default 18.09).
As vLLM 0.26 does, it stops at start when --skip-tokenizer-init comes with a reasoning or
tool-call parser. FAKE_ENGINE_TOKEN_DELAY spaces the streamed tokens (seconds). FAKE_ENGINE_IGNORE_SIGTERM=1 makes the API server ignore SIGTERM and SIGINT, and its EngineCore
SIGTERM (a stuck shutdown); FAKE_ENGINE_CORE_STUCK=1 only the EngineCore (the API server exits and
leaves a worker behind in its process group). FAKE_ENGINE_NO_TOKENS=1 answers chat completions
with no content; FAKE_ENGINE_ECHO=1 prints its environment and argv to its log, as an engine's
debug output may. FAKE_ENGINE_LISTEN_FROM=PATH takes its listening socket from the Unix socket at
PATH (tests.fake_engine.PortHandoff), so no other process can take the port in between.

SGLang mode (argv `-m sglang.launch_server ...`, or FAKE_ENGINE_KIND=sglang): flags are checked
as SGLang's argparse does (an unambiguous prefix such as `--tp` is its flag), the log carries
SGLang 0.5.14's own lines (server_args=, Load weight begin/end, Mamba/KV Cache is allocated,
Capture ... CUDA graph end, the scheduler's max_total_num_tokens=... line; an MTP start loads
and pools a draft too) with figures that follow the argv (--mem-fraction-static,
--max-running-requests, --context-length, --kv-cache-dtype, --speculative-algorithm), and the
server answers what SGLang answers: /health, /model_info, /server_info, /generate with
input_ids (streaming output_ids and meta_info.completion_tokens, exactly max_new_tokens with
ignore_eos), /v1/models; with --skip-tokenizer-init, text prompts are refused and
/v1/completions streams one error chunk, as SGLang 0.5.14 does (see benchmarks/gpu/load.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MODE = os.environ.get("FAKE_ENGINE_MODE", "ok")
VERSION = os.environ.get("FAKE_ENGINE_VERSION", "0.32.0")
ROOT = Path(__file__).resolve().parent.parent


def log(msg: str, who: str = "APIServer") -> None:
    print(f"({who} pid={os.getpid()}) INFO {time.strftime('%m-%d %H:%M:%S')} [fake.py:1] {msg}", flush=True)


def known_flags(engine: str) -> set[str] | None:
    path = ROOT / "profiles" / "flags" / f"{engine}-{VERSION}.txt"
    if not path.exists():
        return None
    return {line.split(" ")[0] for line in path.read_text().splitlines() if line and not line.startswith("#")}


def parse(argv: list[str]) -> tuple[str, dict]:
    """('vllm' | 'sglang', {flag: value}) — refusing flags the real version lacks."""
    engine = "vllm"
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    if argv[:2] == ["-m", "sglang.launch_server"]:
        engine, argv = "sglang", argv[2:]
    if os.environ.get("FAKE_ENGINE_KIND") == "sglang":
        engine = "sglang"
    opts: dict[str, str | bool] = {}
    flags = known_flags(engine)
    i = 0
    bad = []
    while i < len(argv):
        a = argv[i]
        if not a.startswith("-"):
            opts.setdefault("model", a)
            i += 1
            continue
        key, eq, val = a.partition("=")
        if engine == "sglang" and flags is not None and key not in flags:
            # SGLang's parser is plain argparse (allow_abbrev): a unique prefix names its flag
            whole = [f for f in flags if f.startswith(key)]
            key = whole[0] if len(whole) == 1 else key
        if flags is not None and key not in flags:
            bad.append(a)
        if eq:
            opts[key] = val
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            opts[key] = argv[i + 1]
            i += 1
        else:
            opts[key] = True
        i += 1
    if bad:
        prog = "vllm serve" if engine == "vllm" else "launch_server.py"
        print(f"usage: {prog} [options]", file=sys.stderr)
        print(f"{prog}: error: unrecognized arguments: {' '.join(bad)}", file=sys.stderr, flush=True)
        sys.exit(2)
    return engine, opts


FAILURES = {
    "kv-too-small": "ValueError: To serve at least one request with the model's max seq len ({len}), (5.03 GiB KV cache "
                    "is needed, which is larger than the available KV cache memory (3.26 GiB). Based on the available "
                    "memory, the estimated maximum model length is 169184. Try increasing `gpu_memory_utilization` or "
                    "decreasing `max_model_len` when initializing the engine.",
    "oom-profile": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                   "of 23.52 GiB of which 1.06 GiB is free.",
    "no-cache-blocks": "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` "
                       "when initializing the engine.",
    "mamba-blocks": "ValueError: max_num_seqs (256) exceeds available Mamba cache blocks (135).",
    "mtp-keyerror": "KeyError: 'experts.w2_weight'",
    "marlin": "RuntimeError: CUDA error: an illegal memory access was encountered (in gptq_marlin_moe_gemm, Marlin MoE)",
    "unsupported-arch": "torch.AcceleratorError: CUDA error: no kernel image is available for execution on the device",
    "crash": "Segmentation fault (core dumped)",
}


def engine_core(ready_fd: int) -> None:
    """The child process real vLLM starts; it must die with its parent's process group."""
    stuck = "1" in (os.environ.get("FAKE_ENGINE_IGNORE_SIGTERM"), os.environ.get("FAKE_ENGINE_CORE_STUCK"))
    signal.signal(signal.SIGTERM, signal.SIG_IGN if stuck else (lambda *a: sys.exit(0)))
    os.write(ready_fd, b"1")        # its signal handling is in place before the server says ready
    os.close(ready_fd)
    while True:
        time.sleep(0.2)


class Handler(BaseHTTPRequestHandler):
    server_version = "fake-engine"
    ready = threading.Event()
    name = "model"
    api_key: str | None = None
    max_len = 0
    engine = "vllm"
    model_path = "model"
    skip_tokenizer = False
    server_args: dict = {}

    def log_message(self, fmt, *args):  # one access line, like uvicorn
        print(f"INFO:     {self.client_address[0]} - \"{self.requestline}\" {args[1] if len(args) > 1 else ''}", flush=True)

    def _send(self, code: int, body: dict | None = None, stream: list[str] | None = None) -> None:
        self.send_response(code)
        if stream is not None:
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for chunk in stream:
                self.wfile.write(f"data: {chunk}\n\n".encode())
                self.wfile.flush()
                time.sleep(float(os.environ.get("FAKE_ENGINE_TOKEN_DELAY", "0.01")))
            self.wfile.write(b"data: [DONE]\n\n")
            return
        data = json.dumps(body or {}).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.api_key and self.headers.get("Authorization") != f"Bearer {self.api_key}":
            self._send(401, {"error": "unauthorized"})
            return False
        return True

    def do_GET(self):
        if self.path == "/health":
            return self._send(200 if self.ready.is_set() else 503, {})
        if not self._authorized():
            return
        if self.path == "/v1/models" and self.ready.is_set():
            return self._send(200, {"object": "list", "data": [
                {"id": self.name, "object": "model", "max_model_len": self.max_len}]})
        if self.engine == "sglang" and self.path == "/model_info":
            return self._send(200, {"model_path": self.model_path, "is_generation": True,
                                    "has_image_understanding": True, "model_type": "qwen3_5_moe"})
        if self.engine == "sglang" and self.path == "/server_info" and self.ready.is_set():
            return self._send(200, {**self.server_args, "version": VERSION, "internal_states": []})
        self._send(404, {"error": "not found"})

    def _sglang_generate(self, body: dict):
        """SGLang's native /generate: input_ids in, output_ids out (cumulative when streaming)."""
        if body.get("input_ids") is None:
            if self.skip_tokenizer:      # tokenizer_manager.py, the message SGLang 0.5.14 answers with
                return self._send(400, {"error": {"message": "The engine initialized with skip_tokenizer_init=True "
                                                  "cannot accept text prompts. Please provide input_ids or "
                                                  "re-initialize the engine with skip_tokenizer_init=False.",
                                                  "type": "BadRequest", "code": 400}})
            prompt_tokens = 9
        else:
            prompt_tokens = len(body["input_ids"])
        sp = body.get("sampling_params") or {}
        n = int(sp.get("max_new_tokens") or 128)
        if not sp.get("ignore_eos"):
            n = max(min(n, 6), min(n, int(sp.get("min_new_tokens") or 0)))   # "EOS" after six tokens

        def chunk(k: int) -> str:
            done = k == n
            return json.dumps({"output_ids": [100] * k, "meta_info": {
                "id": "fake", "prompt_tokens": prompt_tokens, "completion_tokens": k, "cached_tokens": 0,
                "finish_reason": {"type": "length", "length": n} if done else None}})
        if body.get("stream"):
            return self._send(200, stream=[chunk(k) for k in range(1, n + 1)])
        return self._send(200, json.loads(chunk(n)))

    def do_POST(self):
        if not self._authorized():
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if self.engine == "sglang" and self.path == "/generate":
            return self._sglang_generate(body)
        if self.engine == "sglang" and self.skip_tokenizer and self.path == "/v1/completions":
            # SGLang 0.5.14's completions handler reads content["text"], which outputs without a
            # tokenizer lack: the stream is one error chunk (serving_completions.py)
            if body.get("stream"):
                return self._send(200, stream=[json.dumps({"object": "error", "message": "'text'",
                                                           "type": "BadRequestError", "param": None, "code": 400})])
            return self._send(400, {"object": "error", "message": "'text'", "type": "BadRequestError", "code": 400})
        if body.get("model") != self.name:
            return self._send(404, {"error": f"model {body.get('model')!r} not served"})
        words = ["Hello", " from", " the", " fake", " engine", "."]
        if os.environ.get("FAKE_ENGINE_NO_TOKENS") == "1":
            words = []
        n = min(int(body.get("max_tokens") or 16), len(words))
        if self.path == "/v1/chat/completions":
            if body.get("stream"):
                chunks = [json.dumps({"choices": [{"delta": {"content": w}, "index": 0}]}) for w in words[:n]]
                chunks.append(json.dumps({"choices": [{"delta": {}, "index": 0, "finish_reason": "length"}],
                                          "usage": {"prompt_tokens": 9, "completion_tokens": n}}))
                return self._send(200, stream=chunks)
            return self._send(200, {"choices": [{"message": {"role": "assistant", "content": "".join(words[:n])}}],
                                    "usage": {"prompt_tokens": 9, "completion_tokens": n}})
        if self.path == "/v1/completions":
            return self._send(200, {"choices": [{"text": "".join(words[:n])}], "usage": {"completion_tokens": n}})
        self._send(404, {"error": "not found"})


def receive_listener(path: str) -> socket.socket:
    """The listening TCP socket a PortHandoff passes over the Unix socket at `path`."""
    with socket.socket(socket.AF_UNIX) as u:
        u.connect(path)
        _, fds, _, _ = socket.recv_fds(u, 16, 1)
    return socket.socket(fileno=fds[0])


class PortHandoff:
    """A listening socket on 127.0.0.1:0 that the fake engine takes over (FAKE_ENGINE_LISTEN_FROM).

    The port is never free between the test choosing it and the engine serving on it, so no
    other process on a busy box can take it. Launch with check=False: the port is in use, by us.
    """

    def __init__(self):
        import tempfile
        import threading as _t

        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self._dir = tempfile.mkdtemp(prefix="qwenplan-port-")      # short: Unix socket paths are
        self.path = os.path.join(self._dir, "handoff.sock")        # limited to 108 bytes
        self._unix = socket.socket(socket.AF_UNIX)
        self._unix.bind(self.path)
        self._unix.listen(8)
        _t.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._unix.accept()
            except OSError:
                return
            with conn:
                socket.send_fds(conn, [b"x"], [self.listener.fileno()])

    @property
    def env(self) -> dict[str, str]:
        return {"FAKE_ENGINE_LISTEN_FROM": self.path}

    def close(self) -> None:
        try:
            self._unix.shutdown(socket.SHUT_RDWR)     # wakes the accept() of _serve
        except OSError:
            pass
        self._unix.close()
        self.listener.close()
        for leftover in (self.path, self._dir):
            try:
                (os.unlink if leftover == self.path else os.rmdir)(leftover)
            except OSError:
                pass

    def __enter__(self) -> "PortHandoff":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sglang_log(msg: str, rank: bool = True) -> None:
    """SGLang's log format (utils/common.py configure_logger: "[%(asctime)s TP0] %(message)s")."""
    print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}{' TP0' if rank else ''}] {msg}", flush=True)


def sglang_start(opts: dict) -> dict:
    """Log SGLang 0.5.14's memory lines for this argv (its format strings; the figures are a stand-in
    that follows the argv, not SGLang's arithmetic) and return the arguments it resolved."""
    model = str(opts.get("--model-path") or "")
    fp8 = "fp8" in model.lower()
    fraction = float(opts.get("--mem-fraction-static") or 0.835)
    context = int(opts.get("--context-length") or 262144)
    asked = int(opts["--max-running-requests"]) if opts.get("--max-running-requests") else None
    chunk = int(opts.get("--chunked-prefill-size") or 8192)
    mtp = bool(opts.get("--speculative-algorithm"))
    kv_dtype = "torch.float8_e4m3fn" if str(opts.get("--kv-cache-dtype", "auto")).startswith("fp8") else "torch.bfloat16"
    args = {"model_path": model, "load_format": opts.get("--load-format", "auto"), "context_length": context,
            "mem_fraction_static": fraction, "max_running_requests": asked, "chunked_prefill_size": chunk,
            "speculative_algorithm": opts.get("--speculative-algorithm"), "skip_tokenizer_init": bool(
                opts.get("--skip-tokenizer-init")), "attention_backend": opts.get("--attention-backend")}
    sglang_log("server_args=ServerArgs(" + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")", rank=False)
    sglang_log("Init torch distributed begin.")
    sglang_log("Init torch distributed ends. elapsed=0.35 s, mem usage=0.00 GB")
    pre, weights, draft = 139.27, (34.21 if fp8 else 66.93), (0.82 if fp8 else 1.58)
    sglang_log(f"Load weight begin. avail mem={pre:.2f} GB")
    sglang_log(f"Load weight end. elapsed=14.02 s, type=Qwen3_5MoeForConditionalGeneration, "
               f"{'quant=fp8, ' if fp8 else ''}avail mem={pre - weights:.2f} GB, mem usage={weights:.2f} GB.")
    avail = pre - weights
    if mtp:
        sglang_log(f"Load weight begin. avail mem={avail:.2f} GB")
        sglang_log(f"Load weight end. elapsed=1.87 s, type=Qwen3_5ForCausalLMMTP, avail mem={avail - draft:.2f} GB, "
                   f"mem usage={draft:.2f} GB.")
        avail -= draft
    pool = pre * fraction - weights - (draft if mtp else 0)
    slots = int(pool * 0.9 / 1.9 * (1 << 30) // 64389120)
    state = slots * 64389120 / (1 << 30)
    per_token = 10240 if kv_dtype.endswith("fn") else 20480
    tokens = int((pool - state) * (1 << 30) // per_token)
    requests = min(asked or 4096, tokens // 2, slots // (5 if mtp else 1))
    half = tokens * per_token / 2 / (1 << 30)
    sglang_log(f"Mamba Cache is allocated. max_mamba_cache_size: {slots}, conv_state size: {state * 0.023:.2f}GB, "
               f"ssm_state size: {state * 0.977:.2f}GB " + (f"intermediate_ssm_state_cache size: {state * 0.6:.2f}GB "
                                                             f"intermediate_conv_window_cache size: 0.19GB " if mtp else ""))
    sglang_log(f"KV Cache is allocated. dtype: {kv_dtype}, #tokens: {tokens}, K size: {half:.2f} GB, V size: {half:.2f} GB")
    avail -= pool
    sglang_log(f"Memory pool end. avail mem={avail:.2f} GB")
    if mtp:
        sglang_log(f"KV Cache is allocated. dtype: {kv_dtype}, #tokens: {tokens}, K size: {half / 10:.2f} GB, "
                   f"V size: {half / 10:.2f} GB")
    capture = ["target verify", "draft decode", "draft extend"] if mtp else ["target decode"]
    for what, gib in zip(capture, (0.61, 0.12, 0.09)):
        sglang_log(f"Capture {what} CUDA graph begin. backend=full, num_tokens_per_bs=1, bs=[1, 2, 4, 8], "
                   f"avail mem={avail:.2f} GB")
        avail -= gib
        sglang_log(f"Capture {what} CUDA graph end. elapsed=6.20 s, mem usage={gib:.2f} GB, avail mem={avail:.2f} GB.")
    sglang_log(f"max_total_num_tokens={tokens}, chunked_prefill_size={chunk}, max_prefill_tokens=16384, "
               f"max_running_requests={requests}, context_len={context}, available_gpu_mem={avail:.2f} GB")
    return {**args, "max_running_requests": requests, "max_total_num_tokens": tokens}


def main() -> None:
    if sys.argv[1:2] == ["--engine-core"]:
        return engine_core(int(sys.argv[2]))
    engine, opts = parse(sys.argv[1:])
    model = opts.get("model") or opts.get("--model-path") or opts.get("--model")
    Handler.name = str((opts.get("--served-model-name") or model or "model"))
    Handler.api_key = opts.get("--api-key") or os.environ.get("VLLM_API_KEY") or None
    Handler.max_len = int(opts.get("--max-model-len") or opts.get("--context-length") or 262144)
    host = str(opts.get("--host") or ("127.0.0.1" if engine == "sglang" else "0.0.0.0"))
    port = int(opts.get("--port") or (30000 if engine == "sglang" else 8000))
    Handler.engine = engine
    Handler.model_path = str(model or "")
    Handler.skip_tokenizer = bool(opts.get("--skip-tokenizer-init"))
    if engine == "vllm":
        log(f"vLLM API server version {VERSION}")
        log(f"non-default args: {json.dumps({k: v for k, v in opts.items()})}")
    else:   # launch_server.py warns so on stderr; SGLang logs no version of its own
        print("UserWarning: 'python -m sglang.launch_server' is still supported, but 'sglang serve' is the "
              "recommended entrypoint.", file=sys.stderr, flush=True)
    Path(os.environ.get("FAKE_ENGINE_ARGV_FILE", "/dev/null")).write_text(json.dumps(sys.argv[1:]))
    Path(os.environ.get("FAKE_ENGINE_ENV_FILE", "/dev/null")).write_text(json.dumps(dict(os.environ)))
    if os.environ.get("FAKE_ENGINE_ECHO") == "1":
        print(f"argv: {sys.argv[1:]}", flush=True)
        for k, v in sorted(os.environ.items()):
            print(f"environ: {k}={v}", flush=True)
    ready_r, ready_w = os.pipe()
    core = subprocess.Popen([sys.executable, __file__, "--engine-core", str(ready_w)], pass_fds=(ready_w,))
    os.close(ready_w)
    os.read(ready_r, 1)                         # until the core's signal handling is in place
    os.close(ready_r)
    pids_file = os.environ.get("FAKE_ENGINE_PIDS_FILE")
    if pids_file:                               # atomically: a test may be polling for it
        Path(pids_file + ".tmp").write_text(json.dumps([os.getpid(), core.pid]))
        os.replace(pids_file + ".tmp", pids_file)

    def stop(*_):
        core.terminate()
        log("Shutting down", "APIServer")
        os._exit(0)

    if os.environ.get("FAKE_ENGINE_IGNORE_SIGTERM") == "1":
        stop = signal.SIG_IGN  # noqa: F811 — only SIGKILL ends it now
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    weights = os.environ.get("FAKE_ENGINE_WEIGHTS_GIB", "18.09")   # what the checkpoint took
    if engine == "vllm":
        log(f"Model loading took {weights} GiB memory and 12.5 seconds", "EngineCore")
        log("Setting attention block size to 1072 tokens to ensure that attention page size is >= mamba page size.",
            "EngineCore")
    failure = FAILURES.get(MODE)
    if MODE == "fit":
        fit_len = int(os.environ.get("FAKE_ENGINE_FIT_LEN", "169184"))
        blocks = int(os.environ.get("FAKE_ENGINE_MAMBA_BLOCKS", "135"))
        seqs = int(opts.get("--max-num-seqs") or opts.get("--max-running-requests") or 256)
        fraction = float(opts.get("--gpu-memory-utilization") or 0.9)
        if fraction > float(os.environ.get("FAKE_ENGINE_FIT_UTILIZATION", "1")):
            failure = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB."
        elif Handler.max_len > fit_len:
            failure = FAILURES["kv-too-small"].replace("169184", str(fit_len))
        elif seqs > blocks:
            failure = f"ValueError: max_num_seqs ({seqs}) exceeds available Mamba cache blocks ({blocks})."
    if failure:
        time.sleep(0.3)
        print(f"(EngineCore pid={core.pid}) ERROR {failure.format(len=Handler.max_len)}", flush=True)
        core.terminate()
        sys.exit(1)
    if engine == "sglang":
        Handler.server_args = sglang_start(opts)
    else:
        log("Available KV cache memory: 2.05 GiB", "EngineCore")
        log("GPU KV cache size: 131,072 tokens", "EngineCore")
        log(f"Maximum concurrency for {Handler.max_len:,} tokens per request: 2.00x", "EngineCore")
    if engine == "vllm" and opts.get("--skip-tokenizer-init") and (
            opts.get("--reasoning-parser") or opts.get("--tool-call-parser")):
        # vLLM 0.26 builds the parsers on the tokenizer's vocabulary when the API server starts
        print(f"(APIServer pid={os.getpid()}) ERROR Traceback (most recent call last):", flush=True)
        print(f"(APIServer pid={os.getpid()}) ERROR AttributeError: 'NoneType' object has no attribute 'get_vocab'",
              flush=True)
        core.terminate()
        sys.exit(1)
    handoff = os.environ.get("FAKE_ENGINE_LISTEN_FROM")
    if handoff:
        server = ThreadingHTTPServer((host, port), Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = receive_listener(handoff)
    else:
        server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    if engine == "vllm":
        log(f"Starting vLLM server on http://{host}:{port}")
    if MODE == "hang":
        while True:
            time.sleep(1)
    time.sleep(float(os.environ.get("FAKE_ENGINE_DELAY", "0.5")))
    Handler.ready.set()
    if engine == "vllm":
        log("Application startup complete.")
    else:
        sglang_log("The server is fired up and ready to roll!", rank=False)
    while core.poll() is None:
        time.sleep(0.2)


if __name__ == "__main__":
    main()
