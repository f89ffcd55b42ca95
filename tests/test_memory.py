"""The memory model against what real vLLM 0.26.0 reported on an H100 (shared/gpu-truth) and in
benchmarks/gpu/results (H100 and H200; every run there is checked in test_gpu_results.py)."""

from pathlib import Path

import pytest

from qwenplan.launch.engine_log import parse_memory
from qwenplan.planner import model
from qwenplan.planner.memory import deltanet_state_per_seq, kv_bytes_per_token, vllm_layout
from qwenplan.planner.sizing import Candidate, size
from qwenplan.planner.variants import get_variant

GiB = 1 << 30
H100_CUDA_TOTAL = 85_017_493_504          # cudaMemGetInfo total on the gpu-truth H100
FIXTURES = Path(__file__).parent / "fixtures" / "gpu-truth"
M = model.get_model("qwen3.6-35b-a3b")


def test_block_sizes_of_the_published_config():
    """The config's float32 recurrent state: the blocks vLLM 0.26 logged on the H100 and H200."""
    assert vllm_layout(M.shape, "bfloat16").block_size == 1056
    assert vllm_layout(M.shape, "fp8").block_size == 2096
    assert vllm_layout(M.shape, "fp8", num_spec=2, extra_attention_layers=1).block_size == 2128


def test_kv_and_state_arithmetic_from_the_design():
    assert kv_bytes_per_token(M.shape, "bfloat16") == 20480
    assert kv_bytes_per_token(M.shape, "fp8") == 10240
    assert kv_bytes_per_token(M.shape, "bfloat16", tp=2) == 10240
    assert kv_bytes_per_token(M.shape, "bfloat16", tp=4) == 10240     # 2 KV heads replicate beyond TP 2
    assert deltanet_state_per_seq(M.shape, ssm_dtype="float32") == pytest.approx(61.4 * 2**20, rel=0.01)
    assert deltanet_state_per_seq(M.shape, ssm_dtype="bfloat16") == pytest.approx(31.4 * 2**20, rel=0.01)


def test_vllm_page_unification_matches_the_log():
    """The page arithmetic with a bfloat16 recurrent state, as shared/gpu-truth's served folder had it."""
    lay = vllm_layout(M.shape, "bfloat16", ssm_dtype="bfloat16")
    assert lay.block_size == 544                          # "Setting attention block size to 544 tokens"
    assert lay.padding == pytest.approx(0.0149, abs=0.0005)   # "padded by 1.49%"
    kv = int(3.92 * GiB)
    assert lay.reported_tokens(kv, 32768) == pytest.approx(193536, rel=0.01)
    assert lay.max_concurrency(kv, 32768) == pytest.approx(5.91, abs=0.05)
    assert lay.bytes_per_request(262144) / GiB == pytest.approx(5.03, abs=0.01)
    assert lay.max_model_len(int(3.26 * GiB)) == pytest.approx(169184, rel=0.01)


def test_weights_and_kv_memory_of_the_gpu_truth_run():
    """BF16, eager, 32k, gmu 0.92, --language-model-only, vLLM's default max_num_seqs 1024 (its
    sampler pass is the 4.01 GiB peak): weights 64.69 GiB, KV 3.92 GiB."""
    cand = Candidate(get_variant("bf16"), "vllm", "0.26.0", eager=True, batched_tokens=8192, max_seqs=1024)
    s = size(cand, int(0.92 * H100_CUDA_TOTAL), cudagraph_profiled=True)
    assert s.weights / GiB == pytest.approx(64.69, rel=0.01)
    assert s.activation / GiB == pytest.approx(4.01, rel=0.01)
    assert s.cache_bytes / GiB == pytest.approx(3.92, rel=0.05)
    # The naive run with CUDA graphs profiled (512 capture sizes: 0.64 GiB): 3.26 GiB available.
    naive = size(Candidate(get_variant("bf16"), "vllm", "0.26.0", batched_tokens=8192, max_seqs=1024),
                 int(0.92 * H100_CUDA_TOTAL), cudagraph_profiled=True)
    assert naive.cudagraph / GiB == pytest.approx(0.64, abs=0.01)
    assert naive.cache_bytes / GiB == pytest.approx(3.26, rel=0.05)
    # ... and not one 262,144-token request fits, as vLLM said.
    assert naive.full_length_seqs(262144) == 0


def test_a_plan_sized_for_fewer_sequences_reserves_less():
    """The sampler's pass and the CUDA graphs grow with max_num_seqs: 64 sequences leave more
    cache than vLLM's default 1024 (4.01 -> 1.18 GiB activation at 8,192 batched tokens, the FP8
    checkpoint's forward pass; h100-plan-default and h100-baseline-defaults-fp8 measured both)."""
    v = get_variant("fp8")
    few = size(Candidate(v, "vllm", "0.26.0", max_seqs=64), int(0.92 * H100_CUDA_TOTAL), True)
    many = size(Candidate(v, "vllm", "0.26.0", max_seqs=1024), int(0.92 * H100_CUDA_TOTAL), True)
    assert many.activation / GiB == pytest.approx(4.01, abs=0.01)
    assert few.activation / GiB == pytest.approx(1.18, abs=0.01)
    assert few.cudagraph < many.cudagraph
    assert few.cache_bytes - many.cache_bytes > 3 * GiB


def test_mtp_holds_one_state_block_per_draft_token():
    """vLLM 0.26, FP8 KV auto + MTP 2 on an H100: block 1,072, 6.33x at 262,144 tokens from
    36.19 GiB (benchmarks/gpu/results/h100/h100-plan-mtp)."""
    lay = vllm_layout(M.shape, "bfloat16", num_spec=2, extra_attention_layers=1)
    assert lay.block_size == 1072
    assert lay.blocks_per_request(262144) == 245 + 3 * 3
    assert lay.max_concurrency(int(36.19 * GiB), 262144) == pytest.approx(6.33, abs=0.01)


@pytest.mark.parametrize("variant,published", [("bf16", 71.90e9), ("fp8", 37.49e9), ("hlwq-int4", 19.43e9),
                                               ("gptq-int4", 24.4e9), ("nvfp4-redhat", 25.06e9)])
def test_checkpoint_sizes_are_computed_not_copied(variant, published):
    assert get_variant(variant).disk.total == pytest.approx(published, rel=0.03)


def test_engine_log_parser_reads_the_real_logs():
    log = Path(__file__).resolve().parent.parent.parent / "shared" / "gpu-truth" / "h100-vllm0.26-bf16-eager-32k.log"
    if not log.exists():
        log = FIXTURES / "h100-vllm0.26-bf16-eager-32k.log"
    r = parse_memory(log.read_text().splitlines())
    assert r.weights_bytes == pytest.approx(64.69 * GiB, rel=0.001)
    assert r.kv_tokens == 193536
    assert r.max_concurrency == pytest.approx(5.91)


def test_engine_log_keeps_the_graph_estimate_apart_from_what_capture_took():
    """vLLM sizes the KV cache after subtracting its *estimate* (0.29 GiB); the graphs it then
    captured took 0.33 GiB, outside the budget. The planner calibrates on the estimate."""
    log = Path(__file__).resolve().parent.parent / "benchmarks/gpu/results/h100/h100-plan-default/serve.log"
    r = parse_memory(log.read_text(errors="replace").splitlines())
    assert r.cudagraph_estimate_bytes == int(0.29 * GiB)
    assert r.cudagraph_captured_bytes == int(0.33 * GiB)
    assert r.cudagraph_bytes == r.cudagraph_estimate_bytes
    assert r.kv_cache_bytes == int(37.71 * GiB) and r.block_size == 1056
