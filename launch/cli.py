"""The `qwenplan` command line."""

from __future__ import annotations

import json
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


def main(argv: list[str] | None = None) -> int:
    """Entry point: every failure a user can act on is one line on stderr and a non-zero exit."""
    try:
        cli.main(args=argv, prog_name="qwenplan", standalone_mode=False)
        return 0
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


if __name__ == "__main__":
    sys.exit(main())
