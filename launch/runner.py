"""Running the engine: checks first, then the child process, its log, readiness, smoke test, stop.

The engine runs in its own process group (start_new_session), so Ctrl-C in the terminal reaches
only qwenplan, which on SIGINT, SIGTERM or SIGHUP sends SIGTERM to the whole group — the engine
and the workers it spawned (vLLM's EngineCore, tensor-parallel workers) — then kills the group
after a grace period. No engine process outlives qwenplan, short of qwenplan itself being
SIGKILLed.

Readiness is staged the way an OpenAI-compatible server becomes usable: the process is alive,
`/health` answers 200, `/v1/models` lists the served name, one short streamed chat completion
comes back (time to first token and tokens/s are measured on it).

Nothing here uses a shell; the API key goes only into the Authorization header and is scrubbed
from every log line shown or written.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from qwenplan.launch.safe_text import secret_name as secret_env   # credentials by name, never shown
from qwenplan.planner.errors import QwenplanError

STAGES = ("spawned", "alive", "health", "models", "smoke", "ready")
SMOKE_PROMPT = "Say hello"
_WAITING = {"spawned": "starting", "alive": "loading (waiting for /health)", "health": "waiting for /v1/models",
            "models": "smoke test"}


class LaunchError(QwenplanError):
    """The engine cannot be started here."""


class PortInUseError(LaunchError):
    pass


class EngineMissingError(LaunchError):
    pass


class HostMemoryError(LaunchError):
    pass


# --- checks before acting --------------------------------------------------------------------


def _connect_host(host: str | None) -> str:
    """Where to reach a server bound to `host` (a wildcard bind is reached on loopback)."""
    return {None: "127.0.0.1", "": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def port_free(host: str, port: int) -> bool:
    """Whether the engine could bind `port` on `host` now (doctor and launch ask the same).

    With SO_REUSEADDR, as the engines' servers bind (uvicorn for vLLM and SGLang, llama-server's
    httplib): a port left in TIME_WAIT by the last run is free to them, while on Linux a port
    another socket listens on still is not. Without it a rerun would be refused for a minute."""
    family = socket.AF_INET6 if ":" in (host or "") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host or "0.0.0.0", port))
        except PermissionError:
            raise LaunchError(f"port {port} needs root to bind", "pass a --port above 1023") from None
        except OSError:
            return False
    return True


def free_port_near(host: str, port: int, tries: int = 50) -> int | None:
    return next((p for p in range(port + 1, min(port + 1 + tries, 65536)) if port_free(host, p)), None)


def check_port(host: str, port: int) -> None:
    """Raise PortInUseError (with a free port to use instead) when `port` cannot be bound on `host`."""
    if not port_free(host, port):
        other = free_port_near(host, port)
        hint = f"pass --port {other}" if other else "pass another --port"
        raise PortInUseError(f"port {port} on {host or '0.0.0.0'} is already in use",
                             f"stop what holds it (ss -ltnp 'sport = :{port}') or {hint}")


def check_engine(argv: list[str], install: str | None = None) -> str:
    """The engine's program path; EngineMissingError (with the install command) when it is not there.

    `vllm serve …` needs `vllm` on PATH; `python -m sglang.launch_server …` needs the module in
    that interpreter (looked up without importing it: the engines take seconds to import).
    """
    fix = f"install it: {install}" if install else "install the engine the plan names"
    prog = shutil.which(argv[0]) if argv else None
    if not prog:
        raise EngineMissingError(f"{argv[0] if argv else 'the engine'} is not installed (not found on PATH)", fix)
    if len(argv) >= 3 and argv[1] == "-m":
        module = argv[2].split(".")[0]
        if Path(prog).resolve() == Path(sys.executable).resolve():
            found = importlib.util.find_spec(module) is not None
        else:
            code = "import importlib.util,sys; sys.exit(importlib.util.find_spec(sys.argv[1]) is None)"
            try:
                found = subprocess.run([prog, "-c", code, module], capture_output=True, timeout=60).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                found = False
        if not found:
            raise EngineMissingError(f"{module} is not installed in {prog}", fix)
    return prog


def check_ram(needed_bytes: int, available_bytes: int | None = None, what: str = "expert offload") -> None:
    """Host RAM for weights kept off the GPU (expert offload, CPU swap space)."""
    if needed_bytes <= 0:
        return
    if available_bytes is None:
        import psutil

        available_bytes = psutil.virtual_memory().available
    if available_bytes < needed_bytes:
        gib = 1 << 30
        raise HostMemoryError(f"{what} needs {needed_bytes / gib:.1f} GiB of host RAM, {available_bytes / gib:.1f} GiB "
                              "available", "close other programs, or pick a plan that keeps more on the GPU")


def preflight(argv: list[str], *, host: str, port: int, install: str | None = None, disk=(),
              ram_bytes: int = 0, ram_available: int | None = None) -> list[str]:
    """Every check before acting, in order; raises the first problem, else returns what was checked.

    `disk` is a list of (path, bytes, what), e.g. the checkpoint at the HF cache and the expert
    offload fork's disk-backed store.
    """
    from qwenplan.launch.fetch import check_disk

    done = [f"engine: {check_engine(argv, install)}"]
    check_port(host, port)
    done.append(f"port {port} on {host} is free")
    for path, need, what in disk:
        free = check_disk(path, need, what)
        done.append(f"disk for {what}: {free / (1 << 30):.0f} GiB free at {path}")
    if ram_bytes:
        check_ram(ram_bytes, ram_available)
        done.append(f"host RAM for offload: {ram_bytes / (1 << 30):.1f} GiB")
    return done


# --- results ---------------------------------------------------------------------------------


@dataclass
class Status:
    stage: str
    elapsed_s: float
    message: str
    last_line: str = ""


@dataclass
class Smoke:
    ttft_s: float
    tokens: int
    tokens_per_s: float | None
    text: str


@dataclass
class LaunchResult:
    ok: bool
    stage: str                       # the last stage reached (STAGES)
    failure: str | None              # exited | timeout | smoke | wrong-model | unauthorized | squatted | interrupted
    message: str                     # one line for people
    exit_code: int | None
    timings: dict[str, float]        # stage -> seconds after spawn
    smoke: Smoke | None
    log_path: Path
    lines: list[str] = field(default_factory=list, repr=False)   # the attempt's log, for diagnosis

    def tail(self, n: int = 30) -> list[str]:
        return self.lines[-n:]


# --- the child process -----------------------------------------------------------------------


def _secrets(api_key: str | None, env: dict[str, str]) -> list[str]:
    vals = [api_key or ""] + [v for k, v in {**os.environ, **env}.items() if secret_env(k) and len(v) >= 8]
    return sorted({v for v in vals if v and len(v) >= 4}, key=len, reverse=True)


def redact(text: str, secrets) -> str:
    for s in secrets:
        text = text.replace(s, "***")
    return text


def redact_argv(argv: list[str], secrets=()) -> list[str]:
    out, hide = [], False
    for a in argv:
        if hide:
            out.append("***")
            hide = False
            continue
        key, eq, _ = a.partition("=")
        if key in ("--api-key", "--hf-token"):
            out.append(f"{key}=***" if eq else a)
            hide = not eq
            continue
        out.append(redact(a, secrets))
    return out


def open_private_log(path: Path):
    """Append to a log only its owner can read, in folders only its owner can enter (0600/0700)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8")


