"""`kb draft` against a real local OpenAI-compatible HTTP server; drafts load, build, reach the prompt; reviewed files are safe."""

from __future__ import annotations

import base64
import io
import re
import tomllib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from mmad_boost.cli import main
from mmad_boost.retrieval.kb_draft import is_draft, toml_text
from mmad_boost.running.records import run_records
from mmad_boost.retrieval.knowledge import load_category_file
from test_adapters_openai import completion, server  # noqa: F401  (the real HTTP server fixture)

_ASKED = re.compile(r"normal, defect-free (\w+) products|normal (\w+)\. The")


def _texts(body) -> str:
    return "".join(c.get("text", "") for m in body["messages"] for c in (m["content"] if isinstance(m["content"], list) else [{"text": m["content"]}]))


def _images(body) -> list[Image.Image]:
    out = []
    for m in body["messages"]:
        for c in m["content"] if isinstance(m["content"], list) else []:
            if c["type"] == "image_url":
                out.append(Image.open(io.BytesIO(base64.b64decode(c["image_url"]["url"].split(",", 1)[1]))).convert("RGB"))
    return out


def _category_asked(body) -> str | None:
    m = _ASKED.search(_texts(body))
    return (m.group(1) or m.group(2)) if m else None


def _reply(body, n):
    cat = _category_asked(body)
    if cat is None:  # an eval question
        return 200, {}, completion("Answer: A")
    kind = "normal" if "defect-free" in _texts(body) else "defect"
    return 200, {}, completion(f'TOKEN-{cat}-{kind}: a "quoted" \\ description.\nSecond line.')


def _draft(root, server, out):  # noqa: F811
    return main(
        [
            "kb",
            "draft",
            "--data",
            str(root),
            "--model",
            "openai:test-vlm",
            "--base-url",
            server.url,
            "--api-key-env",
            "none",
            "--normals",
            "2",
            "--per-defect",
            "1",
            "--out",
            str(out),
        ]
    )


@pytest.mark.slow
def test_draft_per_category_then_build_and_eval_uses_it(fixture_root, server, tmp_path):  # noqa: F811
    server.reply = _reply
    out = tmp_path / "drafts"
    assert _draft(fixture_root, server, out) == 0
    files = sorted(out.rglob("*.toml"))
    assert [f.name for f in files] == ["gadget.toml", "widget.toml"]  # one draft per category
    for f in files:
        d = tomllib.loads(f.read_text(encoding="utf-8"))
        cat = f.stem
        assert d["dataset"] == "MVTec" and d["category"] == cat and is_draft(f)
        assert d["draft"]["model"] == "openai:test-vlm" and len(d["draft"]["normal_images"]) == 2
        assert all(k.startswith(f"MVTec-AD/{cat}/") for k in d["draft"]["normal_images"] + d["draft"]["defect_images"])
        assert d["normal"].startswith(f'TOKEN-{cat}-normal: a "quoted" \\ description.')
        assert sorted(x["name"] for x in d["defect"]) == ["hole", "scratch"]  # from the Defect Classification answers
        load_category_file(f)  # what kb build reads
    # the requests carry that category's images (the fixture's widgets are orange, gadgets blue)
    assert len(server.requests) == 2 * 3  # per category: the normal look, two defect types
    for req in server.requests:
        cat = _category_asked(req["body"])
        imgs = _images(req["body"])
        assert cat in ("widget", "gadget") and imgs
        for im in imgs:
            r, _, b = np.asarray(im, dtype=float).reshape(-1, 3).mean(0)
            assert (r > b) == (cat == "widget")
        if "defect-free" not in _texts(req["body"]):  # a normal reference, then the defect image with its mask drawn in red
            assert len(imgs) == 2 and "outlined in red" in _texts(req["body"])
    kb = tmp_path / "kb"
    assert main(["kb", "build", "--data", str(fixture_root), "--knowledge", str(out), "--refs-per-category", "2", "--no-progress", "--out", str(kb)]) == 0
    server.requests.clear()
    run = tmp_path / "run"
    assert (
        main(
            [
                "eval",
                "--data",
                str(fixture_root),
                "--model",
                "openai:test-vlm",
                "--base-url",
                server.url,
                "--api-key-env",
                "none",
                "--rag",
                "--kb",
                str(kb),
                "--limit",
                "4",
                "--no-progress",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    asked = [_texts(r["body"]) for r in server.requests]
    assert asked and all(re.search(r"TOKEN-(widget|gadget)-normal", t) for t in asked)  # the drafted text is in every prompt
    assert all(r["trace"]["retrieval"]["knowledge_chars"] > 0 for r in run_records(run))


def test_reviewed_files_are_never_overwritten(fixture_root, server, tmp_path):  # noqa: F811
    server.reply = _reply
    out = tmp_path / "drafts"
    reviewed = out / "MVTec-AD" / "widget.toml"
    reviewed.parent.mkdir(parents=True)
    text = 'dataset = "MVTec"\ncategory = "widget"\nnormal = "Reviewed by a person."\n'
    reviewed.write_text(text, encoding="utf-8")
    broken = out / "MVTec-AD" / "gadget.toml"
    broken.write_text("not [ toml", encoding="utf-8")  # unreadable: not known to be a draft, so kept too
    assert _draft(fixture_root, server, out) == 0
    assert reviewed.read_text(encoding="utf-8") == text and broken.read_text(encoding="utf-8") == "not [ toml"
    assert not server.requests  # nothing asked for kept categories
    broken.unlink()
    assert _draft(fixture_root, server, out) == 0
    assert reviewed.read_text(encoding="utf-8") == text and is_draft(broken)
    assert {_category_asked(r["body"]) for r in server.requests} == {"gadget"}
    server.requests.clear()
    assert _draft(fixture_root, server, out) == 0  # a draft is redrafted
    assert {_category_asked(r["body"]) for r in server.requests} == {"gadget"}


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_model_answer_is_written_as_valid_toml(text):
    value = tomllib.loads("x = " + toml_text(text))["x"]
    expected = re.sub(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]", "", text.replace("\r\n", "\n").replace("\r", "\n")).strip()
    assert value == expected
