"""Memory the `hf:` families need at bf16, computed from their configs' parameter counts.

Each checkpoint's architecture is rebuilt from the dimensions in its published config.json (typed
in below: nothing is downloaded) on PyTorch's meta device, which allocates nothing, and its
parameters are counted (tied embeddings once). Weights at bf16 take 2 bytes per parameter; the
KV cache takes 2 (K and V) x layers x KV heads x head size x 2 bytes per token of every
sequence in a batch, which is what grows with `batch_size`. Activations and the vision
encoder's working memory come on top (not counted here).

Run: .venv/bin/python benchmarks/hf_memory.py [--markdown]
"""

from __future__ import annotations

import argparse


def _qwen_text(h, inter, layers, heads, kv, vocab, tie, **kw):
    return dict(
        hidden_size=h,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=vocab,
        tie_word_embeddings=tie,
        **kw,
    )


SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, patch_size=14)
QWEN2_VL_VISION = dict(depth=32, embed_dim=1280, mlp_ratio=4, num_heads=16, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
QWEN25_VL_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14, window_size=112, fullatt_block_indexes=[7, 15, 23, 31])
INTERN_VIT_300M = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=[448, 448], patch_size=[14, 14])

# (family, checkpoint, config class, model class, config kwargs)
CHECKPOINTS = [
    (
        "Qwen2-VL",
        "Qwen/Qwen2-VL-2B-Instruct",
        "Qwen2VLConfig",
        "Qwen2VLForConditionalGeneration",
        dict(text_config=_qwen_text(1536, 8960, 28, 12, 2, 151936, True), vision_config=dict(QWEN2_VL_VISION, hidden_size=1536), tie_word_embeddings=True),
    ),
    (
        "Qwen2-VL",
        "Qwen/Qwen2-VL-7B-Instruct",
        "Qwen2VLConfig",
        "Qwen2VLForConditionalGeneration",
        dict(text_config=_qwen_text(3584, 18944, 28, 28, 4, 152064, False), vision_config=dict(QWEN2_VL_VISION, hidden_size=3584), tie_word_embeddings=False),
    ),
    (
        "Qwen2.5-VL",
        "Qwen/Qwen2.5-VL-3B-Instruct",
        "Qwen2_5_VLConfig",
        "Qwen2_5_VLForConditionalGeneration",
        dict(
            text_config=_qwen_text(2048, 11008, 36, 16, 2, 151936, True), vision_config=dict(QWEN25_VL_VISION, out_hidden_size=2048), tie_word_embeddings=True
        ),
    ),
    (
        "Qwen2.5-VL",
        "Qwen/Qwen2.5-VL-7B-Instruct",
        "Qwen2_5_VLConfig",
        "Qwen2_5_VLForConditionalGeneration",
        dict(
            text_config=_qwen_text(3584, 18944, 28, 28, 4, 152064, False), vision_config=dict(QWEN25_VL_VISION, out_hidden_size=3584), tie_word_embeddings=False
        ),
    ),
    (
        "Qwen2.5-VL",
        "Qwen/Qwen2.5-VL-72B-Instruct",
        "Qwen2_5_VLConfig",
        "Qwen2_5_VLForConditionalGeneration",
        dict(
            text_config=_qwen_text(8192, 29568, 80, 64, 8, 152064, False), vision_config=dict(QWEN25_VL_VISION, out_hidden_size=8192), tie_word_embeddings=False
        ),
    ),
    (
        "LLaVA-OneVision",
        "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
        "LlavaOnevisionConfig",
        "LlavaOnevisionForConditionalGeneration",
        dict(
            text_config=dict(_qwen_text(896, 4864, 24, 14, 2, 151647, True), model_type="qwen2"),
            vision_config=dict(SIGLIP_SO400M, num_hidden_layers=26, image_size=384, model_type="siglip_vision_model"),
            tie_word_embeddings=True,
        ),
    ),
    (
        "LLaVA-OneVision",
        "llava-hf/llava-onevision-qwen2-7b-ov-hf",
        "LlavaOnevisionConfig",
        "LlavaOnevisionForConditionalGeneration",
        dict(
            text_config=dict(_qwen_text(3584, 18944, 28, 28, 4, 152128, False), model_type="qwen2"),
            vision_config=dict(SIGLIP_SO400M, num_hidden_layers=26, image_size=384, model_type="siglip_vision_model"),
            tie_word_embeddings=False,
        ),
    ),
    (
        "LLaVA-NeXT",
        "llava-hf/llava-v1.6-mistral-7b-hf",
        "LlavaNextConfig",
        "LlavaNextForConditionalGeneration",
        dict(
            text_config=dict(_qwen_text(4096, 14336, 32, 32, 8, 32064, False), model_type="mistral"),
            vision_config=dict(
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=24,
                num_attention_heads=16,
                image_size=336,
                patch_size=14,
                projection_dim=768,
                model_type="clip_vision_model",
            ),
            tie_word_embeddings=False,
        ),
    ),
    (
        "Idefics3 / SmolVLM",
        "HuggingFaceTB/SmolVLM-Instruct",
        "Idefics3Config",
        "Idefics3ForConditionalGeneration",
        dict(
            text_config=dict(_qwen_text(2048, 8192, 24, 32, 32, 49155, False), model_type="llama"),
            vision_config=dict(SIGLIP_SO400M, image_size=384),
            scale_factor=3,
            tie_word_embeddings=False,
        ),
    ),
    (
        "Idefics3 / SmolVLM",
        "HuggingFaceM4/Idefics3-8B-Llama3",
        "Idefics3Config",
        "Idefics3ForConditionalGeneration",
        dict(
            text_config=dict(_qwen_text(4096, 14336, 32, 32, 8, 128259, False), model_type="llama"),
            vision_config=dict(SIGLIP_SO400M, image_size=364),
            scale_factor=2,
            tie_word_embeddings=False,
        ),
    ),
    (
        "SmolVLM2",
        "HuggingFaceTB/SmolVLM2-2.2B-Instruct",
        "SmolVLMConfig",
        "SmolVLMForConditionalGeneration",
        dict(
            text_config=dict(_qwen_text(2048, 8192, 24, 32, 32, 49280, False), model_type="llama"),
            vision_config=dict(SIGLIP_SO400M, image_size=384),
            scale_factor=3,
            tie_word_embeddings=False,
        ),
    ),
    (
        "Gemma 3",
        "google/gemma-3-4b-it",
        "Gemma3Config",
        "Gemma3ForConditionalGeneration",
        dict(
            text_config=dict(_qwen_text(2560, 10240, 34, 8, 4, 262208, True), head_dim=256, model_type="gemma3_text"),
            vision_config=dict(SIGLIP_SO400M, image_size=896, model_type="siglip_vision_model"),
            mm_tokens_per_image=256,
        ),
    ),
    (
        "Gemma 3",
        "google/gemma-3-12b-it",
        "Gemma3Config",
        "Gemma3ForConditionalGeneration",
        dict(
            text_config=dict(_qwen_text(3840, 15360, 48, 16, 8, 262208, True), head_dim=256, model_type="gemma3_text"),
            vision_config=dict(SIGLIP_SO400M, image_size=896, model_type="siglip_vision_model"),
            mm_tokens_per_image=256,
        ),
    ),
    (
        "Gemma 3",
        "google/gemma-3-27b-it",
        "Gemma3Config",
        "Gemma3ForConditionalGeneration",
        dict(
            text_config=dict(_qwen_text(5376, 21504, 62, 32, 16, 262208, True), head_dim=128, model_type="gemma3_text"),
            vision_config=dict(SIGLIP_SO400M, image_size=896, model_type="siglip_vision_model"),
            mm_tokens_per_image=256,
        ),
    ),
    (
        "InternVL",
        "OpenGVLab/InternVL3-2B-hf",
        "InternVLConfig",
        "InternVLForConditionalGeneration",
        dict(
            text_config=dict(_qwen_text(1536, 8960, 28, 12, 2, 151674, False), model_type="qwen2"),
            vision_config=INTERN_VIT_300M,
            downsample_ratio=0.5,
            tie_word_embeddings=False,
        ),
    ),
    (
        "InternVL",
        "OpenGVLab/InternVL3-8B-hf",
        "InternVLConfig",
        "InternVLForConditionalGeneration",
        dict(
            text_config=dict(_qwen_text(3584, 18944, 28, 28, 4, 151674, False), model_type="qwen2"),
            vision_config=INTERN_VIT_300M,
            downsample_ratio=0.5,
            tie_word_embeddings=False,
        ),
    ),
]


