"""Import what SGLang 0.5.14 imports to serve Qwen3.5-MoE on one H200 with the carried bundle
(README.md, "Carrying SGLang 0.5.14"), and report every failure, not only the first: one GPU call
then shows every missing module at once.

    PYTHONPATH=/tmp/sgsite python3 benchmarks/gpu/sglang_imports.py            # on the GPU machine
    python3 sglang_imports.py --fake-h200                                       # here, without a GPU

--fake-h200 makes torch report one H200 (sm90, 143,771 MiB) before anything is imported, so SGLang
and sgl_kernel take the branches they take on the GPU machine (is_cuda(), sm90 ops, the default
backends); it needs a CUDA build of torch 2.11.0 and, for sgl_kernel's dlopen, a libcuda.so.1 on
LD_LIBRARY_PATH (any stand-in that defines the cu* symbols sgl_kernel links).
--args ARGS... also parses a served command as SGLang does (ServerArgs, ModelConfig from config.json)
and prints the backends it picks.
"""
import collections
import importlib
import sys

MODULES = [
    # kernels: sgl_kernel loads sm90/common_ops on compute capability 9.0
    "sgl_kernel", "flashinfer.sampling",
    # entry point, HTTP server and the three processes it starts
    "sglang.launch_server", "sglang.srt.entrypoints.http_server",
    "sglang.srt.entrypoints.openai.serving_completions", "sglang.srt.entrypoints.openai.serving_chat",
    "sglang.srt.entrypoints.openai.serving_responses",
    "sglang.srt.managers.tokenizer_manager", "sglang.srt.managers.detokenizer_manager",
    "sglang.srt.managers.scheduler", "sglang.srt.managers.tp_worker",
    # model runner, CUDA graphs, dummy loader, the model and its MTP draft, their config
    "sglang.srt.model_executor.model_runner", "sglang.srt.model_executor.runner.decode_cuda_graph_runner",
    "sglang.srt.model_executor.runner.prefill_cuda_graph_runner", "sglang.srt.model_loader.loader",
    "sglang.srt.models.registry", "sglang.srt.models.qwen3_5", "sglang.srt.models.qwen3_5_mtp",
    "sglang.srt.configs.qwen3_5",
    # attention: triton full attention inside the hybrid backend, GDN (fla) kernels, mamba pool/cache
    "sglang.srt.layers.attention.attention_registry", "sglang.srt.layers.attention.triton_backend",
    "sglang.srt.layers.attention.hybrid_linear_attn_backend", "sglang.srt.layers.attention.linear.gdn_backend",
    "sglang.srt.layers.attention.fla.chunk", "sglang.srt.mem_cache.mamba_radix_cache",
    # sampling, EAGLE/MTP (spec v2), FP8 block linears and the triton fused MoE
    "sglang.srt.layers.sampler", "sglang.srt.speculative.eagle_worker_v2",
    "sglang.srt.speculative.eagle_info_v2", "sglang.srt.speculative.eagle_draft_cuda_graph_runner",
    "sglang.srt.layers.quantization.fp8", "sglang.srt.layers.quantization.fp8_utils",
    "sglang.srt.layers.moe.fused_moe_triton.layer", "sglang.srt.layers.moe.moe_runner.triton",
    # SGLang's own tvm-ffi JIT kernels used on this path (compiled with nvcc at first use)
    "sglang.jit_kernel.norm", "sglang.jit_kernel.rope",
]


def fake_h200():
    import torch

    props = collections.namedtuple(
        "Props", "name major minor total_memory multi_processor_count uuid L2_cache_size warp_size gcnArchName")(
        "NVIDIA H200", 9, 0, 143771 * 2**20, 132, "GPU-none", 60 * 2**20, 32, "")
    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1
    torch.cuda.current_device = lambda: 0
    torch.cuda.get_device_capability = lambda device=None: (9, 0)
    torch.cuda.get_device_properties = lambda device=None: props
    torch.cuda.get_device_name = lambda device=None: props.name
    torch.cuda.mem_get_info = lambda device=None: (140 * 2**30, props.total_memory)
    torch.cuda.is_bf16_supported = lambda *a, **k: True


def main(argv):
    served = argv[argv.index("--args") + 1:] if "--args" in argv else None
    if "--fake-h200" in argv:
        fake_h200()
    bad = []
    for m in MODULES:
        try:
            importlib.import_module(m)
            print("ok  ", m, flush=True)
        except BaseException as e:  # SystemExit and the like too: report it and go on
            bad.append(m)
            print("FAIL", m, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}", flush=True)
    import sgl_kernel
    import sglang
    import torch
    import transformers

    print("sglang", sglang.__version__, "| sgl_kernel", sgl_kernel.__version__, sgl_kernel.common_ops.__file__,
          "| torch", torch.__version__, "| transformers", transformers.__version__, transformers.__file__)
    if served is not None:
        from sglang.srt.configs.model_config import ModelConfig
        from sglang.srt.server_args import prepare_server_args

        sa = prepare_server_args(served)
        mc = ModelConfig.from_server_args(sa)
        print("parsed: attention", sa.attention_backend, "| sampling", sa.sampling_backend, "| linear attn",
              sa.linear_attn_backend, "| mem_fraction_static", sa.mem_fraction_static, "| kv", sa.kv_cache_dtype,
              "| spec", sa.speculative_algorithm, "|", type(mc.hf_config).__name__, "quant", mc.quantization)
    print(f"{len(MODULES) - len(bad)}/{len(MODULES)} imported" + (f"; failed: {' '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
