"""A stand-in for `psutil` that replays what psutil answered on a captured machine."""

from __future__ import annotations

import types
from collections import namedtuple

VM = namedtuple("svmem", "total available percent used free")
Swap = namedtuple("sswap", "total used free percent sin sout")
Disk = namedtuple("sdiskusage", "total used free percent")


def make(capture: dict) -> types.ModuleType:
    m = types.ModuleType("psutil")
    vm = capture["virtual_memory"]
    sw = capture.get("swap") or {"total": 0, "used": 0, "free": 0, "percent": 0.0, "sin": 0, "sout": 0}
    m.virtual_memory = lambda: VM(vm["total"], vm["available"], vm.get("percent", 0.0), vm.get("used", 0),
                                  vm.get("free", 0))
    m.swap_memory = lambda: Swap(sw["total"], sw.get("used", 0), sw.get("free", 0), sw.get("percent", 0.0),
                                 sw.get("sin", 0), sw.get("sout", 0))
    m.cpu_count = lambda logical=True: capture.get("cpu_count_logical" if logical else "cpu_count_physical")

    def disk_usage(path):
        d = capture["disk_shm"] if str(path) == "/dev/shm" else capture["disk_root"]
        return Disk(d["total"], d["used"], d["free"], d["percent"])

    m.disk_usage = disk_usage
    return m
