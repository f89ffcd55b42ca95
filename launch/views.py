"""Human output (rich): readable in an 80-column terminal, and plain under NO_COLOR or a pipe."""

from __future__ import annotations

from qwenplan.launch.safe_text import printable
from qwenplan.planner.units import gib
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table


class _Console(Console):
    """Control characters in printed text (a GPU name, a note from a hardware document) are shown
    as \\xNN, never sent to the terminal."""

    def print(self, *objects, **kw):
        super().print(*(printable(o) if isinstance(o, str) else o for o in objects), **kw)


def console() -> Console:
    # rich honours NO_COLOR and TERM=dumb itself; a pipe gets plain text at 80 columns.
    return _Console(highlight=False, soft_wrap=False)


def _table(title: str | None = None) -> Table:
    return Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False, expand=False)


def hardware_table(hw) -> Table:
    t = _table("GPUs (as the engine will see them)")
    for col in ("#", "name", "memory", "free", "cc", "links"):
        t.add_column(col, overflow="fold")
    for g in hw.gpus:
        name = escape(printable(g.name.replace("NVIDIA ", "", 1)))   # text, not rich markup
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
        _block(c, hardware_table(hw))
    else:
        c.print("No GPU visible.")
    for line in host_lines(hw):
        _say(c, line)
    for note in hw.notes:
        _say(c, f"note: {note}")


def show_gpu_profiles(profiles) -> None:
    t = _table()
    for col in ("name", "memory", "cc", "GB/s", "fp8", "fp4", "aliases"):
        t.add_column(col, overflow="fold")
    for p in profiles:
        t.add_row(p.label, f"{p.memory_mib / 1024:.0f} GiB", p.compute_capability,
                  str(p.memory_bandwidth_gbs or "?"), "yes" if p.fp8 else "-", "yes" if p.fp4 else "-",
                  ", ".join(p.aliases[:3]))
    _block(console(), t)


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


def _say(c: Console, text: str, indent: int = 0, markup: bool = False) -> None:
    """One logical line: wrapped under its indent on a terminal; never wrapped when piped."""
    if c.is_terminal:
        from rich.padding import Padding
        from rich.text import Text

        body = Text.from_markup(text) if markup else Text(text)
        c.print(Padding(body, (0, 0, 0, indent)))
    else:
        c.print(" " * indent + text, markup=markup, soft_wrap=True)


def _block(c: Console, renderable) -> None:
    """A table: as rich draws it on a terminal; piped, without the padding's trailing spaces."""
    if c.is_terminal:
        c.print(renderable)
        return
    with c.capture() as cap:
        c.print(renderable)
    for line in cap.get().splitlines():
        c.print(line.rstrip(), markup=False, highlight=False, soft_wrap=True)


def headline(plan) -> str:
    s, par = plan.settings, plan.parallel
    per_rank = " per rank" if par["data"] > 1 else ""
    return (f"{plan.variant['id']} ({plan.variant['repo']}) on {plan.engine['name']} {plan.engine['version']}, "
            f"TP {par['tensor']} x PP {par.get('pipeline', 1)} x DP {par['data']}, {s['max_model_len']:,} tokens, "
            f"{s['max_num_seqs']} sequences{per_rank}")


def _gib(b) -> str:
    return f"{(b or 0) / (1 << 30):.1f}"


