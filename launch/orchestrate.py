"""`auto` and `verify` as a library: the plan from the command's options, the checks before
acting, the launch with retries that re-plan, the engine's report stored beside the plan that was
served, and the foreground until the engine exits or a signal arrives. launch/cli.py parses
options and prints plans; tests call this module without click's option parsing.

The engine runs in its own process group (launch/runner.py); the runner's signal handler
stops that group (SIGTERM, SIGKILL after the grace period) on SIGINT, SIGTERM or SIGHUP.
qwenplan then exits as a program killed by that signal would (128 + the signal: 130, 143, 129).
An engine that dies on its own is diagnosed from its log as at start-up, and the exit is 1.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
from dataclasses import replace

import click

from qwenplan.planner.errors import InputError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


# --- the plan from the command's options ------------------------------------------------------

def engine_for_version(hw, engine: str, version: str | None) -> str:
    """`--engine-version X` without `--engine`: the one engine that has release X, else the one
    installed here; refused when that still leaves a choice."""
    if engine != "auto" or not version:
        return engine
    from qwenplan.planner.engines import engines

    known = [e.id for e in engines().values() if version in e.versions]
    if len(known) == 1:
        return known[0]
    installed = [k for k, v in (hw.engines or {}).items() if v and (k in known or not known)]
    if len(installed) == 1:
        return installed[0]
    which = known or list(engines())
    raise InputError(f"--engine-version needs --engine: {version} could be {' or '.join(which)}",
                     f"say which, e.g. --engine {which[0]} --engine-version {version}")


def plan_options(hw, plan_kw: dict):
    """The command's plan options (click's names) as the planner's PlanOptions."""
    from qwenplan.planner.decide import PlanOptions

    if plan_kw.get("no_mtp") and plan_kw.get("force_mtp"):
        raise InputError("--mtp and --no-mtp contradict each other", "give one of them")
    mtp = False if plan_kw.get("no_mtp") else (True if plan_kw.get("force_mtp") else None)
    engine = engine_for_version(hw, plan_kw.get("engine", "auto"), plan_kw.get("engine_version"))
    return PlanOptions(model=plan_kw.get("model"), goal=plan_kw.get("goal", "balanced"),
                       engine=engine, engine_version=plan_kw.get("engine_version"),
                       variant=plan_kw.get("variant"), context=plan_kw.get("context"),
                       concurrency=plan_kw.get("concurrency"), kv_dtype=plan_kw.get("kv_dtype"), mtp=mtp,
                       vision=bool(plan_kw.get("vision")), host=plan_kw.get("host", "127.0.0.1"),
                       port=plan_kw.get("port", 8000), served_name=plan_kw.get("served_name"),
                       nodes=plan_kw.get("nodes", 1), measured=plan_kw.get("measured"))


def build_plan(hw, plan_kw: dict):
    """Hardware + options -> a rendered Plan (command filled in when feasible)."""
    from qwenplan.launch.render import with_command
    from qwenplan.planner.decide import make_plan

    return with_command(make_plan(hw, plan_options(hw, plan_kw)), tuple(plan_kw.get("extra_args") or ()))


class Replanner:
    """The planner for retries (`replan(options, because)` in launch/diagnose.py): the first
    plan's options, with its variant, engine and KV dtype pinned (they were fetched and
    installed) and the options a failure rule changes set; None when no plan fits them."""

    def __init__(self, hw, plan_kw: dict, served, model_path: str | None = None):
        self.hw, self.extra_args, self.model_path = hw, tuple(plan_kw.get("extra_args") or ()), model_path
        self.base = replace(plan_options(hw, plan_kw), variant=served.variant["id"], engine=served.engine["name"],
                            engine_version=served.engine["version"], kv_dtype=served.settings.get("kv_cache_dtype"))

    def __call__(self, options: dict, because: str) -> dict | None:
        from qwenplan.launch.render import with_command
        from qwenplan.planner.decide import make_plan

        from qwenplan.planner.plan import Decision

        opts = replace(self.base, context=options["context"], concurrency=options["concurrency"],
                       mtp=options["mtp"], eager=options["eager"], utilization=options["utilization"])
        try:
            p = make_plan(self.hw, opts)
        except InputError:
            return None
        if p.status != "ok":
            return None
        p.decisions.insert(0, Decision("retry", "a safer plan", because, "profiles/failures.yaml"))
        if not options["parsers"]:     # they need the tokenizer; nothing the memory model sizes
            p.settings.update(reasoning_parser=None, tool_call_parser=None)
            p.decisions.append(Decision("parsers", None, "off: " + because, "profiles/failures.yaml"))
        if self.model_path:
            serve_gguf(p, self.model_path)
        return with_command(p, self.extra_args).to_dict()


