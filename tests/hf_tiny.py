"""Tiny randomly initialised vision-language models, one per family, built and saved locally.

Nothing is downloaded: each model comes from its transformers config with a few small layers, a
byte-level tokenizer made here (every byte is a token, no merges) plus the family's special
tokens, the family's real processor class and a chat template written to follow the family's
published one. Each builds and generates in seconds on a CPU. Used by tests/test_adapters_hf.py
and benchmarks/bench_hf_batch.py.

Token id 0 is "A": with `answer_a` the LM head is zeroed, so greedy decoding always picks "A"
through the whole real code path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

# Each template ends its user turn and opens the assistant turn the way the family's own does; the
# leading marker ("<|im_start|>", "User:", "<bos><start_of_turn>") is what tests look for.
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_OV_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for m in messages %}{{ m['role'] | capitalize }}:"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
GEMMA3_TEMPLATE = (
    "<bos>{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<start_of_image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
INTERNVL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<IMG_CONTEXT>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_tokenizer(special: list[str], *, eos: str, pad: str, named: dict[str, str] | None = None, bos: str | None = None):
    """A fast tokenizer whose vocabulary is "A", the other byte symbols, then `special`."""
    import transformers as T
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    alphabet.remove("A")
    vocab = {t: i for i, t in enumerate(["A"] + alphabet + special)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(special)
    if bos:  # like Llama 3 and Gemma tokenizers: encoding adds BOS unless add_special_tokens=False
        from tokenizers.processors import TemplateProcessing

        tok.post_processor = TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])])
    kw = {"extra_special_tokens": named} if named else {}
    tokenizer = T.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad, bos_token=bos, **kw)
    return tokenizer, vocab


def _text(vocab: dict, eos: str, pad: str, **extra) -> dict:
    """A 2-layer decoder config (hidden 32) shared by the families' language models."""
    return dict(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=vocab[eos],
        pad_token_id=vocab[pad],
        tie_word_embeddings=False,
        **extra,
    )


def _siglip(image_size: int, patch: int) -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=image_size, patch_size=patch)


def qwen2_vl(T, *, v25: bool = False):
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer, vocab = byte_tokenizer(special, eos="<|im_end|>", pad="<|endoftext|>")
    proc_cls = T.Qwen2_5_VLProcessor if v25 else T.Qwen2VLProcessor
    processor = proc_cls(
        image_processor=T.Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
        tokenizer=tokenizer,
        video_processor=T.Qwen2VLVideoProcessor(),
        chat_template=QWEN_TEMPLATE,
    )
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}
    vision = dict(depth=1, hidden_size=32, num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    if v25:
        vision.update(intermediate_size=64, out_hidden_size=32, window_size=56, fullatt_block_indexes=[0])
        cfg_cls, model_cls = T.Qwen2_5_VLConfig, T.Qwen2_5_VLForConditionalGeneration
    else:
        vision.update(embed_dim=32, mlp_ratio=2)
        cfg_cls, model_cls = T.Qwen2VLConfig, T.Qwen2VLForConditionalGeneration
    config = cfg_cls(
        text_config=_text(vocab, "<|im_end|>", "<|endoftext|>", rope_parameters=rope),
        vision_config=vision,
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    return model_cls(config), processor, vocab, "<|im_end|>", "<|endoftext|>"


def llava_onevision(T):
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    tokenizer, vocab = byte_tokenizer(special, eos="<|im_end|>", pad="<|endoftext|>", named={"image_token": "<image>", "video_token": "<video>"})
    pinpoints = [[28, 28], [28, 56], [56, 28], [56, 56]]
    image_processor = T.LlavaOnevisionImageProcessor(size={"height": 28, "width": 28}, crop_size={"height": 28, "width": 28}, image_grid_pinpoints=pinpoints)
    processor = T.LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=T.LlavaOnevisionVideoProcessor(),
        num_image_tokens=4,
        vision_feature_select_strategy="full",
        chat_template=LLAVA_OV_TEMPLATE,
    )
    config = T.LlavaOnevisionConfig(
        text_config=dict(_text(vocab, "<|im_end|>", "<|endoftext|>"), model_type="qwen2"),
        vision_config=dict(_siglip(28, 14), model_type="siglip_vision_model"),
        image_token_index=vocab["<image>"],
        video_token_index=vocab["<video>"],
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    return T.LlavaOnevisionForConditionalGeneration(config), processor, vocab, "<|im_end|>", "<|endoftext|>"


def llava_next(T):
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
    tokenizer, vocab = byte_tokenizer(special, eos="<|im_end|>", pad="<|endoftext|>", named={"image_token": "<image>"})
    pinpoints = [[28, 28], [28, 56], [56, 28], [56, 56]]
    image_processor = T.LlavaNextImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, image_grid_pinpoints=pinpoints)
    processor = T.LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        chat_template=LLAVA_OV_TEMPLATE,
    )
    config = T.LlavaNextConfig(
        text_config=dict(_text(vocab, "<|im_end|>", "<|endoftext|>"), model_type="qwen2"),
        vision_config=dict(_siglip(28, 14), model_type="siglip_vision_model"),
        image_token_index=vocab["<image>"],
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    return T.LlavaNextForConditionalGeneration(config), processor, vocab, "<|im_end|>", "<|endoftext|>"


def idefics3(T):
    rows = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    special = ["<|begin_of_text|>", "<|end_of_text|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>", "<global-img>"] + rows
    tokenizer, vocab = byte_tokenizer(special, eos="<end_of_utterance>", pad="<|end_of_text|>", bos="<|begin_of_text|>")
    # 56 px tiles of 14 px patches, pixel-shuffled by 2: 4 image tokens per tile; longest side 168 -> up to 3x3 tiles
    image_processor = T.Idefics3ImageProcessor(size={"longest_edge": 168}, max_image_size={"longest_edge": 56})
    processor = T.Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4, chat_template=IDEFICS3_TEMPLATE)
    config = T.Idefics3Config(
        text_config=dict(_text(vocab, "<end_of_utterance>", "<|end_of_text|>"), model_type="llama"),
        vision_config=_siglip(56, 14),
        scale_factor=2,
        image_token_id=vocab["<image>"],
        pad_token_id=vocab["<|end_of_text|>"],
        tie_word_embeddings=False,
    )
    return T.Idefics3ForConditionalGeneration(config), processor, vocab, "<end_of_utterance>", "<|end_of_text|>"