def summary_lines(plan) -> list[str]:
    """The card `explain` opens with: what runs, how much it holds, the memory, the warnings, the command."""
    s, par, m, v, e = plan.settings, plan.parallel, plan.memory, plan.variant, plan.engine
    ranks = par["data"]
    gpus = (plan.hardware or {}).get("gpus") or []
    names = sorted({g.get("name", "?").replace("NVIDIA ", "", 1) for g in gpus})
    nodes = par.get("nodes", 1)
    where = f"{len(gpus)} x {', '.join(names)}" if gpus else "no GPU"
    if nodes > 1:
        where += f" per node x {nodes} nodes"
    installed = f" (installed {e['installed']})" if e.get("installed") else " (not installed here)"
    lines = [
        f"checkpoint: {v['id']} ({v['repo']}), {v['size_bytes'] / 1e9:.1f} GB",
        f"engine:     {e['name']} {e['version']}{installed}",
        (f"GPUs:       {where}; TP {par['tensor']} x PP {par.get('pipeline', 1)} x DP {ranks}"
         f"{' (expert parallel)' if par.get('expert') else ''}"),
        f"context:    {s['max_model_len']:,} tokens",
        f"sequences:  {s['max_num_seqs']} per rank x {ranks} rank{'s' if ranks != 1 else ''}",
        (f"KV cache:   ~{m['kv_cache_tokens']:,} tokens per rank; {m['full_length_seqs']} full-length "
         "request(s) at once per rank"),
    ]
    if m.get("sglang"):     # SGLang's split of its pool (planner/sglang.py): what its log will say
        g = m["sglang"]
        lines.append(f"SGLang:     --mem-fraction-static {g['mem_fraction_static']}: {g['mamba_slots']:,} DeltaNet state "
                     f"slots ({_gib(g['mamba_bytes'])} GiB), {g['kv_tokens']:,} KV tokens ({_gib(g['kv_bytes'])} GiB), "
                     f"max running requests {g['max_running_requests']} (slots / {g['slots_per_request']})")
    if e.get("name") == "llamacpp":      # one GPU (or none) and host RAM, one predicted speed
        gpu = (f"GPU {_gib(m['gpu_total_bytes'])} of a {_gib(m['per_gpu_budget_bytes'])} budget; " if m.get("gpus")
               else "")
        return lines + [f"memory:     GiB: {gpu}host RAM {_gib(m['host_total_bytes'])} "
                        f"({_gib(m['host_expert_bytes'])} of it experts, --n-cpu-moe {s.get('n_cpu_moe')})",
                        f"speed:      predicted ~{m['decode_tokens_per_s']:.0f} tokens/s for one sequence"]
    parts = [("weights", m.get("weights_bytes")), ("expert cache", m.get("expert_cache_bytes")),
             ("KV", m.get("kv_cache_bytes")), ("activations", m.get("activation_bytes")),
             ("non-torch", m.get("non_torch_bytes")), ("graphs", m.get("cudagraph_bytes"))]
    split = ", ".join(f"{name} {_gib(b)}" for name, b in parts if b)
    lines.append(f"memory:     per GPU, GiB: {split}; budget {_gib(m['per_gpu_budget_bytes'])} "
                 f"of {_gib(m['per_gpu_budget_bytes'] + m['headroom_bytes'])}")
    model = next((d for d in plan.decisions if d.key == "memory_model"), None)
    if model is not None and model.value != "formula":     # an engine's report changed this plan
        lines.append(f"            {model.value}: {model.reason} (see `{model.source}`)")
    lines += performance_lines(plan.to_dict().get("performance"))
    return lines


def performance_lines(perf) -> list[str]:
    """Predicted speed, when the plan carries it (plan.to_dict()["performance"]); nothing otherwise."""
    if not perf:
        return []
    levels = perf.get("levels") or {}
    shown = [f"{name} {lv['tokens_per_s']:,.0f} tokens/s (TTFT {lv['ttft_s']:.2f} s)"
             for name, lv in levels.items() if lv.get("tokens_per_s") is not None and lv.get("ttft_s") is not None]
    if not shown:
        return []
    return [f"speed:      predicted (cN: N requests at once): {'; '.join(shown)}"]