def note_calibration_change(p, formula, measured: dict) -> None:
    """A stored engine report that changes the plan (its sizing, or the choice among candidates)
    is a decision of its own, named with its files: never a silent switch."""
    def what(plan):
        return plan.status, plan.variant.get("id"), plan.engine.get("name"), plan.parallel, plan.settings
    if what(p) == what(formula):
        return
    from qwenplan.planner.plan import Decision

    gpus = {g.get("name") for g in p.memory.get("gpus") or []}
    files = sorted({o["file"] for o in measured.values() if (o.get("gpu") or {}).get("name") in gpus | {None}})
    before = (f"{formula.variant['id']} on {formula.engine['name']}, {formula.settings['max_model_len']:,} tokens, "
              f"{formula.settings['max_num_seqs']} sequences" if formula.status == "ok" else "no plan fits")
    p.decisions.append(Decision("calibration", "changed the plan", f"engine reports stored on this box changed "
                                f"the plan; from the formula alone it would be: {before} (--no-calibration)",
                                ", ".join(files) or "qwenplan calibration list"))


def serve_gguf(p, path: str) -> None:
    """A llama.cpp plan served from a local GGUF file (downloaded, or --model-path)."""
    from qwenplan.launch.render import with_command

    p.settings.update(model_path=os.path.abspath(path), hf_repo=None, hf_file=None)
    with_command(p)


# --- before acting ----------------------------------------------------------------------------

def require_this_box(kw: dict, hw) -> None:
    """auto and verify run on this box: GPUs only named (--gpu, --hardware) must be GPUs it has,
    or the engine would start on other hardware and its report be stored under a GPU not here."""
    if not (kw.get("hardware_file") or kw.get("gpu_names")):
        return
    from collections import Counter

    from qwenplan.planner import probe
    from qwenplan.planner.catalog import find_gpu, normalize_gpu_name

    def kind(g):
        profile = find_gpu(g.name, g.memory_total_bytes)
        return profile.id if profile else normalize_gpu_name(g.name)

    here = probe.probe()
    if not hw.gpus and not here.gpus:
        return          # a box without a GPU described as one: llama.cpp on this CPU
    want, have = Counter(map(kind, hw.gpus)), Counter(map(kind, here.gpus))
    if not want or any(have[k] < n for k, n in want.items()):
        seen = ", ".join(g.name for g in here.gpus) or "no GPU"
        named = ", ".join(g.name for g in hw.gpus) or "no GPU"
        raise InputError(f"this box has {seen}, not the {named} named by --gpu/--hardware",
                         "run it without --gpu/--hardware to use this box's GPUs; `qwenplan plan` and `export` "
                         "plan for other hardware")


def key_envs(doc: dict) -> list[str]:
    """The variables that may hold the engine's API key (not HF_TOKEN)."""
    return doc["command"]["secret_env"][1:] + [a["env"] for a in doc["command"]["secret_args"]]


def space_needed(doc: dict, model_path: str | None = None) -> tuple[list[tuple[str, int, str]], int]:
    """(disk: [(folder, bytes, what)], host RAM bytes) the plan still needs here: the checkpoint
    unless cached (or a local --model-path), and the offload fork's expert store on disk or in RAM."""
    from qwenplan.launch import fetch

    files = [doc["variant"]["gguf_file"]] if doc["engine"]["name"] == "llamacpp" else None
    cached = model_path or fetch.cached_snapshot(doc["variant"]["repo"], allow_patterns=files)
    disk = [(str(fetch.hub_cache_dir()), 0 if cached else doc["variant"]["size_bytes"],
             f"the checkpoint {doc['variant']['repo']}")]
    ram = 0
    if doc["engine"]["name"] == "vllm-offload":
        if doc["settings"]["env"].get("VLLM_MOE_COLD_TIER_MODE") == "disk":
            disk.append(("/tmp", doc["variant"]["expert_bytes"], "the fork's disk-backed expert store"))
        else:
            ram = doc["variant"]["expert_bytes"]
    return disk, ram


