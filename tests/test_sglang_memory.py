"""SGLang 0.5.14's memory rules (planner/sglang.py) and what an SGLang plan tells the user.

The figures are SGLang's own arithmetic on this model's shapes (profiles/memory.yaml `sglang:`
cites each source line); the plan must never ask SGLang for more running requests than its
DeltaNet state slots allow, since SGLang would cut them at start.
"""

import json

import pytest
from click.testing import CliRunner

from qwenplan.launch.cli import cli
from qwenplan.planner import sglang as sgl
from qwenplan.planner.sizing import Candidate, size
from qwenplan.planner.variants import get_variant

GiB = 1 << 30
H200_MIB, H100_MIB = 143771, 81559
SHAPE = get_variant("bf16").model.shape


def test_defaults_sglang_picks_on_an_h200_and_an_h100():
    assert sgl.default_chunked_prefill(H200_MIB) == 8192 and sgl.default_chunked_prefill(200_000) == 16384
    assert sgl.default_cuda_graph_max_bs(H200_MIB) == 256 and sgl.default_cuda_graph_max_bs(H200_MIB, tp=4) == 512
    # reserved = 512 + 8192 x 1.5 + 256 x 2 + 1/8 x 1024 = 13,440 MiB; then the vision tower's factor
    assert sgl.default_mem_fraction_static(H200_MIB, vision=False) == 0.907
    assert sgl.default_mem_fraction_static(H100_MIB, vision=False) == 0.835
    assert sgl.vlm_factor() == pytest.approx(0.95 * (1 - 0.1 * (1152 ** 2 / 1024 ** 2 - 1)))
    assert sgl.default_mem_fraction_static(H200_MIB) == pytest.approx(0.8388, abs=1e-4)


def test_what_one_token_and_one_request_cost():
    assert sgl.cell_bytes(SHAPE, "auto") == 20480 and sgl.cell_bytes(SHAPE, "fp8_e4m3") == 10240
    assert sgl.cell_bytes(SHAPE, "auto", tp=2) == 10240 and sgl.cell_bytes(SHAPE, "auto", tp=4) == 10240
    assert sgl.draft_cell_bytes(SHAPE, "auto") == 2048
    # 30 DeltaNet layers x (8,192 x 3 x 2 B conv + 32 x 128 x 128 x 4 B state)
    assert sgl.state_per_request(SHAPE) == 64_389_120
    assert sgl.state_per_request(SHAPE, tp=2) == 64_389_120 // 2
    assert sgl.state_per_request(SHAPE, ssm_dtype="bfloat16") == 30 * (8192 * 3 * 2 + 32 * 128 * 128 * 2)


def test_slots_each_running_request_may_hold():
    assert sgl.mamba_ratio("auto") == 5                 # extra_buffer with the overlap scheduler
    assert sgl.mamba_ratio("extra_buffer") == 5 and sgl.mamba_ratio("extra_buffer_lazy") == 4
    assert sgl.mamba_ratio("extra_buffer", overlap=False) == 4
    assert sgl.mamba_ratio("auto", overlap=False) == 3   # auto -> no_buffer without overlap
    assert sgl.mamba_ratio("extra_buffer", radix_cache=False) == 1


def test_the_split_of_a_60_gib_pool_without_mtp():
    """0.9 / 1.9 of 60 GiB buys 473 state slots; the rest is 1,658,616 KV tokens; SGLang's own
    estimate (3,239) and half the tokens are far above 473 / 5 = 94 running requests."""
    p = sgl.split(60 * GiB, state_per_req=64_389_120, cell=20480, fraction=0.9, pre_load=139 * GiB,
                  context_len=262144)
    assert (p.mamba_slots, p.kv_tokens, p.max_running_requests) == (473, 1_658_616, 94)
    asked = sgl.split(60 * GiB, state_per_req=64_389_120, cell=20480, fraction=0.9, pre_load=139 * GiB,
                      context_len=262144, max_running_requests=64)
    assert asked.max_running_requests == 64
    ratio = sgl.split(60 * GiB, state_per_req=64_389_120, cell=20480, fraction=0.9, pre_load=139 * GiB,
                      context_len=262144, mamba_full_memory_ratio=2.0)
    assert ratio.mamba_slots == int(60 * GiB * 2 / 3 // 64_389_120) and ratio.kv_tokens < p.kv_tokens


def test_mtp_pays_intermediate_states_and_a_draft_kv_pool():
    """With MTP (D = 3 draft tokens) each slot also pays D / 5 intermediate states, reserved for
    the running requests; the draft's one-layer KV pool is allocated outside the fraction."""
    plain = sgl.split(60 * GiB, state_per_req=64_389_120, cell=20480, fraction=0.9, pre_load=139 * GiB,
                      context_len=262144, max_running_requests=128)
    mtp = sgl.split(60 * GiB, state_per_req=64_389_120, cell=20480, fraction=0.9, pre_load=139 * GiB,
                    context_len=262144, max_running_requests=128, draft_tokens=3, draft_cell=2048)
    assert mtp.mamba_slots == int(60 * GiB * 0.9 / 1.9 // (64_389_120 * 1.6)) < plain.mamba_slots
    assert mtp.intermediate_bytes == 64_389_120 * (mtp.mamba_slots // 5) * 3
    assert mtp.draft_kv_bytes == (mtp.kv_tokens + 1) * 2048 and plain.draft_kv_bytes == 0


def test_a_served_fraction_gives_the_pool_sglang_sizes():
    """pool = fraction x free before loading - weights (target + draft + vision tower)."""
    c = Candidate(get_variant("bf16"), "sglang", "0.5.14", max_seqs=0)
    s = size(c, 0, True, knobs=sgl.Knobs(mem_fraction_static=0.85, pre_load_bytes=int(139.29 * GiB),
                                         requests_from_candidate=False, context_len=262144))
    assert s.sglang.pool_bytes == int(0.85 * int(139.29 * GiB) - s.weights)
    assert s.weights > 65 * GiB           # BF16 text weights 64.56 GiB + the vision tower SGLang builds
    assert s.kv_tokens(262144) == s.sglang.kv_tokens and s.full_length_seqs(262144) == s.sglang.kv_tokens // 262144


def plan(*args):
    r = CliRunner().invoke(cli, ["plan", "--json", "--gpu", "H200", "--engine", "sglang", "--engine-version", "0.5.14",
                                 *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


@pytest.mark.parametrize("goal", ["balanced", "long-context"])
def test_the_plan_asks_no_more_running_requests_than_sglang_will_run(goal):
    doc = plan("--goal", goal)
    g, st = doc["memory"]["sglang"], doc["settings"]
    argv = doc["command"]["argv"]
    assert float(argv[argv.index("--mem-fraction-static") + 1]) == g["mem_fraction_static"] == st["mem_fraction_static"]
    assert int(argv[argv.index("--max-running-requests") + 1]) == st["max_num_seqs"] == g["max_running_requests"]
    assert st["max_num_seqs"] <= g["mamba_slots"] // g["slots_per_request"]
    assert doc["memory"]["kv_cache_tokens"] == g["kv_tokens"] >= st["max_model_len"]


def test_explain_shows_the_slots_tokens_and_requests():
    r = CliRunner().invoke(cli, ["explain", "--gpu", "H200", "--engine", "sglang", "--engine-version", "0.5.14"])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.strip().startswith("SGLang:"))
    assert "DeltaNet state slots" in line and "KV tokens" in line and "max running requests" in line
