"""The `qwenplan` command line."""

from __future__ import annotations

import json
import os
import sys

import click

from qwenplan.planner.errors import InfeasibleError, InputError, QwenplanError


def _hardware_options(f):
    """Where the hardware document comes from: a file, imagined GPUs, or the real probe."""
    opts = [
        click.option("--hardware", "hardware_file", type=click.Path(dir_okay=False),
                     help="A hardware document (JSON or YAML), e.g. from `qwenplan probe --json` on another box."),
        click.option("--gpu", "gpu_names", multiple=True, metavar="NAME",
                     help='Plan for GPUs you name instead of probing ("4090", "H100", "RTX PRO 6000"); repeatable.'),
        click.option("--gpus", "gpu_count", type=int, help="How many of the --gpu GPU."),
        click.option("--ram", help="Host RAM for --gpu boxes, e.g. 64G."),
        click.option("--disk", help="Free disk for the checkpoint on --gpu boxes, e.g. 500G."),
        click.option("--gpu-ids", help="Use only these GPUs of this box, e.g. 0,2 (numbered as the engine sees them)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def load_hardware(hardware_file=None, gpu_names=(), gpu_count=None, ram=None, disk=None, gpu_ids=None):
    from qwenplan.planner import catalog, hardware, probe, whatif
    from qwenplan.planner.units import parse_box_size

    if hardware_file and gpu_names:
        raise InputError("--hardware and --gpu both describe the box", "give one of them")
    if gpu_count is not None and not gpu_names:
        raise InputError("--gpus needs --gpu NAME", "say which GPU, e.g. --gpu 3060 --gpus 4")
    if hardware_file:
        hw = hardware.load(hardware_file, lookup=catalog.find_gpu)
    elif gpu_names:
        hw = whatif.what_if(list(gpu_names), gpu_count, parse_box_size(ram, "--ram") if ram is not None else None,
                            parse_box_size(disk, "--disk") if disk is not None else None)
    else:
        if ram or disk:
            raise InputError("--ram and --disk describe an imagined box", "use them with --gpu, or write a --hardware file")
        hw = probe.probe()
    if gpu_ids is not None:
        try:
            ids = [int(x) for x in gpu_ids.split(",") if x.strip() != ""]
        except ValueError:
            raise InputError(f"--gpu-ids {gpu_ids!r} is not a list of GPU indices", "write it like 0,2")
        if len(set(ids)) != len(ids) or not ids:
            raise InputError(f"--gpu-ids {gpu_ids!r} is empty or repeats a GPU", "write each index once, like 0,2")
        hw = probe.select_gpu_ids(hw, ids)
    return hw


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="qwenplan", prog_name="qwenplan")
def cli():
    """Plan, explain, launch and export the best way to serve Qwen3.6-35B-A3B on this box."""


@cli.command()
@_hardware_options
@click.option("--json", "as_json", is_flag=True, help="Print the hardware document (qwenplan.hardware/1).")
def probe(as_json, **hw_opts):
    """The hardware document of this box: GPUs as the engine will see them, host, driver, engines."""
    hw = load_hardware(**hw_opts)
    if as_json:
        click.echo(json.dumps(hw.to_dict(), indent=2))
        return
    from qwenplan.launch import views

    views.show_hardware(hw)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON.")
def gpus(as_json):
    """The GPU profiles qwenplan knows (profiles/gpus.yaml)."""
    from qwenplan.planner import catalog

    if as_json:
        click.echo(json.dumps([p.__dict__ for p in catalog.gpus()], indent=2))
        return
    from qwenplan.launch import views

    views.show_gpu_profiles(catalog.gpus())


class _Tokens(click.ParamType):
    """A token count: 32768, or 128k (x 1024, as context lengths are spoken of)."""

    name = "tokens"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            n = value
        else:
            text = str(value).strip().lower()
            mult = 1024 if text.endswith("k") else 1
            try:
                n = int(text[:-1] if mult > 1 else text) * mult
            except ValueError:
                self.fail(f"{value!r} is not a number of tokens: write it like 32768 or 128k", param, ctx)
        if n < 1:
            self.fail(f"{value!r} is not a context length: give 1 or more tokens, like 32768 or 128k", param, ctx)
        return n


TOKENS = _Tokens()


def _check_host(ctx, param, value):
    """An IP address or a DNS name (RFC 1123); anything else never reaches the engine."""
    import ipaddress
    import re

    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    label = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
    if len(value) <= 253 and re.fullmatch(rf"{label}(\.{label})*\.?", value):
        return value
    raise click.BadParameter(f"{value!r} is not an IP address or a host name (e.g. 127.0.0.1, 0.0.0.0, ::1)")


def _goal_names():
    from qwenplan.planner.catalog import load_profile

    return load_profile("goals.yaml")["goals"]


def _plan_options(f):
    """What to plan: every command that plans takes these (the design's common options)."""
    opts = [
        click.option("--goal", type=click.Choice(list(_goal_names())), default="balanced", show_default=True,
                     help="What to optimise for (profiles/goals.yaml)."),
        click.option("--engine", default="auto", show_default=True, metavar="[auto|vllm|vllm-offload|sglang|llamacpp]",
                     help="Engine to plan for."),
        click.option("--engine-version", metavar="X", help="Plan for this engine version (installed or not)."),
        click.option("--variant", metavar="ID", help="Use this checkpoint variant (see `qwenplan variants`)."),
        click.option("--model", metavar="ID", help="Model to serve (default qwen3.6-35b-a3b)."),
        click.option("--context", type=TOKENS, metavar="N", help="Maximum context length in tokens (32768, 128k)."),
        click.option("--concurrency", type=click.IntRange(1), metavar="N", help="Maximum concurrent sequences."),
        click.option("--kv-dtype", metavar="[auto|fp8|f16|q8_0|q4_0]",
                     help="KV cache dtype (llama.cpp: f16, q8_0 or q4_0)."),
        click.option("--no-mtp", "no_mtp", is_flag=True, help="No MTP speculative decoding."),
        click.option("--mtp", "force_mtp", is_flag=True, help="MTP even where a known bug advises against it."),
        click.option("--vision", is_flag=True, help="Serve images and video too (text only by default)."),
        click.option("--host", default="127.0.0.1", show_default=True, callback=_check_host,
                     help="Address to serve on."),
        click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port to serve on."),
        click.option("--served-name", metavar="NAME", help="Model name clients use (default: the model id)."),
        click.option("--nodes", type=click.IntRange(1, 64), default=1, show_default=True,
                     help="Nodes of this hardware (pipeline parallel across them)."),
        click.option("--extra-arg", "extra_args", multiple=True, metavar="ARG",
                     help="Extra engine argument, checked against the engine version's flags; repeatable."),
        click.option("--no-calibration", is_flag=True,
                     help="Plan from the memory model alone, ignoring engine reports stored on this box."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


_PLAN_KEYS = ("goal", "engine", "engine_version", "variant", "model", "context", "concurrency", "kv_dtype", "no_mtp",
              "force_mtp", "vision", "host", "port", "served_name", "nodes", "extra_args")


def split_options(kw: dict) -> tuple[dict, dict]:
    plan_kw = {k: kw.pop(k) for k in _PLAN_KEYS if k in kw}
    return plan_kw, kw


def refuse_infeasible(p, what: str) -> None:
    """Exit 3 with why, when no plan fits (every command that needs a plan)."""
    if p.status != "ok":
        raise InfeasibleError(f"no plan fits, so there is nothing to {what}",
                              "; ".join(p.requirements[:2]) or "see `qwenplan explain`")


def plan_from_cli(kw: dict):
    return _plan_here(kw)[2]


@cli.command()
@_hardware_options
@_plan_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan document (qwenplan.plan/1).")
def plan(as_json, **kw):
    """The plan document: every decision with its reason and source (exit 3 when nothing fits)."""
    p = plan_from_cli(kw)
    if as_json:
        click.echo(json.dumps(p.to_dict(), indent=2))
    else:
        from qwenplan.launch import views

        views.show_plan(p, brief=True)
    if p.status != "ok":
        raise click.exceptions.Exit(3)


@cli.command()
@_hardware_options
@_plan_options
@click.option("-v", "--verbose", "--all", "verbose", is_flag=True,
              help="Also the hardware seen, every decision with its reason and source, the memory table, "
                   "rejected variants.")
def explain(verbose, **kw):
    """The plan for people, on one screen: what runs, context, sequences, KV cache, memory per GPU,
    warnings, the command (exit 3 when nothing fits: it says what it would take)."""
    from qwenplan.launch import views

    p = plan_from_cli(kw)
    views.show_plan(p, verbose=verbose)
    if p.status != "ok":
        raise click.exceptions.Exit(3)


@cli.command()
@_hardware_options
@_plan_options
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def variants(as_json, **kw):
    """Every checkpoint variant in the catalog: fits here or why not."""
    p = plan_from_cli(kw)
    rows = variant_rows(p)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        from qwenplan.launch import views

        views.show_variants(rows)
    if p.status != "ok":
        raise click.exceptions.Exit(3)


def _speed_text(tokens_per_s: dict) -> str:
    """'; predicted 199 / 2,074 / 3,626 tok/s at 1 / 32 / 128 requests' (planner/speed.py)."""
    levels = [k for k in ("c1", "c32", "c128") if k in tokens_per_s]
    if not levels:
        return ""
    return (f"; predicted {' / '.join(f'{tokens_per_s[k]:,.0f}' for k in levels)} tok/s at "
            f"{' / '.join(k[1:] for k in levels)} requests")


def variant_rows(p) -> list[dict]:
    from qwenplan.planner.variants import variants_of

    chosen = p.variant.get("id") if p.status == "ok" else None
    fits = {a["variant"]: a for a in p.alternatives}
    rejected = {r.variant: r.reason for r in p.rejected}
    rows = []
    for v in variants_of(p.model):
        row = {"id": v.id, "repo": v.repo, "format": v.format, "size_bytes": v.disk.total, "quality": v.quality,
               "mtp": v.has_mtp, "engines": {k: e.get("min") for k, e in v.engines.items()}}
        if v.id == chosen:
            speed = {k: lv["tokens_per_s"] for k, lv in (p.performance.get("levels") or {}).items()}
            row.update(fits=True, chosen=True, tokens_per_s=speed, summary=f"chosen: {p.settings['max_model_len']:,} "
                       f"tokens, {p.settings['max_num_seqs']} seqs, TP {p.parallel['tensor']} x DP "
                       f"{p.parallel['data']}{_speed_text(speed)}")
        elif v.id in fits:
            a = fits[v.id]
            row.update(fits=True, chosen=False, tokens_per_s=a.get("tokens_per_s") or {},
                       summary=f"fits ({a['engine']}): {a['max_model_len']:,} tokens, {a['max_num_seqs']} seqs, "
                       f"TP {a['tensor']} x DP {a['data']}, KV {a['kv_cache_dtype']}"
                       f"{' + MTP' if a.get('mtp') else ''}{_speed_text(a.get('tokens_per_s') or {})}")
        else:
            row.update(fits=False, chosen=False, summary=rejected.get(v.id, "does not fit"))
        rows.append(row)
    return rows


def _measured() -> dict:
    """Engine reports stored on this box (qwenplan calibration), for plans to use."""
    from qwenplan.launch import calibration

    found, problems = calibration.lookup_all()
    for p in problems:
        click.echo(f"qwenplan: warning: {p}", err=True)
    return found


def _plan_here(kw: dict, use_calibration: bool = True):
    """(hardware, plan options as click names them, the rendered plan)."""
    from qwenplan.launch.orchestrate import build_plan, note_calibration_change

    plan_kw, hw_kw = split_options(dict(kw))
    hw = load_hardware(**{k: hw_kw.get(k) for k in ("hardware_file", "gpu_names", "gpu_count", "ram", "disk", "gpu_ids")})
    if use_calibration and not hw_kw.get("no_calibration"):
        plan_kw["measured"] = _measured()
    p = build_plan(hw, plan_kw)
    if plan_kw.get("measured") and p.status == "ok":
        note_calibration_change(p, build_plan(hw, dict(plan_kw, measured=None)), plan_kw["measured"])
    return hw, plan_kw, p


@cli.command()
@_hardware_options
@_plan_options
@click.option("--no-parse", is_flag=True, help="Skip running the engine's own argument parser.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON (name, status, detail, fix).")
def doctor(no_parse, as_json, **kw):
    """Is this box ready for the plan? Driver, engine, the argv through the engine's parser,
    /dev/shm, port, disk. Exit 1 on any failed check."""
    from dataclasses import asdict

    from qwenplan.launch import views
    from qwenplan.launch.doctor import run_checks

    hw, _, p = _plan_here(kw)
    refuse_infeasible(p, "check")
    checks = run_checks(p, hw, parse=not no_parse)
    if as_json:
        click.echo(json.dumps({"schema": "qwenplan.doctor/1", "ok": not any(ch.status == "fail" for ch in checks),
                               "checks": [asdict(ch) for ch in checks]}, indent=2))
        if any(ch.status == "fail" for ch in checks):
            raise click.exceptions.Exit(1)
        return
    c = views.console()
    marks = {"ok": "[green]ok[/green]  ", "warn": "[yellow]warn[/yellow]", "fail": "[red]fail[/red]"}
    for ch in checks:
        c.print(f"{marks[ch.status]} {ch.name}: {ch.detail}" + (f" -> {ch.fix}" if ch.fix and ch.status != "ok" else ""),
                soft_wrap=True)
    if any(ch.status == "fail" for ch in checks):
        raise click.exceptions.Exit(1)


@cli.command()
@click.argument("kind", type=click.Choice(["systemd", "compose", "k8s", "script"]))
@_hardware_options
@_plan_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE (atomically) instead of stdout.")
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@click.option("--venv", help="systemd/script: the engine's virtual environment (default: this one).")
@click.option("--user", "user_unit", is_flag=True, help="systemd: a user unit (systemctl --user).")
@click.option("--run-as", "run_as_user", help="systemd: a dedicated user to run the engine as.")
@click.option("--env-file", help="Where secrets (HF_TOKEN, the API key) are read from.")
@click.option("--image", help="compose/k8s: a different image than the engine's official one.")
@click.option("--namespace", help="k8s: the namespace.")
@click.option("--hf-cache", help="compose: host folder of the Hugging Face cache; k8s: an absolute hostPath or "
              "an existing PersistentVolumeClaim's name (default: a new claim).")
@click.option("--storage-size", help="k8s: size of the new cache claim, e.g. 200Gi.")
@click.option("--storage-class", help="k8s: storage class of the new cache claim.")
@click.option("--secret-name", help="k8s: the Secret holding HF_TOKEN and the API key (default qwenplan-<model>).")
@click.option("--publish-host", help="compose: host address the port is published on (default: the plan's --host).")
@click.option("--node-rank", type=click.IntRange(0), help="systemd/compose, multi-node plans: this node's rank (0 = head).")
@click.option("--head-addr", help="systemd/compose, multi-node plans: the head node's address.")
@click.option("--backend", type=click.Choice(["mp", "ray"]), default="mp", show_default=True,
              help="Multi-node vLLM: its own multiprocessing (--nnodes) or a Ray cluster.")
def export(kind, output, force, venv, user_unit, run_as_user, env_file, image, namespace, hf_cache, storage_size,
           storage_class, secret_name, publish_host, node_rank, head_addr, backend, **kw):
    """The plan as a systemd unit, a docker compose file, Kubernetes manifests or a shell script."""
    from qwenplan.launch import export as exp

    _, _, p = _plan_here(kw, use_calibration=False)
    refuse_infeasible(p, "export")
    if p.parallel.get("nodes", 1) == 1:
        for name, value in (("--node-rank", node_rank), ("--head-addr", head_addr)):
            if value is not None:
                raise InputError(f"{name} is for multi-node plans; this plan runs on one node",
                                 f"drop {name}, or plan for several with --nodes N")
    given = {"--venv": venv, "--user": user_unit or None, "--run-as": run_as_user, "--image": image,
             "--namespace": namespace, "--hf-cache": hf_cache, "--storage-size": storage_size,
             "--storage-class": storage_class, "--secret-name": secret_name, "--publish-host": publish_host,
             "--node-rank": node_rank, "--head-addr": head_addr}
    applies = {"systemd": {"--venv", "--user", "--run-as", "--node-rank", "--head-addr"},
               "compose": {"--image", "--hf-cache", "--publish-host", "--node-rank", "--head-addr"},
               "k8s": {"--image", "--namespace", "--hf-cache", "--storage-size", "--storage-class", "--secret-name"},
               "script": {"--venv"}}[kind]
    stray = [k for k, v in given.items() if v is not None and k not in applies]
    if stray:
        raise QwenplanError(f"{', '.join(stray)}: not an option of the {kind} export",
                            f"{kind} takes {', '.join(sorted(applies))}")
    nodes = dict(node_rank=node_rank, head_addr=head_addr)
    options = {"systemd": dict(venv=venv, user_unit=user_unit, run_as_user=run_as_user, env_file=env_file,
                               backend=backend, **nodes),
               "compose": dict(image=image, env_file=env_file, backend=backend, publish_host=publish_host,
                               hf_cache=hf_cache, **nodes),
               "k8s": dict(image=image, namespace=namespace, backend=backend, hf_cache=hf_cache,
                           storage_size=storage_size, storage_class=storage_class, secret_name=secret_name),
               "script": dict(venv=venv, env_file=env_file, backend=backend)}[kind]
    plan = p.to_dict()
    text = exp.render(kind, plan, **options)
    if kind == "systemd":
        prog = exp.systemd_program(plan, venv)
        if prog and not os.access(prog, os.X_OK):
            click.echo(f"qwenplan: warning: the unit runs {prog}, which is not here"
                       + ("" if venv else ": pass --venv with the engine's virtual environment"), err=True)
    if not output:
        click.echo(text, nl=False)
        return
    path = exp.write_atomic(output, text, force, mode=exp.file_mode(kind))
    click.echo(f"wrote {path}", err=True)
    if kind in ("compose", "systemd"):
        # the secrets file the export reads: names only, mode 600, never overwritten
        given = env_file if kind == "compose" else None
        env_path = path.parent / (given or exp.ENV_FILE_NAME)
        if exp.write_env_file(env_path, plan):
            click.echo(f"wrote {env_path} (mode 600, names only): fill in the values", err=True)
            if kind == "systemd":
                click.echo("then install it where the unit reads it (see the unit's header)", err=True)


@cli.group()
def calibration():
    """What engines reported on this box, which later plans use in place of the formula."""


@calibration.command("list")
def calibration_list():
    from qwenplan.launch import calibration as cal

    used = _measured()
    found, _ = cal.records()
    if not found:
        click.echo(f"no engine reports stored yet ({cal.store_dir()})")
    for _path, d in found:
        obs = d["observations"][-1]
        r = obs["reported"]
        u = used.get(d["key"])
        mark = ("held back" if u is None else "used by plans" if dict(u, file=None) == dict(obs, file=None)
                else "an earlier report is used")
        click.echo(f"{d['key']}: {obs['date']} ({obs['source']}): weights {r.get('weights_bytes')}, "
                   f"KV {r.get('kv_cache_bytes')} B, {r.get('kv_tokens')} tokens ({len(d['observations'])} "
                   f"report(s); {mark})")


@calibration.command("clear")
def calibration_clear():
    from qwenplan.launch import calibration as cal

    n, left = cal.clear()
    click.echo(f"removed {n} file(s) from {cal.store_dir()}")
    for line in left:
        click.echo(f"qwenplan: warning: {line}", err=True)


@cli.command()
@_hardware_options
@_plan_options
@click.option("--dry-run", is_flag=True, help="Show the plan and command, do nothing.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before downloading and launching.")
@click.option("--retry", type=click.IntRange(0, 3), default=0, metavar="N",
              help="After a known failure, relaunch with a safer plan up to N times.")
@click.option("--verify", "verify_first", is_flag=True, help="Check the plan with dummy weights before downloading.")
@click.option("--model-path", type=click.Path(dir_okay=False),
              help="llama.cpp plans: serve this local GGUF file with the plan's flags instead of downloading the "
              "plan's (add --no-mtp for a file without the MTP head).")
def auto(dry_run, yes, retry, verify_first, model_path, **kw):
    """Probe, plan, fetch the checkpoint, launch, wait until healthy, smoke-test, stay in the foreground."""
    from qwenplan.launch import orchestrate, views

    hw, plan_kw, p = _plan_here(kw)
    gguf = p.status == "ok" and p.engine.get("name") == "llamacpp"
    if model_path:
        if not gguf:
            raise InputError("--model-path serves a local GGUF file: it needs a llama.cpp plan", "add --engine llamacpp")
        if not os.path.isfile(model_path):
            raise InputError(f"--model-path {model_path}: no such file", "give the path of a .gguf file")
        orchestrate.serve_gguf(p, model_path)
    if gguf and verify_first:
        raise InputError("--verify runs vLLM with dummy weights; llama.cpp has no such mode", "drop --verify")
    views.show_plan(p, brief=True)
    if p.status != "ok":
        raise click.exceptions.Exit(3)
    if dry_run:
        return
    for line in orchestrate.preflight(p, hw, kw, model_path):
        click.echo(f"ok: {line}")
    if not yes and not click.confirm("Download (if needed) and launch?", default=True):
        raise click.exceptions.Exit(1)
    replan = orchestrate.Replanner(hw, plan_kw, p, model_path and os.path.abspath(model_path))
    return orchestrate.auto(p, replan, retry=retry, verify_first=verify_first, model_path=model_path)


@cli.command()
@_hardware_options
@_plan_options
@click.option("--retry", type=click.IntRange(0, 3), default=0, metavar="N", help="Retry with a safer plan up to N times.")
def verify(retry, **kw):
    """Before downloading tens of GB: start the engine on the plan with dummy weights (config.json
    only), read its memory report, store it for later plans, stop it."""
    from qwenplan.launch import orchestrate

    hw, plan_kw, p = _plan_here(kw)
    refuse_infeasible(p, "verify")
    orchestrate.require_this_box(kw, hw)
    orchestrate.verify(p, orchestrate.Replanner(hw, plan_kw, p), retry=retry)


def main(argv: list[str] | None = None) -> int:
    """Entry point: every failure a user can act on is one line on stderr and a non-zero exit."""
    try:
        rv = cli.main(args=argv, prog_name="qwenplan", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except QwenplanError as e:
        click.echo(f"qwenplan: error: {e}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("qwenplan: aborted", err=True)
        return 130
    except click.ClickException as e:
        hint = ""
        ctx = getattr(e, "ctx", None)
        if ctx is not None:
            hint = f" (see `{ctx.command_path} --help`)"
        click.echo(f"qwenplan: error: {e.format_message()}{hint}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("qwenplan: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug: one line, the traceback only when asked for
        if os.environ.get("QWENPLAN_DEBUG"):
            raise
        click.echo(f"qwenplan: internal error: {type(e).__name__}: {e} (rerun with QWENPLAN_DEBUG=1 for the "
                   f"traceback and report it)", err=True)
        return 70


if __name__ == "__main__":
    sys.exit(main())