def preflight(p, hw, kw: dict, model_path: str | None = None) -> list[str]:
    """Every check before downloading or launching; raises the first problem, else what was checked."""
    from qwenplan.launch import runner

    require_this_box(kw, hw)
    doc = p.to_dict()
    if doc["settings"]["host"] not in LOOPBACK and not any(os.environ.get(n) for n in key_envs(doc)):
        click.echo(f"qwenplan: warning: serving on {doc['settings']['host']} without an API key", err=True)
    disk, ram = space_needed(doc, model_path)
    return runner.preflight(doc["command"]["argv"], host=doc["settings"]["host"], port=doc["settings"]["port"],
                            install=doc["engine"]["install"], disk=disk, ram_bytes=ram,
                            ram_available=hw.host.usable_ram_bytes)


# --- launching ---------------------------------------------------------------------------------

def run_plan(p, replan, *, retry: int, log_dir, dummy_model: str | None = None, smoke: bool = True):
    """Serve the plan (real or dummy weights); after a known failure the planner's safer plan,
    at most `retry` times. Returns the Outcome (launch/diagnose.py)."""
    from qwenplan.launch.diagnose import run_with_retries
    from qwenplan.launch.render import render

    doc = p.to_dict()
    api_key = None
    for name in doc["command"].get("secret_env", []) + [a["env"] for a in doc["command"].get("secret_args", [])]:
        if name != "HF_TOKEN" and os.environ.get(name):
            api_key = os.environ[name]
    user_args = tuple(doc["command"].get("extra_args") or ())   # --extra-arg, on every attempt

    def make_command(plan: dict):
        if dummy_model:
            # config.json alone: no weights, no tokenizer (render leaves out what needs one)
            plan = dict(plan, settings=dict(plan["settings"], model=dummy_model, load_format="dummy",
                                            skip_tokenizer_init=True))
        cmd = render(plan, user_args)
        argv = list(cmd["argv"])
        for a in cmd.get("secret_args", []):
            if os.environ.get(a["env"]):
                argv += [a["flag"], os.environ[a["env"]]]
        return argv, cmd["env"]            # the engine inherits the rest; only the plan's env is logged

    return run_with_retries(make_command, doc, replan=replan, retries=retry, log_dir=log_dir,
                            host=doc["settings"]["host"], port=doc["settings"]["port"],
                            served_name=doc["settings"]["served_model_name"], api_key=api_key, smoke=smoke,
                            install=doc["engine"]["install"])


def log_dir(kind: str):
    import time

    from qwenplan.launch.calibration import store_dir

    path = store_dir().parent / "runs" / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:                               # before anything starts: a state folder we cannot write is bad input
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the run log folder {path} ({e.strerror})",
                         "set QWENPLAN_STATE_DIR (or XDG_STATE_HOME) to a folder you can write")
    return path


def finish(out, source: str):
    """Each failed attempt in a line; the last one's failure, or the served plan's report stored
    (the plan of the last attempt: its prediction beside what the engine reported)."""
    last = out.last
    for a in out.attempts[:-1]:
        click.echo(f"attempt {a.number}: {a.message} ({a.log_path})", err=True)
    if last.failure == "interrupted" and out.engine is not None and out.engine.signalled is not None:
        raise interrupted(out.engine.signalled)
    if not out.ok:
        msg = last.diagnosis.message if last.diagnosis else last.message
        click.echo(f"qwenplan: error: {msg} (log: {last.log_path})", err=True)
        if last.next_plan:
            from qwenplan.launch.diagnose import describe_change
            click.echo(f"qwenplan: a safer plan exists: {describe_change(last.settings, last.next_settings)}; "
                       f"rerun with --retry 1 to launch it", err=True)
        raise click.exceptions.Exit(1)
    if len(out.attempts) > 1:
        from qwenplan.launch.diagnose import describe_change
        click.echo(f"served the safer plan: {describe_change(out.attempts[0].settings, last.settings)}")
    smoke = out.engine.result.smoke
    report(last.plan, out.engine.result.lines, source, smoke)
    if smoke:
        click.echo(f"ready: first token after {smoke.ttft_s:.2f} s, {smoke.tokens_per_s or 0:.1f} tokens/s")
    return out


