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


# --- plans ---------------------------------------------------------------------------------

def _value(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {x}" for k, x in v.items())
    if v is None:
        return "none"
    return str(v)


def memory_table(plan) -> Table:
    m = plan.memory
    t = _table("Memory per GPU (the memory model; bytes in GiB)")
    t.add_column("part")
    t.add_column("GiB", justify="right")
    t.add_column("", overflow="ellipsis", max_width=40)
    budget = m["per_gpu_budget_bytes"]
    rows = [("weights", m["weights_bytes"]), ("expert cache", m.get("expert_cache_bytes", 0)),
            ("activation peak", m["activation_bytes"]), ("non-torch", m["non_torch_bytes"]),
            ("CUDA graphs" + ("" if m.get("cudagraph_in_budget", True) else " (outside)"), m["cudagraph_bytes"]),
            ("KV cache + state", m["kv_cache_bytes"])]
    width = 36
    for name, b in rows:
        if not b:
            continue
        bar = "#" * max(1, round(width * b / budget)) if budget else ""
        t.add_row(name, f"{b / (1 << 30):.2f}", bar)
    t.add_row("budget", f"{budget / (1 << 30):.2f}", f"fraction {plan.settings.get('gpu_memory_utilization') or plan.settings.get('mem_fraction_static')}")
    t.add_row("outside budget", f"{m['headroom_bytes'] / (1 << 30):.2f}", "CUDA context, other processes")
    return t


def llamacpp_table(plan) -> Table:
    """llama.cpp: what sits on the GPU and in host RAM, and the predicted decode speed."""
    m = plan.memory
    t = _table(f"Memory (GiB) and speed: ~{m['decode_tokens_per_s']} tokens/s for one sequence (predicted)")
    for col in ("part", "GPU", "host RAM"):
        t.add_column(col, justify="right" if col != "part" else "left")
    gpu = bool(m["gpus"])
    kv = m["kv_cache_bytes"]
    rows = [("weights", m["gpu_weights_bytes"], m["host_weights_bytes"]),
            ("  of which experts", None, m["host_expert_bytes"]),
            ("KV cache + DeltaNet state", kv if gpu else 0, 0 if gpu else kv),
            ("compute buffers", m["compute_gpu_bytes"], m["compute_host_bytes"]),
            ("context checkpoints", 0, m["ctx_checkpoint_bytes"]),
            ("prompt cache (--cache-ram)", 0, m["cache_ram_bytes"]),
            ("total", m["gpu_total_bytes"], m["host_total_bytes"])]
    for name, g, h in rows:
        t.add_row(name, "-" if not g else f"{g / (1 << 30):.2f}", "-" if not h else f"{h / (1 << 30):.2f}")
    if gpu:
        t.add_row("GPU budget", f"{m['per_gpu_budget_bytes'] / (1 << 30):.2f}", "")
    return t


def show_plan(plan, brief: bool = False) -> None:
    from qwenplan.planner.hardware import from_dict

    c = console()
    hw = from_dict(plan.hardware) if plan.hardware else None
    if hw is not None and not brief:
        show_hardware(hw)
        c.print()
    if plan.status != "ok":
        c.print(f"[bold]No plan fits[/bold] (goal {plan.goal}).")
        for d in plan.decisions:
            c.print(f"  {d.reason}")
        if plan.requirements:
            c.print("What it would take / why not:")
            for r in plan.requirements:
                c.print(f"  - {r}")
        for w in plan.warnings:
            c.print(f"[yellow]warning:[/yellow] {w}")
        return
    s = plan.settings
    c.print(f"[bold]Plan[/bold] ({plan.goal}): {plan.variant['id']} ({plan.variant['repo']}) on "
            f"{plan.engine['name']} {plan.engine['version']}, TP {plan.parallel['tensor']} x DP "
            f"{plan.parallel['data']}, {s['max_model_len']:,} tokens, {s['max_num_seqs']} sequences")
    if not brief:
        c.print()
        c.print("[bold]Decisions[/bold]")
        for d in plan.decisions:
            c.print(f"[bold]{d.key}[/bold]: {_value(d.value)}")
            c.print(f"    {d.reason}", soft_wrap=False)
            c.print(f"    [dim]source: {d.source}[/dim]")
        c.print()
        if plan.engine.get("name") == "llamacpp":
            c.print(llamacpp_table(plan))
        else:
            c.print(memory_table(plan))
        m = plan.memory
        c.print(f"KV cache: {m['kv_bytes_per_token']:,} B/token, DeltaNet state {m['state_bytes_per_seq'] / (1 << 20):.1f} MiB"
                f"/sequence, attention block {m.get('block_size')} tokens; the pool holds "
                f"{m['full_length_seqs']} request(s) of {s['max_model_len']:,} tokens at once "
                f"(engine will report ~{m['kv_cache_tokens']:,} tokens, {m['max_concurrency_at_max_len']}x)")
        if plan.rejected:
            c.print()
            c.print("[bold]Rejected[/bold]")
            for r in plan.rejected:
                c.print(f"  {r.variant}: {r.reason}")
        if plan.alternatives:
            c.print("[bold]Also fits[/bold]")
            for a in plan.alternatives:
                c.print(f"  {a['variant']} ({a['engine']}): {a['max_model_len']:,} tokens, {a['max_num_seqs']} seqs, "
                        f"TP {a['tensor']} x DP {a['data']}, KV {a['kv_cache_dtype']}")
    for w in plan.warnings:
        c.print(f"[yellow]warning:[/yellow] {w}")
    cmd = plan.command
    if cmd.get("argv"):
        c.print()
        c.print("[bold]Command[/bold]" + (f" (flags checked against {plan.engine['name']} {cmd['flags_checked_against']})"
                                          if cmd.get("flags_checked_against") else ""))
        c.print(cmd["shell"], soft_wrap=True, markup=False)
        secrets = cmd.get("secret_env", []) + [a["env"] for a in cmd.get("secret_args", [])]
        c.print(f"[dim]secrets from the environment, never written out: {', '.join(secrets)}[/dim]")
        if not plan.engine.get("installed"):
            c.print("install:")
            c.print(plan.engine["install"], soft_wrap=True, markup=False)


def show_variants(rows) -> None:
    t = _table("Checkpoint variants")
    for col in ("variant", "GB", "fits", "why"):
        t.add_column(col, overflow="fold")
    for r in rows:
        mark = "chosen" if r["chosen"] else ("yes" if r["fits"] else "no")
        t.add_row(r["id"], f"{r['size_bytes'] / 1e9:.1f}", mark, r["summary"])
    console().print(t)
