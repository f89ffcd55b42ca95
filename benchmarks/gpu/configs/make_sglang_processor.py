"""Write configs/sglang-processor/: the smallest processor folder SGLang 0.5.14 accepts for
Qwen3_5MoeForConditionalGeneration, passed as --tokenizer-path to every SGLang run.

Why: for a multimodal architecture SGLang's TokenizerManager loads the HF processor (AutoProcessor
on --tokenizer-path) even with --skip-tokenizer-init, to build its image processor, and stops with
"Can't load image processor ... preprocessor_config.json" on a folder holding config.json only.
SGLang has no switch to turn multimodality off for this architecture (--enable-multimodal can only
turn it on), unlike vLLM's --language-model-only. The scheduler and the model never read these
files with --skip-tokenizer-init, so they change nothing in memory or speed: the vision tower is
loaded (dummy weights) as a user's real command would load it.

The processor is Qwen3VLProcessor (transformers' AutoProcessor mapping for qwen3_5_moe) with the
image/video patch geometry of the Qwen3.5 vision config (patch 16, temporal 2, merge 2); the
tokenizer is a 7-token word-level stand-in holding the special tokens the processor looks up
(token ids come from config.json, not from this tokenizer). Run with SGLang's transformers (5.8.1):
    PYTHONPATH=.gpuwheels-sgl/site python3 benchmarks/gpu/configs/make_sglang_processor.py
"""
from pathlib import Path

from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast, Qwen2VLImageProcessor, Qwen3VLProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

OUT = Path(__file__).resolve().parent / "sglang-processor"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|image_pad|>", "<|video_pad|>"]
GEOMETRY = dict(patch_size=16, temporal_patch_size=2, merge_size=2)  # config.json vision_config

tok = Tokenizer(WordLevel({t: i for i, t in enumerate(SPECIAL)}, unk_token="<|endoftext|>"))
tok.pre_tokenizer = Whitespace()
tokenizer = PreTrainedTokenizerFast(
    tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
    extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                          "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"})
Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(**GEOMETRY), tokenizer=tokenizer,
                 video_processor=Qwen3VLVideoProcessor(**GEOMETRY)).save_pretrained(OUT)
print("wrote", *sorted(p.name for p in OUT.iterdir()))