def count(config_cls: str, model_cls: str, kwargs: dict) -> tuple[int, int]:
    """(parameters, KV-cache bytes per token at bf16) of the architecture, built on the meta device."""
    import torch
    import transformers as T

    config = getattr(T, config_cls)(**kwargs)
    with torch.device("meta"):
        model = getattr(T, model_cls)(config)
    params = sum(p.numel() for p in model.parameters())
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_bytes = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * 2
    return params, kv_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table (default: plain text)")
    args = ap.parse_args()
    rows = []
    for family, ckpt, ccls, mcls, kw in CHECKPOINTS:
        params, kv = count(ccls, mcls, kw)
        rows.append((family, ckpt, params / 1e9, params * 2 / 2**30, kv * 4096 * 16 / 2**30))
    if args.markdown:
        print("| family | checkpoint | parameters | bf16 weights | KV cache, 16 prompts x 4k tokens |")
        print("| --- | --- | --- | --- | --- |")
        for f, c, p, w, kv in rows:
            print(f"| {f} | `{c}` | {p:.2f} B | {w:.1f} GiB | {kv:.1f} GiB |")
    else:
        for f, c, p, w, kv in rows:
            print(f"{f:20s} {c:45s} {p:6.2f} B params  {w:6.1f} GiB bf16 weights  {kv:5.1f} GiB KV (16 x 4k tokens)")


if __name__ == "__main__":
    main()