def verify(p, replan, retry: int = 0):
    """Serve the plan with dummy weights from config.json alone; report, store, stop."""
    from qwenplan.launch import fetch

    doc = p.to_dict()
    if doc["engine"]["name"] == "llamacpp":
        raise InputError("llama.cpp has no dummy-weight mode to verify a plan with",
                         "`qwenplan auto` loads the real GGUF file and reports its memory")
    config = fetch.config_only(doc["variant"]["repo"], doc["variant"].get("revision"))
    out = run_plan(p, replan, retry=retry, log_dir=log_dir("verify"), dummy_model=str(config.parent), smoke=False)
    try:
        finish(out, "qwenplan verify (--load-format dummy)")
    finally:
        if out.engine is not None:
            out.engine.stop()


def auto(p, replan, *, retry: int, verify_first: bool, model_path: str | None) -> int:
    """After the checks and the user's yes: verify if asked, fetch, serve, report, stay in the
    foreground; the exit status."""
    from qwenplan.launch import fetch

    doc = p.to_dict()
    if verify_first:
        verify(p, replan, retry=retry)
    if not model_path:
        files = [doc["variant"]["gguf_file"]] if doc["engine"]["name"] == "llamacpp" else None
        path = fetch.ensure_checkpoint(doc["variant"]["repo"], doc["variant"].get("revision"),
                                       needed_bytes=doc["variant"]["size_bytes"], allow_patterns=files)
        if files:
            serve_gguf(p, str(path / files[0]))
            replan.model_path = str(path / files[0])
    out = run_plan(p, replan, retry=retry, log_dir=log_dir("auto"))
    finish(out, "qwenplan auto")
    served = out.last.plan
    return stay_in_foreground(out.engine, served, next((k for k in key_envs(served) if os.environ.get(k)), None))


# --- the engine's report ----------------------------------------------------------------------

def smoke_speed(plan_doc: dict, smoke) -> dict | None:
    """The smoke test's speed beside the prediction for one request (planner/speed.py)."""
    one = ((plan_doc.get("performance") or {}).get("levels") or {}).get("c1")
    if smoke is None or not smoke.tokens_per_s:
        return None
    out = {"smoke_tokens_per_s": round(smoke.tokens_per_s, 2), "smoke_ttft_s": round(smoke.ttft_s, 4)}
    if one:
        out.update(predicted_tokens_per_s=round(1000 / one["tpot_ms"], 2), predicted_ttft_s=one["ttft_s"])
    return out





def report(plan_doc: dict, lines: list[str], source: str, smoke=None) -> None:
    """Predicted beside reported; a large miss is a warning naming both; the report is stored,
    with the smoke test's speed beside the predicted one."""
    from qwenplan.launch import calibration as cal
    from qwenplan.launch.engine_log import parse_memory

    if plan_doc["engine"]["name"] == "llamacpp":
        return report_llamacpp(plan_doc, lines)
    rep = parse_memory(lines).to_dict()
    m = plan_doc["memory"]
    rows = [("weights", m.get("weights_bytes"), rep.get("weights_bytes")),
            ("activation peak", m.get("activation_bytes"), rep.get("activation_bytes")),
            ("non-torch", m.get("non_torch_bytes"), rep.get("non_torch_bytes")),
            ("CUDA graphs", m.get("cudagraph_bytes"), rep.get("cudagraph_bytes")),
            # SGLang: the plan's KV tensors (its kv_cache_bytes is the whole pool, DeltaNet states too)
            ("KV cache memory", (m.get("sglang") or {}).get("kv_bytes", m.get("kv_cache_bytes")), rep.get("kv_cache_bytes")),
            ("KV cache tokens", m.get("kv_cache_tokens"), rep.get("kv_tokens"))]

    def show(name, v):
        return "-" if v is None else f"{v:,}" if name == "KV cache tokens" else f"{v / (1 << 30):.2f} GiB"
    click.echo("memory: predicted / reported by the engine")
    for name, pred, got in rows:
        click.echo(f"  {name:16} {show(name, pred):>16} {show(name, got):>16}")
    if rep.get("cudagraph_captured_bytes") is not None:
        click.echo(f"  {'graphs captured':16} {'':>16} {show('', rep['cudagraph_captured_bytes']):>16}"
                   "  (beyond the estimate: outside the budget)")
    for line in cal.compare(m, rep):
        click.echo(f"qwenplan: warning: large miss: {line}", err=True)
    speed = smoke_speed(plan_doc, smoke)
    if speed:
        click.echo(f"speed: smoke test {speed['smoke_tokens_per_s']:.1f} tokens/s (one short request)" +
                   (f"; predicted {speed['predicted_tokens_per_s']:.1f} tokens/s while decoding one request"
                    if "predicted_tokens_per_s" in speed else ""))
    if rep.get("weights_bytes"):
        try:
            path = cal.record(plan_doc, rep, source, speed)
        except OSError as e:   # the engine is up: a store that cannot be written is no reason to fail
            click.echo(f"qwenplan: warning: the engine report was not stored in {cal.store_dir()} "
                       f"({e.strerror or type(e).__name__}); later plans use the formula", err=True)
        else:
            click.echo(f"stored in {path}")





