"""Over random hardware documents the planner never crashes, never plans past memory, and
always returns a plan or a clear reason."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwenplan.launch.render import render
from qwenplan.planner import hardware
from qwenplan.planner.catalog import find_gpu, gpus
from qwenplan.planner.decide import PlanOptions, make_plan
from qwenplan.planner.errors import InputError
from tests.test_plans import assert_within_budget

NAMES = [g.name for g in gpus()]


@st.composite
def hardware_docs(draw):
    n = draw(st.integers(0, 8))
    same = draw(st.booleans())
    first = draw(st.sampled_from(NAMES))
    gpu_list = []
    for i in range(n):
        name = first if same else draw(st.sampled_from(NAMES))
        doc = {"index": i, "name": name}
        if draw(st.booleans()):   # a GPU the profiles may not know, or a busy one
            total = draw(st.integers(4 << 30, 200 << 30))
            doc.update(memory_total_bytes=total, memory_free_bytes=draw(st.integers(0, total)),
                       compute_capability=draw(st.sampled_from(["7.0", "7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "12.0"])),
                       name=draw(st.sampled_from([name, "NVIDIA Mystery GPU"])))
        gpu_list.append(doc)
    if n > 1 and draw(st.booleans()):
        for g in gpu_list:
            g["nvlink_peers"] = [j for j in range(n) if j != g["index"]]
    host = {"ram_total_bytes": draw(st.integers(1 << 30, 2 << 40)), "disk_free_bytes": draw(st.integers(0, 4 << 40))}
    host["ram_available_bytes"] = draw(st.integers(0, host["ram_total_bytes"]))
    return {"schema": "qwenplan.hardware/1", "gpus": gpu_list, "host": host}


options = st.builds(PlanOptions, goal=st.sampled_from(["balanced", "long-context", "throughput"]),
                    engine=st.sampled_from(["auto", "vllm", "sglang"]),
                    context=st.one_of(st.none(), st.sampled_from([8192, 32768, 131072, 262144, 1010000])),
                    concurrency=st.one_of(st.none(), st.integers(1, 512)),
                    kv_dtype=st.one_of(st.none(), st.sampled_from(["auto", "fp8"])),
                    mtp=st.sampled_from([None, False]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hardware_docs(), options)
def test_planner_never_crashes_nor_plans_past_memory(doc, opts):
    hw = hardware.from_dict(doc, lookup=find_gpu)
    try:
        p = make_plan(hw, opts)
    except InputError as e:           # a clear refusal of an option: one line with the fix
        assert e.problem and e.fix
        assert any(o in e.problem for o in REFUSABLE), e.problem
        return
    if p.status != "ok":
        assert p.requirements, p.warnings   # what it would take, always
        assert not roomy(doc, opts), (doc, opts, p.requirements)
        return
    assert_within_budget(p)
    assert p.settings["max_num_seqs"] >= 1
    render(p.to_dict())               # and the command renders with flags its version accepts


# The options a random draw may combine into a refusal, e.g. --kv-dtype fp8 below compute capability 8.0.
REFUSABLE = ("--kv-dtype", "--context", "--engine", "sglang", "SGLang", "vllm", "vLLM")


def roomy(doc: dict, opts: PlanOptions) -> bool:
    """A box where some plan always fits: one or more idle 80 GB+ GPUs the profiles know, and
    options that ask for no more than one H100 serves (FP8 at 262k tokens)."""
    gpus = doc["gpus"]
    known = [find_gpu(g["name"]) for g in gpus]
    return (bool(gpus) and all(k is not None and k.memory_bytes >= 80e9 and (k.compute_capability or "0") >= "8.9"
                               for k in known)
            and all("memory_total_bytes" not in g for g in gpus)
            and (opts.context or 0) <= 262144 and (opts.concurrency or 1) <= 64 and opts.engine != "sglang")