def _group_alive(pgid: int) -> bool:
    """Any process of the group still running (zombies left for an init that does not reap are gone)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


class Engine:
    """The engine process group: its log, its lifetime, and the signals forwarded to it."""

    def __init__(self, argv: list[str], env: dict[str, str] | None, *, log_path: str | Path,
                 on_line: Callable[[str], None] | None = None, api_key: str | None = None,
                 forward_signals: bool = True, grace_s: float = 15.0, cwd: str | Path | None = None):
        if isinstance(argv, str) or not all(isinstance(a, str) for a in argv):
            raise TypeError("argv must be a list of strings (no shell)")
        self.argv = list(argv)
        self.env = dict(env or {})
        self.log_path = Path(log_path)
        self.on_line = on_line
        self.grace_s = grace_s
        self.secrets = _secrets(api_key, self.env)
        self.lines: deque[str] = deque(maxlen=5000)
        self.last_line = ""
        self.result: LaunchResult | None = None
        self.signalled: int | None = None     # the first signal qwenplan received while the engine ran
        self.proc: subprocess.Popen | None = None
        self._forward = forward_signals
        self._cwd = cwd
        self._old_handlers: dict[int, object] = {}
        self._pump: threading.Thread | None = None
        self._log = None
        self.started_at = 0.0
        self._wake_r = self._wake_w = -1

    # lifetime

    def start(self) -> "Engine":
        self._log = open_private_log(self.log_path)
        shown = shlex.join(redact_argv(self.argv, self.secrets))
        self._write(f"# qwenplan: {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {shown}")
        # Values only of what qwenplan sets; of the inherited environment, names alone: any of
        # them may hold a credential that no name pattern recognises (DATABASE_URL, HTTPS_PROXY).
        if self.env:
            self._write("# qwenplan: env " + " ".join(
                f"{k}={'***' if secret_env(k) else redact(v, self.secrets)}"
                for k, v in sorted(self.env.items())))
        inherited = sorted(k for k in os.environ if k not in self.env)
        if inherited:
            self._write("# qwenplan: inherited (names only) " + " ".join(inherited))
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}   # log lines as they happen
        try:
            self.proc = subprocess.Popen(self.argv, env=env, cwd=self._cwd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except FileNotFoundError:
            self._log.close()
            raise EngineMissingError(f"{self.argv[0]} is not installed (not found)", "install the engine the plan names")
        self.started_at = time.monotonic()
        # One byte here wakes wait(): written when the engine exits and by the signal handler
        # (os.write is safe in a handler; an Event's lock is not).
        self._wake_r, self._wake_w = os.pipe()
        self._write(f"# qwenplan: engine pid {self.proc.pid}")
        self._pump = threading.Thread(target=self._read_log, name="engine-log", daemon=True)
        self._pump.start()
        threading.Thread(target=self._watch, name="engine-exit", daemon=True).start()
        if self._forward and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def _watch(self) -> None:
        self.proc.wait()
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _on_signal(self, sig, frame):
        if self.signalled is None:
            self.signalled = sig
            self.send(signal.SIGTERM)   # SIGINT, SIGTERM or SIGHUP: the engine shuts down cleanly
        else:
            self.send(signal.SIGKILL)   # asked twice: do not wait
        self._wake()

    def _write(self, line: str) -> None:
        if self._log and not self._log.closed:
            self._log.write(line + "\n")
            self._log.flush()

    def _read_log(self) -> None:
        assert self.proc and self.proc.stdout
        for raw in iter(self.proc.stdout.readline, b""):
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            text = redact(text.rsplit("\r", 1)[-1], self.secrets)   # a progress bar's last state
            self._write(text)
            self.lines.append(text)
            if text.strip():
                self.last_line = text
            if self.on_line:
                try:
                    self.on_line(text)
                except Exception:
                    pass
        self.proc.stdout.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def poll(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: int) -> None:
        if self.proc:
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, grace_s: float | None = None) -> int | None:
        """Stop the whole group: SIGTERM (unless a forwarded signal already went), wait, SIGKILL."""
        if not self.proc:
            return None
        grace = self.grace_s if grace_s is None else grace_s
        if self.proc.poll() is None and self.signalled is None:
            self.send(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self._write(f"# qwenplan: no exit {grace:.0f} s after the signal: killing the engine's process group")
            self.send(signal.SIGKILL)
            self.proc.wait()
        deadline = time.monotonic() + min(grace, 5.0)
        while _group_alive(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)             # workers finishing their own shutdown
        if _group_alive(self.proc.pid):
            self.send(signal.SIGKILL)
        self._finish()
        return self.proc.returncode

    def _finish(self) -> None:
        if self._pump:
            self._pump.join(timeout=5)
        self._restore_signals()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1
        if self._log and not self._log.closed:
            self._write(f"# qwenplan: engine exited with code {self.proc.returncode}")
            self._log.close()

    def _restore_signals(self) -> None:
        for sig, old in self._old_handlers.items():
            try:
                signal.signal(sig, old)
            except (ValueError, TypeError):
                pass
        self._old_handlers.clear()

    def wait(self) -> int | None:
        """Stay in the foreground until the engine exits or qwenplan is signalled; returns its exit code."""
        import select

        while self.proc and self.proc.poll() is None and self.signalled is None:
            select.select([self._wake_r], [], [])      # blocks: woken by the exit or the signal
            os.read(self._wake_r, 64)
        return self.stop()

    def close(self) -> None:
        if self.proc and (self.proc.poll() is None or (self._log and not self._log.closed)):
            self.stop()
        self._restore_signals()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- readiness -------------------------------------------------------------------------------


def _request(host: str, port: int, method: str, path: str, *, headers=None, body=None, timeout=3.0):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)   # never through an HTTP proxy
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def squatter(engine: Engine, port: int) -> str | None:
    """None when the listener on `port` is the engine (its process or one it spawned); else who it is.

    While the engine loads (minutes), any local process may bind the planned port first; it must
    not get the API key, nor be reported as the engine being ready."""
    import psutil

    ours = {engine.pid}
    try:
        procs = [psutil.Process(engine.pid)]
        procs += procs[0].children(recursive=True)
        ours |= {p.pid for p in procs}
    except psutil.Error:
        procs = []
    # Ask our own processes first: a socket that two processes hold (a port handed over on
    # start-up) is listed system-wide under one pid only, which may be the other holder's.
    for proc in procs:
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   for c in proc.net_connections(kind="inet")):
                return None
        except psutil.Error:
            continue
    try:
        pids = {c.pid for c in psutil.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port}
    except psutil.Error as e:
        return f"a listener qwenplan cannot identify ({type(e).__name__})"
    for pid in pids:
        try:
            if pid in ours or (pid is not None and os.getpgid(pid) == engine.pid):
                return None
        except OSError:
            continue
    if not pids:
        return "a listener qwenplan cannot see"
    names = []
    for pid in pids:
        try:
            names.append(f"pid {pid} ({psutil.Process(pid).name()})" if pid else "another user's process")
        except psutil.Error:
            names.append(f"pid {pid}")
    return ", ".join(sorted(names))


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def smoke_test(host: str, port: int, served_name: str, *, api_key: str | None = None, max_tokens: int = 16,
               timeout_s: float = 180.0, stop: Callable[[], bool] = lambda: False) -> Smoke:
    """One streamed chat completion; raises LaunchError with what the engine said when it fails."""
    body = json.dumps({"model": served_name, "messages": [{"role": "user", "content": SMOKE_PROMPT}],
                       "max_tokens": max_tokens, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True},
                       "chat_template_kwargs": {"enable_thinking": False}})
    conn = http.client.HTTPConnection(host, port, timeout=min(timeout_s, 30.0))
    t0 = time.monotonic()
    first = last = None
    chunks, usage, text = 0, None, []
    try:
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Content-Type": "application/json", "Accept": "text/event-stream", **_auth(api_key)})
        resp = conn.getresponse()
        if resp.status != 200:
            raise LaunchError(f"the smoke test got HTTP {resp.status}: {resp.read(300).decode('utf-8', 'replace')}",
                              "see the engine log")
        while not stop():
            raw = resp.readline()
            if not raw:
                break
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            msg = json.loads(data)
            for choice in msg.get("choices") or []:
                delta = choice.get("delta") or {}
                piece = delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")
                if piece:
                    now = time.monotonic()
                    first = first or now
                    last = now
                    chunks += 1
                    text.append(piece)
            if msg.get("usage"):
                usage = msg["usage"].get("completion_tokens")
            if time.monotonic() - t0 > timeout_s:
                raise LaunchError(f"the smoke test took over {timeout_s:.0f} s", "see the engine log")
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise LaunchError(f"the smoke test failed ({type(e).__name__}: {e})", "see the engine log") from None
    finally:
        conn.close()
    if first is None:
        raise LaunchError("the smoke test got no tokens back", "see the engine log")
    tokens = usage or chunks
    rate = (tokens - 1) / (last - first) if tokens > 1 and last > first else None
    return Smoke(ttft_s=first - t0, tokens=tokens, tokens_per_s=rate, text="".join(text))


_WAIT, _AGAIN, _STOP = "wait", "again", "stop"     # what one readiness step asks of the polling loop


class _Readiness:
    """How far one engine has got towards serving: the stage, when each stage was reached, and
    how the wait ended. Keeps wait_ready's polling loop free of bookkeeping."""

    def __init__(self, engine: Engine, target: str, port: int, served_name: str, api_key: str | None,
                 on_status: Callable[[Status], None] | None):
        self.engine, self.target, self.port, self.served_name = engine, target, port, served_name
        self.api_key, self.auth, self.on_status = api_key, _auth(api_key), on_status
        self.stage, self.timings, self.smoke_res = "spawned", {}, None
        self.failure = self.message = None

    def reach(self, s: str) -> None:
        """Enter stage `s`, noting the seconds since spawn (the result's timings)."""
        self.stage = s
        self.timings[s] = round(time.monotonic() - self.engine.started_at, 3)

    def status(self, msg: str) -> None:
        """Tell the caller where the wait stands, if it asked."""
        if self.on_status:
            self.on_status(Status(self.stage, time.monotonic() - self.engine.started_at, msg, self.engine.last_line))

    def fail(self, failure: str, message: str) -> str:
        """Record why the wait ends without a ready engine."""
        self.failure, self.message = failure, message
        return _STOP


