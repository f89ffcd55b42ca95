"""The example boxes of the issue get sensible plans, and every plan stays within memory."""

import json
from pathlib import Path

import pytest

from qwenplan.launch.render import render
from qwenplan.planner import hardware
from qwenplan.planner.catalog import find_gpu
from qwenplan.planner.decide import PlanOptions, make_plan

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "hardware"
GiB = 1 << 30


def plan_for(name, **opts):
    hw = hardware.load(EXAMPLES / f"{name}.json", lookup=find_gpu)
    p = make_plan(hw, PlanOptions(**opts))
    if p.status == "ok":
        p.command = render(p.to_dict())
    return p


def assert_within_budget(p):
    """The memory split adds up, from the document's own figures: the engine pages everything
    its budget leaves after weights, activation, non-torch and (when profiled) graph memory as
    cache; the budget, what stays outside it and the headroom make up the GPU's CUDA total."""
    m = p.memory if hasattr(p, "memory") else p["memory"]
    engine = (p.engine if hasattr(p, "engine") else p["engine"])["name"]
    for g in m["gpus"]:
        graphs = g.get("cudagraph_bytes", 0)             # llama.cpp plans have no CUDA graph memory
        inside = graphs if m.get("cudagraph_in_budget", True) else 0
        parts = (g["weights_bytes"] + g.get("expert_cache_bytes", 0) + g.get("activation_bytes", 0)
                 + g.get("non_torch_bytes", 0) + inside + g["kv_cache_bytes"])
        assert g["kv_cache_bytes"] > 0, g
        if engine.startswith("llama"):       # llama.cpp allocates the context's cache, not the rest
            assert parts <= g["budget_bytes"], g
        elif engine == "sglang":
            # SGLang adds the MTP draft's KV pool outside its fraction, and the fraction has two
            # decimals: what is used stays within the budget by less than 1 % of the GPU.
            assert parts + m["sglang"]["draft_kv_bytes"] == g["used_bytes"] <= g["budget_bytes"], g
            assert g["budget_bytes"] - g["used_bytes"] < 0.01 * g["total_bytes"], g
            assert g["budget_bytes"] + (graphs - inside) + g["headroom_bytes"] == g["total_bytes"], g
        else:
            assert parts == g["budget_bytes"] == g["used_bytes"], g
            assert g["budget_bytes"] + (graphs - inside) + g["headroom_bytes"] == g["total_bytes"], g
    # one full-length request always fits: vLLM refuses to start otherwise
    assert m["full_length_seqs"] >= 1
    settings = p.settings if hasattr(p, "settings") else p["settings"]
    assert m["max_len_that_fits"] >= settings["max_model_len"]


def decision(p, key):
    d = p.decision(key)
    assert d is not None and d.reason and d.source, key
    return d


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.json")))
def test_every_example_box_plans_within_memory_with_reasons(name):
    p = plan_for(name)
    assert p.status == "ok", p.requirements
    assert_within_budget(p)
    for key in ("engine", "variant", "parallel", "kv_cache_dtype", "max_model_len", "max_num_seqs",
                "speculative", "enforce_eager", "expert_cache_size"):
        decision(p, key)
    assert p.command["argv"][0] in ("vllm", "sglang", "llama-server")
    assert "--host" in p.command["argv"] and p.command["argv"][p.command["argv"].index("--host") + 1] == "127.0.0.1"


def test_one_rtx3060_gets_llama_cpp_as_the_fork_would_keep_too_few_experts():
    # issue 15: the fork below 128 resident experts is a plan nobody should run; llama.cpp keeps
    # the experts it cannot hold in host RAM and reads them there (issue 16)
    p = plan_for("rtx3060-12gb")
    assert p.engine["name"] == "llamacpp"
    assert make_plan(hardware.load(EXAMPLES / "rtx3060-12gb.json", lookup=find_gpu),
                     PlanOptions(engine="vllm-offload")).status == "infeasible"
    assert p.settings["n_cpu_moe"] > 0 and p.memory["host_expert_bytes"] > 0   # experts read from host RAM
    assert "--n-cpu-moe" in p.command["argv"]


def test_one_rtx4090_serves_int4_without_offload_at_a_useful_context():
    p = plan_for("rtx4090")
    assert p.engine["name"] == "vllm" and p.variant["id"] == "hlwq-int4"
    assert p.settings["max_model_len"] >= 65536
    assert p.settings["kv_cache_dtype"] == "fp8"


def test_a6000_and_what_the_w4a16_card_really_holds():
    p = plan_for("rtx-a6000")
    # CUDA graphs on Ampere + Marlin MoE: no evidence for eager (vLLM #36889 closed unmerged), ~18x slower
    assert p.settings["enforce_eager"] is False
    assert not any(d.key.startswith("workaround:ampere") for d in p.decisions)
    # The card's own setting: 262k context, 16 sequences, FP8 KV.
    card = plan_for("rtx-a6000", variant="w4a16-88plug", context=262144, concurrency=16, kv_dtype="fp8")
    assert card.status == "ok"
    assert card.settings["max_num_seqs"] == 16
    full = card.memory["full_length_seqs"]
    assert 1 <= full < 16                                 # far fewer than 16 full-length requests at once
    assert any(f"holds {full} full-length" in w for w in card.warnings)


