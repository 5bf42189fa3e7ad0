"""hf: adapter on a tiny randomly initialised Qwen2-VL built and saved locally (no downloads)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from mmad_boost.errors import MmadError
from mmad_boost.models import create_model
from mmad_boost.prompt import Query, build_prompt
from mmad_boost.records import read_records

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
# A Qwen-style chat template written for the test: images become vision-start/pad/end in place.
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen2_vl(path: Path, *, answer_first_token: bool = False) -> Path:
    """Save a tiny Qwen2-VL (2 text layers, hidden 32, 1 vision block) with a byte-level tokenizer.

    Token id 0 is "A". With answer_first_token the LM head is zeroed, so greedy decoding always
    picks id 0: a model that answers "A" through the whole real code path.
    """
    import torch
    import transformers as T
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    alphabet.remove("A")
    vocab = {t: i for i, t in enumerate(["A"] + alphabet + SPECIAL)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL)
    tokenizer = T.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    processor = T.Qwen2VLProcessor(
        image_processor=T.Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
        tokenizer=tokenizer,
        video_processor=T.Qwen2VLVideoProcessor(),
        chat_template=TEMPLATE,
    )
    ids = {t: vocab[t] for t in SPECIAL}
    config = T.Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=None, eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"], rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
        ),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = T.Qwen2VLForConditionalGeneration(config)
    if answer_first_token:
        with torch.no_grad():
            model.lm_head.weight.zero_()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory):
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"))


@pytest.fixture(scope="session")
def tiny_qwen_answers_a(tmp_path_factory):
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl-a"), answer_first_token=True)


def _prompt():
    q = Query(
        question="Is there any defect in the object?",
        options={"A": "Yes", "B": "No"},
        image=Image.new("RGB", (200, 150), (200, 30, 30)),
        templates=[Image.new("RGB", (120, 120), (30, 200, 30))],
    )
    return build_prompt(q)


@pytest.mark.slow
def test_prompt_through_chat_template_and_greedy_decoding(tiny_qwen):
    model = create_model(f"hf:{tiny_qwen}", max_new_tokens="6")
    prompt = _prompt()
    messages, images = model.messages(prompt)
    assert [c["type"] for c in messages[0]["content"]] == ["text", "image", "text", "image", "text"]
    assert len(images) == 2
    text = model.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 2 and text.endswith("<|im_start|>assistant\n")
    first = model.generate(prompt)
    assert model.generate(prompt) == first  # greedy: deterministic
    assert "Question" not in first and "inspector" not in first  # only the new tokens are decoded
    cfg = model.config()
    assert cfg["architecture"] == "Qwen2VLForConditionalGeneration" and cfg["max_new_tokens"] == 6


@pytest.mark.slow
def test_eval_cli_with_tiny_model(tiny_qwen_answers_a, fixture_root, tmp_path):
    from mmad_boost.cli import main

    out = tmp_path / "run"
    argv = ["eval", "--data", str(fixture_root), "--model", f"hf:{tiny_qwen_answers_a}", "--model-option", "max_new_tokens=1",
            "--model-option", "dtype=float32", "--limit", "5", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    records = read_records(out / "records.jsonl")
    assert len(records) == 5
    assert [r["response"] for r in records] == ["A"] * 5 and [r["gpt_answer"] for r in records] == ["A"] * 5
    run = json.loads((out / "run.json").read_text())
    assert run["identity"]["model_config"]["architecture"] == "Qwen2VLForConditionalGeneration"


def test_missing_path_fails_fast(tmp_path):
    with pytest.raises(MmadError, match="not found"):
        create_model(f"hf:{tmp_path / 'nope'}")
    with pytest.raises(MmadError, match="give the model folder"):
        create_model("hf:")


def test_hub_id_not_cached_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(MmadError, match="not in the local Hugging Face cache"):
        create_model("hf:Qwen/Qwen2-VL-2B-Instruct")
    assert time.monotonic() - t0 < 5


def test_missing_weights_and_processor_are_named(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    with pytest.raises(MmadError, match="config.json"):
        create_model(f"hf:{d}")
    (d / "config.json").write_text("{}")
    with pytest.raises(MmadError, match="no weights in"):
        create_model(f"hf:{d}")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (d / "model-00001-of-00002.safetensors").write_bytes(b"x")
    with pytest.raises(MmadError, match=r"model-00002-of-00002.safetensors not found \(1 of 2 missing\)"):
        create_model(f"hf:{d}")
    (d / "model-00002-of-00002.safetensors").write_bytes(b"x")
    with pytest.raises(MmadError, match="processor_config.json"):
        create_model(f"hf:{d}")


def test_bad_options(tmp_path):
    with pytest.raises(MmadError, match="unknown"):
        create_model(f"hf:{tmp_path}", temperature="1")
    with pytest.raises(MmadError, match="dtype"):
        create_model(f"hf:{tmp_path}", dtype="int3")


@pytest.mark.slow
def test_corrupt_weights_fail_with_one_line(tiny_qwen, tmp_path):
    d = tmp_path / "broken"
    shutil.copytree(tiny_qwen, d)
    (d / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(MmadError, match="cannot load the model") as err:
        create_model(f"hf:{d}")
    assert "\n" not in str(err.value)