def _ended(r: _Readiness, timeout_s: float) -> bool:
    """True when the wait is over before any request: a signal, the engine's exit, or the timeout.
    A running engine that was only spawned counts as alive from here on."""
    engine = r.engine
    elapsed = time.monotonic() - engine.started_at
    if engine.signalled is not None:
        r.fail("interrupted", f"interrupted by {signal.Signals(engine.signalled).name} at stage {r.stage}")
        return True
    rc = engine.poll()
    if rc is not None:
        r.fail("exited", f"the engine exited with code {rc} after {elapsed:.0f} s (stage: {r.stage})")
        return True
    if r.stage == "spawned":
        r.reach("alive")
    if elapsed > timeout_s:
        r.fail("timeout", f"the engine was not ready after {timeout_s:.0f} s (stage: {r.stage})")
        return True
    return False


def _check_health(r: _Readiness) -> str:
    """Stage alive: /health answers 200, and from the engine itself (checked before the key is ever sent)."""
    code, _ = _request(r.target, r.port, "GET", "/health", timeout=2.0)
    if code == 200:
        other = squatter(r.engine, r.port)     # before the first request that carries the key
        if other:
            return r.fail("squatted", f"port {r.port} is answered by {other}, not the engine; the API key was not "
                                      f"sent (stop that process or pass another --port)")
        r.reach("health")
    return _WAIT


