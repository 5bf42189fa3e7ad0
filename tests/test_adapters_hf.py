"""hf: adapter on tiny randomly initialised models of each family, built and saved locally (no downloads)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from mmad_boost.errors import MmadError
from mmad_boost.models import create_model
from mmad_boost.protocol.prompt import Query, build_prompt
from mmad_boost.running.records import read_records

from hf_tiny import FAMILIES as TINY_FAMILIES, build_tiny  # noqa: E402  (tests/ is on sys.path)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """tiny(family, answer_a=False) -> folder of a tiny random model, built once per test session."""
    root = tmp_path_factory.mktemp("tiny-vlms")
    built: dict = {}

    def get(family: str, answer_a: bool = False) -> Path:
        key = (family, answer_a)
        if key not in built:
            built[key] = build_tiny(family, root / f"{family}{'-a' if answer_a else ''}", answer_a=answer_a)
        return built[key]

    return get


@pytest.fixture(scope="session")
def tiny_qwen(tiny):
    return tiny("qwen2_vl")


@pytest.fixture(scope="session")
def tiny_qwen_answers_a(tiny):
    return tiny("qwen2_vl", answer_a=True)


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
    argv = [
        "eval",
        "--data",
        str(fixture_root),
        "--model",
        f"hf:{tiny_qwen_answers_a}",
        "--model-option",
        "max_new_tokens=1",
        "--model-option",
        "dtype=float32",
        "--limit",
        "5",
        "--no-progress",
        "--out",
        str(out),
    ]
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
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
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


# -- every family -------------------------------------------------------------------------------
# (opening of the user turn, opening of the assistant turn) in each family's own chat template
TEMPLATE_ENDS = {
    "qwen2_vl": ("<|im_start|>user\n", "<|im_start|>assistant\n"),
    "qwen2_5_vl": ("<|im_start|>user\n", "<|im_start|>assistant\n"),
    "llava_onevision": ("<|im_start|>user\n", "<|im_start|>assistant\n"),
    "llava_next": ("<|im_start|>user\n", "<|im_start|>assistant\n"),
    "idefics3": ("<|begin_of_text|>User:", "Assistant:"),
    "smolvlm": ("<|im_start|>User:", "Assistant:"),
    "gemma3": ("<bos><start_of_turn>user\n", "<start_of_turn>model\n"),
    "internvl": ("<|im_start|>user\n", "<|im_start|>assistant\n"),
}
# three shapes whose image-token counts differ in most families (not Gemma 3: 4 per image; not
# LLaVA-OneVision: base resolution only in multi-image prompts), each in its own grey level, so
# every pixel row or tile the processor makes can be traced back to its image
SHAPES = [(56, 56), (168, 56), (56, 112)]
GREYS = [50, 150, 235]
SAME_COUNT = {"gemma3", "llava_onevision"}


def _family_prompt(shapes=SHAPES, words=("Template:", " and the query ", " then the expert picture ", "Is it defective?")):
    from mmad_boost.protocol.prompt import Prompt

    parts: list = [words[0]]
    for i, shape in enumerate(shapes):
        parts += [Image.new("RGB", shape, (GREYS[SHAPES.index(shape)],) * 3), words[i + 1]]
    return Prompt(parts=parts)


def _image_token(model) -> int:
    cfg = model.model.config
    return getattr(cfg, "image_token_id", None) or cfg.image_token_index


def _find(seq: list, sub: list, start: int) -> int:
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i
    raise AssertionError(f"text part {sub} not found after position {start}")


def _rows(pixels):
    """Pixel tensors as patch rows or tiles, whatever the family's layout, all-zero padding left out."""
    x = pixels.float()
    x = x.reshape(-1, x.shape[-1]) if x.dim() == 2 else x.reshape(x.shape[:-3].numel(), -1)
    return [f for f in x if f.any()]


def _image_order(pixels, alone: list) -> list[int]:
    """Which image each row/tile the model receives came from (matched against each image's
    own tiles), consecutive repeats collapsed: [0, 1, 2] is prompt order."""
    import torch

    order = []
    for f in _rows(pixels):
        owner = [i for i, rows in enumerate(alone) if any(torch.allclose(f, r, atol=1e-4) for r in rows)]
        assert len(owner) == 1, f"a tile matches images {owner}"
        if not order or order[-1] != owner[0]:
            order.append(owner[0])
    return order


