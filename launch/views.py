"""Human output (rich): readable in an 80-column terminal, and plain under NO_COLOR or a pipe."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich import box

from qwenplan.planner.units import gib


def console() -> Console:
    # rich honours NO_COLOR and TERM=dumb itself; a pipe gets plain text at 80 columns.
    return Console(highlight=False, soft_wrap=False)


def _table(title: str | None = None) -> Table:
    return Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False, expand=False)


def hardware_table(hw) -> Table:
    t = _table("GPUs (as the engine will see them)")
    for col in ("#", "name", "memory", "free", "cc", "links"):
        t.add_column(col, overflow="fold")
    for g in hw.gpus:
        name = g.name.replace("NVIDIA ", "", 1)
        links = "NVLink " + ",".join(map(str, g.nvlink_peers)) if g.nvlink_peers else ("MIG" if g.mig else "-")
        t.add_row(str(g.index), name, gib(g.memory_total_bytes, 1), gib(g.memory_free_bytes, 1),
                  g.compute_capability or "?", links)
    return t


def host_lines(hw) -> list[str]:
    h = hw.host
    ram = gib(h.ram_total_bytes, 1)
    if h.cgroup_memory_limit_bytes is not None:
        ram += f" (cgroup limit {gib(h.cgroup_memory_limit_bytes, 1)})"
    engines = ", ".join(f"{k} {v}" for k, v in hw.engines.items() if v) or "none installed"
    driver = hw.driver.get("version") or "unknown"
    if hw.driver.get("cuda"):
        driver += f" (CUDA {hw.driver['cuda']})"
    return [
        f"host: RAM {ram}, available {gib(h.ram_available_bytes, 1)}, {h.cpu_count or '?'} CPUs, "
        f"/dev/shm {gib(h.shm_bytes, 1)}",
        f"disk: {gib(h.disk_free_bytes, 1)} free at {h.disk_path or '?'}",
        f"driver: {driver}; engines: {engines}",
    ]


def show_hardware(hw) -> None:
    c = console()
    if hw.gpus:
        c.print(hardware_table(hw))
    else:
        c.print("No GPU visible.")
    for line in host_lines(hw):
        c.print(line)
    for note in hw.notes:
        c.print(f"note: {note}")


def show_gpu_profiles(profiles) -> None:
    t = _table()
    for col in ("name", "memory", "cc", "GB/s", "fp8", "fp4", "aliases"):
        t.add_column(col, overflow="fold")
    for p in profiles:
        t.add_row(p.label, f"{p.memory_mib / 1024:.0f} GiB", p.compute_capability,
                  str(p.memory_bandwidth_gbs or "?"), "yes" if p.fp8 else "-", "yes" if p.fp4 else "-",
                  ", ".join(p.aliases[:3]))
    console().print(t)