def _check_models(r: _Readiness) -> str:
    """Stage health: /v1/models accepts the key and lists the served name."""
    code, data = _request(r.target, r.port, "GET", "/v1/models", headers=r.auth, timeout=5.0)
    if code == 401:
        return r.fail("unauthorized", "the engine refused the API key on /v1/models")
    if code == 200:
        ids = [m.get("id") for m in json.loads(data).get("data") or []]
        if r.served_name not in ids:
            return r.fail("wrong-model", f"the engine serves {ids}, not {r.served_name!r}")
        r.reach("models")
    return _WAIT


def _check_smoke(r: _Readiness, smoke: bool, smoke_timeout_s: float) -> str:
    """Stage models: one short generation (when asked) proves the engine can serve; then ready.
    A signal that cuts the request short is left to _ended to report, hence _AGAIN."""
    if smoke:
        r.status(_WAITING["models"])
        engine = r.engine
        try:
            r.smoke_res = smoke_test(r.target, r.port, r.served_name, api_key=r.api_key, timeout_s=smoke_timeout_s,
                                     stop=lambda: engine.signalled is not None)
        except LaunchError as e:
            if engine.signalled is not None:
                return _AGAIN    # the signal ended the request: reported as interrupted above
            return r.fail("smoke", e.problem)
        if engine.signalled is not None:
            return _AGAIN        # cut short by Ctrl-C: reported as interrupted above
        r.reach("smoke")
    r.reach("ready")
    return _STOP


