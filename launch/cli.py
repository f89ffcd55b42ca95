"""The `qwenplan` command line."""

from __future__ import annotations

import json
import os
import sys

import click

from qwenplan.planner.errors import InputError, QwenplanError


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
    from qwenplan.planner.units import parse_size

    if hardware_file and gpu_names:
        raise InputError("--hardware and --gpu both describe the box", "give one of them")
    if gpu_count is not None and not gpu_names:
        raise InputError("--gpus needs --gpu NAME", "say which GPU, e.g. --gpu 3060 --gpus 4")
    if hardware_file:
        hw = hardware.load(hardware_file, lookup=catalog.find_gpu)
    elif gpu_names:
        hw = whatif.what_if(list(gpu_names), gpu_count, parse_size(ram, "--ram") if ram else None,
                            parse_size(disk, "--disk") if disk else None)
    else:
        if ram or disk:
            raise InputError("--ram and --disk describe an imagined box", "use them with --gpu, or write a --hardware file")
        hw = probe.probe()
    if gpu_ids:
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


def _plan_options(f):
    """What to plan: every command that plans takes these (the design's common options)."""
    opts = [
        click.option("--goal", type=click.Choice(["balanced", "long-context", "throughput"]), default="balanced",
                     show_default=True, help="What to optimise for."),
        click.option("--engine", default="auto", show_default=True, metavar="[auto|vllm|vllm-offload|sglang]",
                     help="Engine to plan for."),
        click.option("--engine-version", metavar="X", help="Plan for this engine version (installed or not)."),
        click.option("--variant", metavar="ID", help="Use this checkpoint variant (see `qwenplan variants`)."),
        click.option("--model", metavar="ID", help="Model to serve (default qwen3.6-35b-a3b)."),
        click.option("--context", type=int, metavar="N", help="Maximum context length in tokens."),
        click.option("--concurrency", type=int, metavar="N", help="Maximum concurrent sequences."),
        click.option("--kv-dtype", metavar="[auto|fp8]", help="KV cache dtype."),
        click.option("--no-mtp", "no_mtp", is_flag=True, help="No MTP speculative decoding."),
        click.option("--mtp", "force_mtp", is_flag=True, help="MTP even where a known bug advises against it."),
        click.option("--vision", is_flag=True, help="Serve images and video too (text only by default)."),
        click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on."),
        click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port to serve on."),
        click.option("--served-name", metavar="NAME", help="Model name clients use (default: the model id)."),
        click.option("--nodes", type=click.IntRange(1, 64), default=1, show_default=True,
                     help="Nodes of this hardware (pipeline parallel across them)."),
        click.option("--extra-arg", "extra_args", multiple=True, metavar="ARG",
                     help="Extra engine argument, checked against the engine version's flags; repeatable."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


_PLAN_KEYS = ("goal", "engine", "engine_version", "variant", "model", "context", "concurrency", "kv_dtype", "no_mtp",
              "force_mtp", "vision", "host", "port", "served_name", "nodes", "extra_args")


def split_options(kw: dict) -> tuple[dict, dict]:
    plan_kw = {k: kw.pop(k) for k in _PLAN_KEYS if k in kw}
    return plan_kw, kw


def build_plan(hw, plan_kw: dict):
    """Hardware + options -> a rendered Plan (command filled in when feasible)."""
    from qwenplan.launch.render import with_command
    from qwenplan.planner.decide import PlanOptions, make_plan

    if plan_kw.get("no_mtp") and plan_kw.get("force_mtp"):
        raise InputError("--mtp and --no-mtp contradict each other", "give one of them")
    mtp = False if plan_kw.get("no_mtp") else (True if plan_kw.get("force_mtp") else None)
    opts = PlanOptions(model=plan_kw.get("model"), goal=plan_kw.get("goal", "balanced"),
                       engine=plan_kw.get("engine", "auto"), engine_version=plan_kw.get("engine_version"),
                       variant=plan_kw.get("variant"), context=plan_kw.get("context"),
                       concurrency=plan_kw.get("concurrency"), kv_dtype=plan_kw.get("kv_dtype"), mtp=mtp,
                       vision=bool(plan_kw.get("vision")), host=plan_kw.get("host", "127.0.0.1"),
                       port=plan_kw.get("port", 8000), served_name=plan_kw.get("served_name"),
                       nodes=plan_kw.get("nodes", 1))
    return with_command(make_plan(hw, opts), tuple(plan_kw.get("extra_args") or ()))


def plan_from_cli(kw: dict):
    plan_kw, hw_kw = split_options(dict(kw))
    hw = load_hardware(**{k: hw_kw.get(k) for k in ("hardware_file", "gpu_names", "gpu_count", "ram", "disk", "gpu_ids")})
    return build_plan(hw, plan_kw)


def _with_calibration(plan):
    return plan


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
def explain(**kw):
    """The plan for people: hardware seen, each decision with its reason, memory per GPU, rejected
    variants, the command. Works on a box without a GPU (it says what it would take)."""
    from qwenplan.launch import views

    p = plan_from_cli(kw)
    views.show_plan(p, brief=False)


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
        return
    from qwenplan.launch import views

    views.show_variants(rows)


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
            row.update(fits=True, chosen=True, summary=f"chosen: {p.settings['max_model_len']:,} tokens, "
                       f"{p.settings['max_num_seqs']} seqs, TP {p.parallel['tensor']} x DP {p.parallel['data']}")
        elif v.id in fits:
            a = fits[v.id]
            row.update(fits=True, chosen=False, summary=f"fits ({a['engine']}): {a['max_model_len']:,} tokens, "
                       f"{a['max_num_seqs']} seqs, TP {a['tensor']} x DP {a['data']}, KV {a['kv_cache_dtype']}")
        else:
            row.update(fits=False, chosen=False, summary=rejected.get(v.id, "does not fit"))
        rows.append(row)
    return rows


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