def test_a100_keeps_cuda_graphs_with_marlin_moe():
    # FP8 runs through FP8 Marlin below cc 8.9; eager is not forced without evidence (issue 15)
    fp8 = plan_for("a100-80gb", variant="fp8")
    assert fp8.settings["enforce_eager"] is False


def test_h100_uses_fp8_at_full_context_and_bf16_needs_more_memory():
    p = plan_for("h100-80gb")
    assert p.variant["id"] == "fp8" and p.settings["max_model_len"] == 262144
    assert p.settings["kv_cache_dtype"] == "auto"
    assert not p.settings["speculative"]                  # vLLM #36872: FP8 + MTP gibberish
    assert any("36872" in w for w in p.warnings)
    bf16 = plan_for("h100-80gb", variant="bf16", kv_dtype="auto", context=262144)
    assert bf16.status == "infeasible"                    # gpu-truth: 5.03 GiB needed, 3.26 GiB available
    assert any("without --variant" in r for r in bf16.requirements)


def test_h200_and_rtx_pro_6000_serve_bf16_with_mtp():
    for name in ("h200", "rtx-pro-6000"):
        p = plan_for(name)
        assert p.variant["id"] == "bf16", name
        assert p.settings["speculative"] == {"method": "mtp", "num_speculative_tokens": 2}
        assert p.settings["max_model_len"] == 262144


def test_four_rtx3060_get_the_gptq_card_tensor_parallel_4_with_mtp():
    p = plan_for("4x-rtx3060-12gb")
    assert p.variant["id"] == "gptq-int4"
    assert (p.parallel["tensor"], p.parallel["data"]) == (4, 1)
    assert p.settings["speculative"]["method"] == "mtp"
    assert "--quantization" not in p.command["argv"]       # moe_wna16 breaks vLLM's MTP loader
    assert p.settings["kv_cache_dtype"] == "fp8"


def test_two_h200_use_both_gpus_by_predicted_speed_and_long_context_uses_tensor_parallel():
    p = plan_for("2x-h200-nvlink")
    assert p.parallel["tensor"] * p.parallel["data"] == 2
    assert p.command["env"]["CUDA_VISIBLE_DEVICES"].count(",") == 1
    reason = p.decision("parallel").reason
    assert "predicted" in reason and "TP 1 x DP 2" in reason + f"TP {p.parallel['tensor']} x DP {p.parallel['data']}"
    lc = plan_for("2x-h200-nvlink", goal="long-context")
    assert lc.parallel["tensor"] == 2 and lc.settings["max_model_len"] > 262144
    assert lc.settings["hf_overrides"]["text_config"]["rope_parameters"]["rope_type"] == "yarn"
    assert lc.command["env"]["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] == "1"


def test_no_gpu_gets_a_llama_cpp_plan_on_the_cpu():
    p = plan_for("no-gpu")
    assert p.status == "ok" and p.engine["name"] == "llamacpp"
    assert p.settings["n_gpu_layers"] == 0 and p.memory["gpus"] == []
    assert p.memory["host_total_bytes"] <= 60 * GiB       # the RAM the example box has available


def test_overrides_are_honoured_or_refused_never_changed():
    p = plan_for("h100-80gb", context=131072, concurrency=8, kv_dtype="fp8", mtp=False)
    assert p.settings["max_model_len"] == 131072
    assert p.settings["max_num_seqs"] == 8
    assert p.settings["kv_cache_dtype"] == "fp8"
    big = plan_for("rtx4090", concurrency=500, context=262144)
    assert big.status == "infeasible"
    assert big.requirements


def test_throughput_goal_prefers_many_short_requests_without_mtp():
    p = plan_for("h200", goal="throughput")
    assert p.settings["max_model_len"] == 32768
    assert p.settings["max_num_seqs"] >= 128
    assert not p.settings["speculative"]


def test_committed_example_plans_are_current():
    """examples/plans/ is what `qwenplan plan --json` gives for examples/hardware/.

    A change detector only (the files are regenerated from this code): it says the examples are
    stale, and guards no behaviour on its own; the tests above and test_behaviour.py do."""
    for f in EXAMPLES.glob("*.json"):
        committed = json.loads((EXAMPLES.parent / "plans" / f.name).read_text())
        p = plan_for(f.stem)
        assert committed["status"] == p.status
        assert committed["settings"] == p.to_dict()["settings"], f.name


def test_the_planner_itself_refuses_a_zero_concurrency():
    """The CLI refuses --concurrency 0 first; the planner, called directly, refuses it too."""
    from qwenplan.planner.errors import InputError
    with pytest.raises(InputError, match="--concurrency 0"):
        plan_for("h100-80gb", concurrency=0)


@pytest.mark.parametrize("goal", ["balanced", "long-context"])
def test_sglang_plans_add_up_with_the_draft_kv_outside_the_fraction(goal):
    """An A40 with SGLang (found by the property test): the MTP draft's KV pool sits outside
    --mem-fraction-static and the fraction is rounded down to two decimals; the document says so."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", "from qwenplan.launch.cli import main; main()", "plan", "--json", "--gpu", "A40", "--engine", "sglang",
                          "--goal", goal], capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout)
    assert_within_budget(doc)
    # the draft's KV pool exists exactly when the plan drafts (MTP)
    assert (doc["memory"]["sglang"]["draft_kv_bytes"] > 0) == bool(doc["settings"]["speculative"])