def _between_texts(ids: list, tok, texts: list[str], token: int) -> list[int]:
    """How many `token`s lie between consecutive text parts (found in order); none outside them."""
    spans, pos = [], 0
    for t in texts:
        sub = tok.encode(t, add_special_tokens=False)
        at = _find(ids, sub, pos)
        spans.append((at, at + len(sub)))
        pos = at + len(sub)
    assert token not in ids[: spans[0][0]] and token not in ids[spans[-1][1] :]
    return [ids[a_end:b_start].count(token) for (_, a_end), (b_start, _) in zip(spans, spans[1:])]


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_family_images_in_prompt_order_own_template_new_text_only(tiny, family):
    import torch

    from mmad_boost.models.hf_families import FAMILIES

    model = create_model(f"hf:{tiny(family)}", max_new_tokens="4", dtype="float32")
    assert model.family is FAMILIES[family]
    tok = model.processor.tokenizer
    image_id = _image_token(model)
    prompt, reverse = _family_prompt(), _family_prompt(SHAPES[::-1])
    texts = [p for p in prompt.parts if isinstance(p, str)]
    enc, enc_rev = model.encode([prompt]), model.encode([reverse])
    # image tokens sit between the text parts they stood between, and follow their image
    counts = _between_texts(enc["input_ids"][0].tolist(), tok, texts, image_id)
    assert all(counts) and _between_texts(enc_rev["input_ids"][0].tolist(), tok, texts, image_id) == counts[::-1]
    if family not in SAME_COUNT:
        assert len(set(counts)) == 3, counts
    # the pixels reach the model in prompt order (each image's own tiles from a prompt holding it
    # twice: multi-image prompts are processed differently from single-image ones in LLaVA-OneVision)
    alone = [_rows(model.encode([_family_prompt([s, s], ("a", "b", "c"))])["pixel_values"]) for s in SHAPES]
    assert _image_order(enc["pixel_values"], alone) == [0, 1, 2]
    assert _image_order(enc_rev["pixel_values"], alone) == [2, 1, 0]
    ids = enc["input_ids"][0].tolist()
    # exactly what the processor's own chat pipeline makes of the same conversation
    messages, images = model.messages(prompt)
    pictures = iter(images)
    for item in messages[-1]["content"]:
        if item["type"] == "image":
            item["image"] = next(pictures)
    own = model.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    assert torch.equal(own["input_ids"], enc["input_ids"]) and torch.equal(own["pixel_values"].float(), enc["pixel_values"].float())
    # the folder's own chat template, special tokens once (no second BOS)
    text = tok.decode(ids)
    user, assistant = TEMPLATE_ENDS[family]
    assert text.startswith(user) and text.endswith(assistant)
    if tok.bos_token:
        assert text.count(tok.bos_token) == 1
    # only the new text: a model that always picks token 0 ("A") answers exactly "AAAA"
    with torch.no_grad():
        model.model.lm_head.weight.zero_()
    assert model.generate(prompt) == "AAAA"


def test_every_verified_family_has_a_tiny_model():
    from mmad_boost.models.hf_families import FAMILIES

    assert set(FAMILIES) == set(TINY_FAMILIES) == set(TEMPLATE_ENDS)


def test_missing_processor_package_is_named(tmp_path):
    from mmad_boost.models.hf_families import Family, check_needs

    with pytest.raises(MmadError, match="needs the Python package no_such_pkg_mmad: pip install no_such_pkg_mmad"):
        check_needs(Family("X", "x/x", needs=("no_such_pkg_mmad",)), str(tmp_path))
    check_needs(None, str(tmp_path))