def smolvlm(T):
    """SmolVLM2: Idefics3's layout with its own processor classes (which import num2words)."""
    rows = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    special = ["<|im_start|>", "<|im_end|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>", "<global-img>", "<video>"] + rows
    tokenizer, vocab = byte_tokenizer(special, eos="<end_of_utterance>", pad="<|im_end|>", bos="<|im_start|>")
    image_processor = T.SmolVLMImageProcessor(size={"longest_edge": 168}, max_image_size={"longest_edge": 56})
    processor = T.SmolVLMProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=T.SmolVLMVideoProcessor(),
        image_seq_len=4,
        chat_template=IDEFICS3_TEMPLATE.replace("<|begin_of_text|>", "<|im_start|>"),
    )
    config = T.SmolVLMConfig(
        text_config=dict(_text(vocab, "<end_of_utterance>", "<|im_end|>"), model_type="llama"),
        vision_config=_siglip(56, 14),
        scale_factor=2,
        image_token_id=vocab["<image>"],
        pad_token_id=vocab["<|im_end|>"],
        tie_word_embeddings=False,
    )
    return T.SmolVLMForConditionalGeneration(config), processor, vocab, "<end_of_utterance>", "<|im_end|>"


def gemma3(T):
    special = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    named = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tokenizer, vocab = byte_tokenizer(special, eos="<end_of_turn>", pad="<pad>", bos="<bos>", named=named)
    processor = T.Gemma3Processor(
        image_processor=T.Gemma3ImageProcessor(size={"height": 56, "width": 56}), tokenizer=tokenizer, image_seq_length=4, chat_template=GEMMA3_TEMPLATE
    )
    text = _text(vocab, "<end_of_turn>", "<pad>", head_dim=8, sliding_window=64, model_type="gemma3_text")
    config = T.Gemma3Config(
        text_config=text,
        vision_config=dict(_siglip(56, 14), model_type="siglip_vision_model"),
        mm_tokens_per_image=4,
        boi_token_index=vocab["<start_of_image>"],
        eoi_token_index=vocab["<end_of_image>"],
        image_token_index=vocab["<image_soft_token>"],
        tie_word_embeddings=False,
    )
    return T.Gemma3ForConditionalGeneration(config), processor, vocab, "<end_of_turn>", "<pad>"


def internvl(T):
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    named = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
    tokenizer, vocab = byte_tokenizer(special, eos="<|im_end|>", pad="<|endoftext|>", named=named)
    # 28 px tiles of 14 px patches, pixel-unshuffled by 0.5: 1 context token per tile, up to 4 tiles + thumbnail
    image_processor = T.GotOcr2ImageProcessor(size={"height": 28, "width": 28}, crop_to_patches=True, min_patches=1, max_patches=4)
    processor = T.InternVLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=T.InternVLVideoProcessor(), image_seq_length=1, chat_template=INTERNVL_TEMPLATE
    )
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=[28, 28], patch_size=[14, 14])
    config = T.InternVLConfig(
        vision_config=vision,
        text_config=dict(_text(vocab, "<|im_end|>", "<|endoftext|>"), model_type="qwen2"),
        image_token_id=vocab["<IMG_CONTEXT>"],
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    return T.InternVLForConditionalGeneration(config), processor, vocab, "<|im_end|>", "<|endoftext|>"


FAMILIES: dict[str, Callable] = {
    "qwen2_vl": qwen2_vl,
    "qwen2_5_vl": lambda T: qwen2_vl(T, v25=True),
    "llava_onevision": llava_onevision,
    "llava_next": llava_next,
    "idefics3": idefics3,
    "smolvlm": smolvlm,
    "gemma3": gemma3,
    "internvl": internvl,
}


def build_tiny(family: str, path: Path, *, answer_a: bool = False) -> Path:
    """Save a tiny random `family` model with its processor into `path`; returns `path`."""
    import torch
    import transformers as T

    torch.manual_seed(0)
    model, processor, vocab, eos, pad = FAMILIES[family](T)
    if answer_a:
        with torch.no_grad():
            model.lm_head.weight.zero_()
    model.generation_config.eos_token_id = vocab[eos]
    model.generation_config.pad_token_id = vocab[pad]
    model.generation_config.bos_token_id = None
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return Path(path)