def _advance(r: _Readiness, smoke: bool, smoke_timeout_s: float) -> str:
    """Take the engine as far through the stages as it answers now; one stage may follow another at once."""
    if r.stage == "alive" and _check_health(r) == _STOP:
        return _STOP
    if r.stage == "health" and _check_models(r) == _STOP:
        return _STOP
    if r.stage == "models":
        return _check_smoke(r, smoke, smoke_timeout_s)
    return _WAIT


def _ready_message(r: _Readiness) -> str:
    """The success line: seconds to ready, and the smoke test's first token and speed when it ran."""
    sm = r.smoke_res
    tp = f", {sm.tokens_per_s:.1f} tokens/s" if sm and sm.tokens_per_s else ""
    return (f"ready after {r.timings['ready']:.0f} s" +
            (f"; first token in {sm.ttft_s * 1000:.0f} ms{tp}" if sm else ""))


def _stop_failed(r: _Readiness) -> int | None:
    """Stop an engine that failed, after letting a smoke-test crash finish; its exit code (None when ok)."""
    if r.failure == "smoke":
        try:                             # a kernel fault kills the engine a moment after the request
            r.engine.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
    return r.engine.stop() if r.failure else None


def wait_ready(engine: Engine, *, host: str, port: int, served_name: str, api_key: str | None = None,
               timeout_s: float = 1800.0, smoke: bool = True, smoke_timeout_s: float = 180.0,
               on_status: Callable[[Status], None] | None = None, poll_s: float = 0.25) -> LaunchResult:
    """Follow the engine through the stages; on failure the engine is stopped before returning."""
    r = _Readiness(engine, _connect_host(host), port, served_name, api_key, on_status)
    while not _ended(r, timeout_s):
        try:
            step = _advance(r, smoke, smoke_timeout_s)
        except (OSError, http.client.HTTPException, ValueError):
            step = _WAIT                 # not listening yet: keep waiting
        if step == _STOP:
            break
        if step == _AGAIN:
            continue
        r.status(_WAITING[r.stage])
        time.sleep(poll_s)

    exit_code = _stop_failed(r)
    ok = r.failure is None
    if ok:
        r.message = _ready_message(r)
    result = LaunchResult(ok=ok, stage=r.stage, failure=r.failure, message=r.message, exit_code=exit_code,
                          timings=r.timings, smoke=r.smoke_res, log_path=engine.log_path, lines=list(engine.lines))
    engine.result = result
    r.status(r.message)
    return result


