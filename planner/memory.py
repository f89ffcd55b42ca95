"""The memory model's arithmetic: KV cache, DeltaNet state, and how vLLM pages them.

Units are bytes. Plain arithmetic first (what one token or one sequence costs), then vLLM's
own rules for hybrid models, which differ from it: the attention block is enlarged until an
attention page is at least a DeltaNet state page, the state page is padded to match, and
layers are grouped so that every group shares one block pool
(vllm/model_executor/models/config.py HybridAttentionMambaModelConfig;
vllm/v1/core/kv_cache_utils.py get_kv_cache_config, get_max_concurrency_for_kv_cache_config).
Reproduced against real vLLM 0.26.0 on an H100 and an H200 (benchmarks/gpu/RESULTS.md): with
the config's float32 recurrent state, blocks of 1,056 tokens (BF16 KV), 1,072 (BF16 KV + MTP 2),
2,096 (FP8 KV), 2,128 (FP8 KV + MTP 2), and every 'GPU KV cache size' and 'Maximum concurrency'
of eight runs; with a bfloat16 state, the 544-token block of shared/gpu-truth's log.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import Shape
from .units import ceil_div

DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "auto": 2,
               "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}


def kv_heads_per_rank(shape: Shape, tp: int) -> int:
    """KV heads split over ranks up to their count and are replicated beyond (2 heads: 1 per rank at TP>=2)."""
    return max(1, shape.kv_heads // tp)


def kv_bytes_per_token_per_layer(shape: Shape, kv_dtype: str, tp: int = 1) -> int:
    return 2 * kv_heads_per_rank(shape, tp) * shape.head_dim * DTYPE_BYTES[kv_dtype]


def kv_bytes_per_token(shape: Shape, kv_dtype: str, tp: int = 1, attention_layers: int | None = None) -> int:
    """K and V of every full-attention layer for one token on one GPU.
    bf16, one GPU: 2 x 10 x 2 x 256 x 2 = 20,480 B (20 KiB); fp8: 10,240 B."""
    layers = shape.full_attention_layers if attention_layers is None else attention_layers
    return layers * kv_bytes_per_token_per_layer(shape, kv_dtype, tp)


@dataclass(frozen=True)
class StateBytes:
    conv: int
    ssm: int

    @property
    def total(self) -> int:
        return self.conv + self.ssm


def deltanet_state_per_layer(shape: Shape, tp: int = 1, conv_dtype: str = "bfloat16",
                             ssm_dtype: str = "float32", num_spec: int = 0, ssm_copies: int = 1) -> StateBytes:
    """One sequence's DeltaNet state in one layer on one GPU: the causal-conv window
    (conv_dim x (kernel - 1 + speculative tokens)) and the recurrent state
    (value heads x 128 x 128), both split over TP ranks
    (vllm/model_executor/layers/mamba/mamba_utils.py MambaStateShapeCalculator.gated_delta_net_state_shape)."""
    conv = (shape.conv_dim // tp) * (shape.conv_kernel - 1 + num_spec) * DTYPE_BYTES[conv_dtype]
    ssm = (shape.lin_v_heads // tp) * shape.lin_v_dim * shape.lin_k_dim * DTYPE_BYTES[ssm_dtype] * ssm_copies
    return StateBytes(conv, ssm)


def deltanet_state_per_seq(shape: Shape, **kw) -> int:
    """All DeltaNet layers: ~61.4 MiB with a float32 recurrent state (the config's
    mamba_ssm_dtype), ~31.4 MiB with bfloat16, at TP 1 without speculation."""
    return shape.linear_layers * deltanet_state_per_layer(shape, **kw).total


# --- vLLM's hybrid KV cache --------------------------------------------------------------

# Attention block sizes are multiples of this kernel alignment: with bf16 KV (2,048 B per token
# and layer) a 2,146,304 B state page (float32 state) needs 1,048 tokens, 1,056 in vLLM 0.26's log;
# with fp8 KV and a float32 state, 2,096 tokens (third-party vLLM 0.30 log, research notes).
VLLM_BLOCK_ALIGN = 16


@dataclass(frozen=True)
class VllmLayout:
    """How vLLM lays out one GPU's KV cache for this hybrid model."""

    block_size: int             # tokens per attention block
    page_bytes: int             # one block of one layer (attention) == one state page (padded)
    state_bytes: int            # unpadded DeltaNet state of one layer
    attention_layers: int
    state_layers: int
    group_size: int             # layers per KV cache group: every group shares one pool of blocks
    attention_groups: int
    state_groups: int
    num_spec: int = 0           # MTP draft tokens: each state group holds 1 + num_spec pages per request

    @property
    def padding(self) -> float:
        return self.page_bytes / self.state_bytes - 1

    @property
    def block_bytes(self) -> int:
        """Memory of one block id: one page in each of group_size layer tensors."""
        return self.page_bytes * self.group_size

    @property
    def state_blocks(self) -> int:
        """State pages one request holds: one per state group, plus one per draft token under
        speculative decoding (vLLM's MambaSpec num_speculative_blocks)."""
        return self.state_groups * (1 + self.num_spec)

    def blocks_per_request(self, tokens: int) -> int:
        """Blocks one request of `tokens` tokens holds: its attention blocks in each attention
        group plus its state pages (262,144 tokens, MTP 2: 245 + 3 x 3 = 254 blocks)."""
        return ceil_div(tokens, self.block_size) * self.attention_groups + self.state_blocks

    def bytes_per_request(self, tokens: int) -> int:
        return self.blocks_per_request(tokens) * self.block_bytes

    def num_blocks(self, kv_memory: int) -> int:
        return max(0, kv_memory // self.block_bytes)

    def max_concurrency(self, kv_memory: int, tokens: int) -> float:
        """vLLM's 'Maximum concurrency for N tokens per request'."""
        return self.num_blocks(kv_memory) / self.blocks_per_request(tokens)

    def reported_tokens(self, kv_memory: int, max_model_len: int) -> int:
        """vLLM's 'GPU KV cache size: N tokens' for a hybrid model: full-length requests that
        fit, times their length (0.26: 378 blocks / 64 per 32k request x 32768 = 193,536)."""
        return self.num_blocks(kv_memory) * max_model_len // self.blocks_per_request(max_model_len)

    def max_model_len(self, kv_memory: int) -> int:
        """The longest request that fits: vLLM's 'estimated maximum model length'."""
        blocks = self.num_blocks(kv_memory) - self.state_blocks
        return max(0, (blocks // self.attention_groups) * self.block_size)


def vllm_layout(shape: Shape, kv_dtype: str = "bfloat16", tp: int = 1, conv_dtype: str = "bfloat16",
                ssm_dtype: str = "float32", num_spec: int = 0, ssm_copies: int = 1,
                extra_attention_layers: int = 0) -> VllmLayout:
    """vLLM's page unification for a hybrid model (an MTP draft adds one attention layer)."""
    attn_per_token = kv_bytes_per_token_per_layer(shape, kv_dtype, tp)
    state = deltanet_state_per_layer(shape, tp, conv_dtype, ssm_dtype, num_spec, ssm_copies).total
    block = VLLM_BLOCK_ALIGN * ceil_div(state, VLLM_BLOCK_ALIGN * attn_per_token)
    page = block * attn_per_token
    attn_layers = shape.full_attention_layers + extra_attention_layers
    state_layers = shape.linear_layers
    # Layers of each kind are cut into groups of the smaller kind's count (vLLM pads a group
    # rather than making more when the larger count is within 1.25x of the smaller).
    small, large = sorted((attn_layers, state_layers))
    group = large if large < small * 1.25 else small
    return VllmLayout(
        block_size=block, page_bytes=page, state_bytes=state, attention_layers=attn_layers,
        state_layers=state_layers, group_size=group, attention_groups=ceil_div(attn_layers, group),
        state_groups=ceil_div(state_layers, group), num_spec=num_spec,
    )
