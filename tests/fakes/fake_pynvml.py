"""A stand-in for the `pynvml` module (nvidia-ml-py) that replays NVML answers recorded on a
real machine (`qwenplan probe --capture`, the format of shared/fixtures/probes/).

An answer recorded as {"error": "NVMLError_NotSupported", ...} is raised as that error, as
NVML raised it; an answer the capture lacks is NotSupported too.
"""

from __future__ import annotations

import types
from collections import namedtuple

NVML_FEATURE_ENABLED = 1
NVML_DEVICE_MIG_ENABLE = 1
NVML_NVLINK_MAX_LINKS = 18
NVML_P2P_CAPS_INDEX_NVLINK = 2
NVML_P2P_STATUS_OK = 0
NVML_CLOCK_SM = 1
nvmlMemory_v2 = 33554472

_ERROR_NAMES = ["NotSupported", "LibraryNotFound", "DriverNotLoaded", "NotFound", "InvalidArgument",
                "NoPermission", "Unknown", "GpuIsLost", "Uninitialized", "FunctionNotFound"]

Memory = namedtuple("Memory", "total free used")
MemoryV2 = namedtuple("MemoryV2", "version total reserved free used")
Pci = namedtuple("Pci", "busId")


def make(capture: dict) -> types.ModuleType:
    """A module object behaving like pynvml on the machine the capture came from."""
    m = types.ModuleType("pynvml")
    for name in ("NVML_FEATURE_ENABLED", "NVML_DEVICE_MIG_ENABLE", "NVML_NVLINK_MAX_LINKS",
                 "NVML_P2P_CAPS_INDEX_NVLINK", "NVML_P2P_STATUS_OK", "NVML_CLOCK_SM", "nvmlMemory_v2"):
        setattr(m, name, globals()[name])

    class NVMLError(Exception):
        pass

    m.NVMLError = NVMLError
    errors = {}
    for short in _ERROR_NAMES:
        errors[f"NVMLError_{short}"] = type(f"NVMLError_{short}", (NVMLError,), {})
        setattr(m, f"NVMLError_{short}", errors[f"NVMLError_{short}"])
    state = {"init": False, "calls": []}
    m._state = state

    def answer(value, path=""):
        if value is None:
            raise errors["NVMLError_NotSupported"](f"not in capture: {path}")
        if isinstance(value, dict) and "error" in value:
            raise errors.get(value["error"], errors["NVMLError_Unknown"])(value.get("detail", ""))
        return value

    def device(handle):
        if not state["init"]:
            raise errors["NVMLError_Uninitialized"]("nvmlInit was not called")
        return handle

    def nvmlInit():
        state["calls"].append("init")
        if capture.get("init_error"):
            answer({"error": capture["init_error"], "detail": "NVML init failed"})
        state["init"] = True

    def nvmlShutdown():
        state["calls"].append("shutdown")
        state["init"] = False

    m.nvmlInit, m.nvmlShutdown = nvmlInit, nvmlShutdown
    m.nvmlSystemGetDriverVersion = lambda: answer(capture.get("driver_version"), "driver_version")
    m.nvmlSystemGetCudaDriverVersion = lambda: answer(capture.get("cuda_driver_version"), "cuda_driver_version")
    m.nvmlDeviceGetCount = lambda: answer(capture.get("device_count", len(capture.get("devices", []))), "count")

    def by_index(i):
        devs = capture.get("devices", [])
        if i >= len(devs):
            answer({"error": "NVMLError_InvalidArgument"})
        return ("gpu", i)

    m.nvmlDeviceGetHandleByIndex = by_index

    def rec(handle):
        device(handle)
        kind, i, *rest = handle
        d = capture["devices"][i]
        return d if kind == "gpu" else d["mig_devices"][rest[0]]

    m.nvmlDeviceGetName = lambda h: answer(rec(h).get("name"), "name")
    m.nvmlDeviceGetUUID = lambda h: answer(rec(h).get("uuid"), "uuid")
    m.nvmlDeviceGetPciInfo = lambda h: Pci(answer((rec(h).get("pci") or {}).get("busId"), "pci"))

    def memory(h, version=None):
        d = rec(h)
        if version:
            v = answer(d.get("memory_v2"), "memory_v2")
            return MemoryV2(v["version"], v["total"], v["reserved"], v["free"], v["used"])
        v = answer(d.get("memory_v1"), "memory_v1")
        return Memory(v["total"], v["free"], v["used"])

    m.nvmlDeviceGetMemoryInfo = memory
    m.nvmlDeviceGetCudaComputeCapability = lambda h: tuple(answer(rec(h).get("compute_capability"), "cc"))
    m.nvmlDeviceGetMigMode = lambda h: tuple(answer(rec(h).get("mig_mode"), "mig_mode"))
    m.nvmlDeviceGetMaxMigDeviceCount = lambda h: len(rec(h).get("mig_devices") or [])

    def mig_handle(h, slot):
        d = rec(h)
        migs = d.get("mig_devices") or []
        if slot >= len(migs) or migs[slot] is None:
            answer({"error": "NVMLError_NotFound"})
        return ("mig", h[1], slot)

    m.nvmlDeviceGetMigDeviceHandleByIndex = mig_handle
    m.nvmlDeviceGetNumGpuCores = lambda h: answer(rec(h).get("num_gpu_cores"), "cores")
    m.nvmlDeviceGetMaxClockInfo = lambda h, clock: answer(rec(h).get("max_clock_sm_mhz"), "clock")
    m.nvmlDeviceGetComputeRunningProcesses = lambda h: answer(rec(h).get("compute_processes"), "processes")

    def link(h, n):
        links = rec(h).get("nvlink") or []
        if n >= len(links):
            answer({"error": "NVMLError_InvalidArgument"})
        return links[n]

    m.nvmlDeviceGetNvLinkState = lambda h, n: answer(link(h, n).get("state"), "nvlink state")
    m.nvmlDeviceGetNvLinkRemotePciInfo = lambda h, n: Pci(answer(link(h, n).get("remote_bus_id"), "remote"))

    def p2p(h1, h2, index):
        key = f"{min(h1[1], h2[1])},{max(h1[1], h2[1])}"
        entry = (capture.get("p2p") or {}).get(key)
        return answer(None if entry is None else entry.get(str(index), entry.get("nvlink")), "p2p")

    m.nvmlDeviceGetP2PStatus = p2p
    return m