def launch(argv: list[str], env: dict[str, str] | None = None, *, log_path: str | Path, host: str = "127.0.0.1",
           port: int = 8000, served_name: str, api_key: str | None = None, ready_timeout_s: float = 1800.0,
           smoke: bool = True, smoke_timeout_s: float = 180.0, on_status: Callable[[Status], None] | None = None,
           on_line: Callable[[str], None] | None = None, install: str | None = None, check: bool = True,
           grace_s: float = 15.0, forward_signals: bool = True, cwd: str | Path | None = None) -> Engine:
    """Start the engine and wait until it serves; returns the Engine with `.result` set.

    On success the engine keeps running (call `.wait()` to stay in the foreground, `.stop()` to
    end it); on failure it has been stopped and `.result` says how far it got. With `check`, a
    taken port or a missing engine raise before anything is spawned.
    """
    if check:
        check_engine(argv, install)
        check_port(host, port)
    display = None
    if on_line is None and on_status is None:
        display = ConsoleDisplay()
        on_line, on_status = display.line, display.status
    engine = Engine(argv, env, log_path=log_path, on_line=on_line, api_key=api_key, forward_signals=forward_signals,
                    grace_s=grace_s, cwd=cwd).start()
    try:
        wait_ready(engine, host=host, port=port, served_name=served_name, api_key=api_key, timeout_s=ready_timeout_s,
                   smoke=smoke, smoke_timeout_s=smoke_timeout_s, on_status=on_status)
    except BaseException:
        engine.stop(grace_s=2)
        raise
    finally:
        if display:
            display.close()
    return engine


# --- what people see -------------------------------------------------------------------------


class ConsoleDisplay:
    """The engine's log as it comes, and the readiness stage: a spinner line on a terminal, plain lines otherwise."""

    def __init__(self, console=None, show_log: bool = True):
        from rich.console import Console

        self.console = console or Console(stderr=True, highlight=False)
        self.show_log = show_log
        self._spinner = None
        self._said = None
        if self.console.is_terminal:
            self._spinner = self.console.status("starting the engine")
            self._spinner.start()

    def line(self, text: str) -> None:
        if self.show_log:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def status(self, st: Status) -> None:
        if self._spinner is not None:
            from rich.text import Text

            last = st.last_line[-80:] if st.last_line else ""
            self._spinner.update(Text(f"{st.message} — {st.elapsed_s:.0f} s  {last}", overflow="ellipsis",
                                      no_wrap=True))
        elif st.message != self._said:
            self._said = st.message
            self.console.print(f"qwenplan: {st.message} ({st.elapsed_s:.0f} s)", markup=False, highlight=False)

    def close(self) -> None:
        if self._spinner is not None:
            self._spinner.stop()
            self._spinner = None