def report_llamacpp(plan_doc: dict, lines: list[str]) -> None:
    """llama-server's own buffer sizes beside the plan's (the file served may be another size
    than the plan's variant with --model-path)."""
    from qwenplan.launch.engine_log import parse_llamacpp

    rep, m = parse_llamacpp(lines), plan_doc["memory"]
    gpu = ("CUDA0",) if m.get("gpus") else ()
    rows = [("weights on GPU", m.get("gpu_weights_bytes"), rep.total("model", gpu) if gpu else None),
            ("weights in host RAM", m.get("host_weights_bytes"), rep.total("model") - rep.total("model", gpu)),
            ("KV cache + state", m.get("kv_cache_bytes"), rep.total("KV") + rep.total("RS")),
            ("compute buffers", (m.get("compute_gpu_bytes") or 0) + (m.get("compute_host_bytes") or 0),
             rep.total("compute"))]
    click.echo("memory: predicted / reported by llama-server")
    for name, pred, got in rows:
        show = [("-" if v is None else f"{v / (1 << 30):.2f} GiB") for v in (pred, got)]
        click.echo(f"  {name:20} {show[0]:>12} {show[1]:>12}")


# --- the foreground ----------------------------------------------------------------------------

def signal_exit_code(sig: int) -> int:
    """The exit status of a program that stops on `sig`, as shells report it."""
    return 128 + int(sig)


def interrupted(sig: int) -> click.exceptions.Exit:
    click.echo(f"qwenplan: interrupted by {signal.Signals(sig).name}; the engine was stopped", err=True)
    return click.exceptions.Exit(signal_exit_code(sig))


def how_to_call(doc: dict, key_env: str | None) -> list[str]:
    """The lines printed once the engine is ready: where, which model, a curl line, how to stop.
    The API key is named by its variable, never printed."""
    from qwenplan.launch.runner import _connect_host

    s = doc["settings"]
    host = _connect_host(s["host"])
    base = f"http://{f'[{host}]' if ':' in host else host}:{s['port']}/v1"
    body = json.dumps({"model": s["served_model_name"], "messages": [{"role": "user", "content": "Hello"}]})
    curl = ["curl", f"{base}/chat/completions", "-H", "Content-Type: application/json"]
    line = shlex.join(curl)
    if key_env:
        line += f' -H "Authorization: Bearer ${key_env}"'
    line += " -d " + shlex.quote(body)
    return [f"serving: {base}", f"model:   {s['served_model_name']}", f"try:     {line}", "Ctrl-C to stop"]


def stay_in_foreground(engine, doc: dict, key_env: str | None) -> int:
    """Print how to call the engine, wait until it exits or qwenplan is signalled; the exit status."""
    for line in how_to_call(doc, key_env):
        click.echo(line)
    code = engine.wait()
    if engine.signalled is not None:
        raise interrupted(engine.signalled)
    from qwenplan.launch.diagnose import diagnose

    d = diagnose(list(engine.lines))
    why = f": {d.message}" if d else ""
    click.echo(f"qwenplan: error: the engine exited with code {code} while serving{why} (log: {engine.log_path})",
               err=True)
    return 1
