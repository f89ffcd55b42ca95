"""`qwenplan doctor`: is this box ready for the plan? Each check ok / warn / fail with the fix."""

from __future__ import annotations

from dataclasses import dataclass

from qwenplan.planner.engines import get_engine
from qwenplan.planner.flags import nearest_note
from qwenplan.planner.shm import MIN_SHM_BYTES
from qwenplan.planner.units import gib
from qwenplan.planner.versions import Version


@dataclass
class Check:
    name: str
    status: str        # ok | warn | fail
    detail: str
    fix: str = ""


def run_checks(plan, hw, parse=True) -> list[Check]:
    out: list[Check] = []
    if plan.status != "ok":
        return [Check("plan", "fail", "no plan fits this box", "; ".join(plan.requirements[:2]))]
    eng = get_engine(plan.engine["name"])
    version = plan.engine["version"]
    if plan.parallel.get("gpu_ids"):
        out.append(_driver_check(eng, version, hw))
    out += _llamacpp_checks(plan, version) if eng.id == "llamacpp" else _engine_checks(plan, hw, eng, version, parse)
    # /dev/shm for multi-GPU
    gpus = plan.parallel["tensor"] * plan.parallel["pipeline"] * plan.parallel["data"]
    shm = hw.host.shm_bytes
    if gpus > 1:
        if shm is None:
            out.append(Check("shm", "warn", "/dev/shm size unknown", "give containers --ipc=host or --shm-size 16g"))
        elif shm < MIN_SHM_BYTES:
            out.append(Check("shm", "fail", f"/dev/shm is {gib(shm)}: too small for {gpus} GPU processes",
                             "run the container with --ipc=host (or --shm-size 16g)"))
        else:
            out.append(Check("shm", "ok", f"/dev/shm {gib(shm)}"))
    # port
    host, port = plan.settings["host"], plan.settings["port"]
    from qwenplan.launch.runner import LaunchError, port_free

    try:
        taken = None if port_free(host, port) else (f"{host}:{port} is taken",
                                                    f"stop what listens there or use --port {port + 1}")
    except LaunchError as e:           # a port below 1024 without root
        taken = (f"{host}:{port}: {e.problem}", e.fix)
    out.append(Check("port", "ok", f"{host}:{port} is free") if taken is None else Check("port", "fail", *taken))
    # disk
    need_disk = plan.variant["size_bytes"]
    free = hw.host.disk_free_bytes
    if free is None:
        out.append(Check("disk", "warn", "free disk at the Hugging Face cache unknown", "check HF_HOME"))
    elif free < need_disk:
        out.append(Check("disk", "fail", f"{gib(free)} free at {hw.host.disk_path}, the checkpoint needs {gib(need_disk)}",
                         "free space, or point HF_HOME at a larger disk"))
    else:
        out.append(Check("disk", "ok", f"{gib(free)} free at {hw.host.disk_path}; the checkpoint takes {gib(need_disk)}"))
    return out


def _driver_check(eng, version, hw) -> Check:
    need = (eng.runtime(version) or {}).get("min_driver")
    have = (hw.driver or {}).get("version")
    if not have:
        return Check("driver", "warn", "NVIDIA driver version unknown (no NVML)", "install the NVIDIA driver")
    if need and Version(have) < Version(need):
        return Check("driver", "fail", f"driver {have} is older than {need}, which {eng.name} {version} "
                     f"(CUDA {eng.runtime(version).get('cuda')}) needs",
                     f"upgrade the driver to {need}+ or plan for an older engine (--engine-version)")
    return Check("driver", "ok", f"driver {have} (CUDA {hw.driver.get('cuda') or '?'}); {eng.name} {version} needs {need}+")


def _engine_checks(plan, hw, eng, version, parse) -> list[Check]:
    from qwenplan.launch.engine_parser import run_parser

    out: list[Check] = []
    # engine installed
    pkg = "vllm" if eng.id == "vllm-offload" else eng.id
    installed = (hw.engines or {}).get(eng.id) or (hw.engines or {}).get(pkg)
    if not installed:
        out.append(Check("engine", "fail", f"{eng.name} is not installed", plan.engine["install"]))
    elif Version(installed) != Version(version) and eng.id != "vllm-offload":
        out.append(Check("engine", "warn", f"{eng.name} {installed} installed, the plan is for {version}",
                         f"{plan.engine['install']}  (or plan for {installed} with --engine-version {installed})"))
    else:
        out.append(Check("engine", "ok", f"{eng.name} {installed}"))
    note = nearest_note(eng.id, version)
    if note:
        out.append(Check("flags", "warn", note, "" if installed else plan.engine["install"]))
    # the argv through the engine's own parser
    argv = plan.command["argv"]
    if parse and installed:
        r = run_parser("sglang" if eng.id == "sglang" else "vllm", argv)
        if r is None:
            out.append(Check("parser", "warn", f"could not find the Python of `{argv[0]}`", "check PATH"))
        elif r.ok:
            out.append(Check("parser", "ok", f"{argv[0]}'s own parser accepts the planned argv ({r.python})"))
        else:
            out.append(Check("parser", "fail", f"{argv[0]}'s parser refuses the argv: {r.error}",
                             "plan for the installed version: --engine-version " + installed))
    return out


def _llamacpp_checks(plan, version) -> list[Check]:
    """`llama-server --version`, and the planned argv against that build's own --help."""
    from qwenplan.launch import llamacpp

    path = llamacpp.find_server()
    if not path:
        return [Check("engine", "fail", "llama-server is not installed (not on PATH)", plan.engine["install"])]
    build = llamacpp.version(path)
    if build is None:
        return [Check("engine", "fail", f"{path} --version names no build number", plan.engine["install"])]
    out = [Check("engine", "ok" if build.build == version else "warn", f"llama.cpp {build.build} ({build.commit}) at {path}",
                 "" if build.build == version else f"the plan is for {version}: --engine-version {build.build} plans for this build")]
    bad = llamacpp.unknown_flags(plan.command["argv"], llamacpp.flags(path))
    if bad:
        out.append(Check("parser", "fail", f"llama-server {build.build} does not accept: {', '.join(bad)}",
                         f"plan for this build: --engine-version {build.build}"))
    else:
        out.append(Check("parser", "ok", f"every flag of the planned argv is in llama-server {build.build}'s --help"))
    return out