def _batch_prompts():
    return [
        _family_prompt(),
        _family_prompt(SHAPES[1:], ("Query:", " ", "A much longer question about the object, its surface and its edges?")),
        _family_prompt(SHAPES[:1], ("Look", "Defect?")),
        _family_prompt([SHAPES[2], SHAPES[0]], ("x", "y", "Which option?")),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_family_batched_greedy_equals_one_by_one(tiny, family):
    model = create_model(f"hf:{tiny(family)}", max_new_tokens="6", dtype="float32", batch_size="4")
    prompts = _batch_prompts()
    one_by_one = [model._generate_batch([p])[0] for p in prompts]
    assert len(set(one_by_one)) > 1  # the prompts really differ
    assert model._generate_batch(prompts) == one_by_one
    # per-sample stopping: make a token the first answer produces the end-of-turn token
    inputs = model.encode(prompts[:1])
    new = model.model.generate(**inputs, max_new_tokens=6, do_sample=False)[0, inputs["input_ids"].shape[1] :].tolist()
    stop_id = new[2]
    model._eos_ids = {stop_id}
    model.model.generation_config.eos_token_id = stop_id
    short = [model._generate_batch([p])[0] for p in prompts]
    assert short[0] == model.processor.decode(new[: new.index(stop_id)], skip_special_tokens=True).strip() != one_by_one[0]
    assert model._generate_batch(prompts) == short


@pytest.mark.slow
def test_concurrent_callers_are_served_in_batches(tiny_qwen):
    import threading

    model = create_model(f"hf:{tiny_qwen}", max_new_tokens="5", dtype="float32", batch_size="4", batch_wait="2")
    prompts = _batch_prompts() * 2
    expected = [model._generate_batch([p])[0] for p in prompts]
    model._batcher.peak_callers = 4  # as after the first wave of four runner workers
    answers: dict = {}
    start = threading.Barrier(len(prompts))

    def ask(i):
        start.wait()
        answers[i] = model.generate(prompts[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [answers[i] for i in range(len(prompts))] == expected
    assert model._batcher.batch_sizes == [4, 4]


@pytest.mark.slow
def test_one_caller_at_a_time_is_told_to_raise_workers(tiny_qwen, capsys):
    model = create_model(f"hf:{tiny_qwen}", max_new_tokens="1", dtype="float32", batch_size="4", batch_wait="5")
    t0 = time.monotonic()
    for _ in range(8):
        model.generate(_prompt())
    assert time.monotonic() - t0 < 5  # a lone caller never waits for a batch to fill
    assert "run with --workers 4" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_cli_batched_with_workers(tiny_qwen_answers_a, fixture_root, tmp_path):
    from mmad_boost.cli import main

    out = tmp_path / "run"
    argv = [
        "eval",
        "--data",
        str(fixture_root),
        "--model",
        f"hf:{tiny_qwen_answers_a}",
        "--model-option",
        "max_new_tokens=2",
        "--model-option",
        "batch_size=4",
        "--workers",
        "4",
        "--limit",
        "8",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    records = read_records(out / "records.jsonl")
    assert len(records) == 8 and {r["response"] for r in records} == {"AA"} and not any(r["error"] for r in records)


@pytest.mark.slow
def test_runner_workers_fill_batches_and_answers_match_unbatched(tiny_qwen, fixture_root, tmp_path):
    from mmad_boost.protocol.data import Benchmark
    from mmad_boost.running.runner import Runner

    bench = Benchmark(fixture_root)
    items = bench.select()[:12]
    answers = {}
    for batch, workers in ((1, 1), (4, 4)):
        model = create_model(f"hf:{tiny_qwen}", max_new_tokens="3", dtype="float32", batch_size=str(batch))
        Runner(bench, model, tmp_path / f"b{batch}", workers=workers, progress=False, shuffle=False).run(items)
        answers[batch] = {r["qid"]: r["response"] for r in read_records(tmp_path / f"b{batch}" / "records.jsonl")}
        if batch > 1:
            assert max(model._batcher.batch_sizes) > 1  # the runner's threads were served together
    assert len(answers[1]) == 12 and answers[4] == answers[1]


@pytest.mark.parametrize("remove", ["tokenizer.json", "model.safetensors", "preprocessor_config.json", "config.json"])
def test_partial_folder_fails_fast_naming_the_file(tmp_path, remove):
    d = tmp_path / "m"
    d.mkdir()
    for f in ["config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"]:
        if f != remove:
            (d / f).write_text("{}")
    t0 = time.monotonic()
    with pytest.raises(MmadError, match=remove.replace(".", r"\.")):
        create_model(f"hf:{d}", batch_size="4")
    assert time.monotonic() - t0 < 2


def test_bad_batch_options(tmp_path):
    with pytest.raises(MmadError, match="batch_size"):
        create_model(f"hf:{tmp_path}", batch_size="0")
    with pytest.raises(MmadError, match="hf model option batch_size='many': use a whole number"):
        create_model(f"hf:{tmp_path}", batch_size="many")


# -- the micro-batching queue on its own (no model) --------------------------------------------
from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(callers=st.integers(1, 12), size=st.integers(1, 5), wait=st.sampled_from([0.0, 0.002, 0.02]), bad=st.sets(st.integers(0, 11), max_size=3))
def test_micro_batcher_gives_each_caller_its_own_answer(callers, size, wait, bad):
    import threading

    from mmad_boost.models.batching import MicroBatcher

    seen: list[list[int]] = []

    def run(items):
        seen.append(list(items))
        if any(i in bad for i in items):
            raise ValueError(f"bad item in {items}")
        time.sleep(0.001)
        return [i * 10 for i in items]

    batcher = MicroBatcher(run, size, wait)
    results: dict = {}

    def ask(i):
        try:
            results[i] = batcher.submit(i)
        except ValueError as e:
            results[i] = e

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    for i in range(callers):
        if i in bad:
            assert isinstance(results[i], ValueError) and f"[{i}]" in str(results[i])  # fails alone
        else:
            assert results[i] == i * 10
    assert all(len(b) <= size for b in seen)
    served = [i for b in seen for i in b if len(b) == 1 or not any(j in bad for j in b)]
    assert sorted(served) == list(range(callers))  # each question answered exactly once