def show_plan(plan, brief: bool = False, verbose: bool = False) -> None:
    """brief: the headline, warnings and the command (plan, auto). Otherwise the summary card,
    and with `verbose` every decision with its reason and source, the memory table, the rest."""
    from qwenplan.planner.hardware import from_dict

    c = console()
    hw = from_dict(plan.hardware) if plan.hardware else None
    if plan.status != "ok":
        if hw is not None and verbose:
            show_hardware(hw)
            c.print()
        _say(c, f"[bold]No plan fits[/bold] (goal {plan.goal}).", markup=True)
        for d in plan.decisions:
            _say(c, d.reason, 2)
        if plan.requirements:
            _say(c, "What it would take / why not:")
            for r in plan.requirements:
                _say(c, f"- {r}", 2)
        for w in plan.warnings:
            _say(c, f"warning: {w}")
        return
    _say(c, f"[bold]Plan[/bold] ({plan.goal}): " + escape(headline(plan)), markup=True)
    changed = next((d for d in plan.decisions if d.key == "calibration"), None)
    if changed is not None:
        # a stored engine report changed the plan: say so up front, with the files to inspect
        _say(c, f"calibrated: {changed.reason}; reports: {changed.source}")
    if not brief:
        for line in summary_lines(plan):
            _say(c, line, 2)
    if verbose:
        _details(c, plan, hw)
    if plan.warnings:
        if not brief:
            c.print()
        for w in plan.warnings:
            _say(c, "[yellow]warning:[/yellow] " + escape(w), markup=True)
    cmd = plan.command
    if cmd.get("argv"):
        c.print()
        _say(c, "[bold]Command[/bold]" + (f" (flags checked against {plan.engine['name']} "
                                          f"{cmd['flags_checked_against']})" if cmd.get("flags_checked_against") else ""),
             markup=True)
        c.print(cmd["shell"], soft_wrap=True, markup=False)
        secrets = cmd.get("secret_env", []) + [a["env"] for a in cmd.get("secret_args", [])]
        _say(c, f"secrets from the environment, never written out: {', '.join(secrets)}")
        if not plan.engine.get("installed"):
            c.print("install:")
            c.print(plan.engine["install"], soft_wrap=True, markup=False)
    if not brief and not verbose:
        _say(c, "each decision with its reason and sources: qwenplan explain --verbose")


def _details(c: Console, plan, hw) -> None:
    s = plan.settings
    if hw is not None:
        c.print()
        show_hardware(hw)
    c.print()
    c.print("[bold]Decisions[/bold]")
    for d in plan.decisions:
        _say(c, f"[bold]{d.key}[/bold]: " + escape(_value(d.value)), markup=True)
        _say(c, d.reason, 4)
        _say(c, f"source: {d.source}", 4)
    c.print()
    _block(c, llamacpp_table(plan) if plan.engine.get("name") == "llamacpp" else memory_table(plan))
    m = plan.memory
    _say(c, f"KV cache: {m['kv_bytes_per_token']:,} B/token, DeltaNet state {m['state_bytes_per_seq'] / (1 << 20):.1f} "
            f"MiB/sequence, attention block {m.get('block_size')} tokens; the pool of each rank holds "
            f"{m['full_length_seqs']} request(s) of {s['max_model_len']:,} tokens at once (the engine will report "
            f"~{m['kv_cache_tokens']:,} tokens per rank, {m['max_concurrency_at_max_len']}x)")
    if plan.rejected:
        c.print()
        c.print("[bold]Rejected[/bold]")
        for r in plan.rejected:
            _say(c, f"{r.variant}: {r.reason}", 2)
    if plan.alternatives:
        c.print("[bold]Also fits[/bold]")
        for a in plan.alternatives:
            _say(c, f"{a['variant']} ({a['engine']}): {a['max_model_len']:,} tokens, {a['max_num_seqs']} seqs per "
                    f"rank, TP {a['tensor']} x DP {a['data']}, KV {a['kv_cache_dtype']}", 2)


def show_variants(rows) -> None:
    t = _table("Checkpoint variants")
    for col in ("variant", "GB", "fits", "why"):
        t.add_column(col, overflow="fold")
    for r in rows:
        mark = "chosen" if r["chosen"] else ("yes" if r["fits"] else "no")
        t.add_row(r["id"], f"{r['size_bytes'] / 1e9:.1f}", mark, r["summary"])
    _block(console(), t)
