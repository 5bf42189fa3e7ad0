"""The one registry (mmad_boost/registry.py) and its option converter, and what is built through it:
models, experts, encoders and FAISS index kinds."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mmad_boost.errors import MmadError
from mmad_boost.registry import FALSE_WORDS, NONE_WORDS, TRUE_WORDS, Registry, convert_option, convert_options, format_option, option_pairs, parse_bool


def knobs(
    flag: bool = False,
    count: int = 3,
    rate: float = 0.5,
    label: str = "x",
    limit: int | None = None,
    scale: float | None = 1.0,
    sizes: list[int] | None = None,
    where: Path | None = None,
    anything=None,
):
    return dict(locals())


TYPES = {"flag": bool, "count": int, "rate": float, "label": str, "limit": int | None, "scale": float | None, "sizes": list[int] | None, "where": Path | None}
finite = st.floats(allow_nan=False, allow_infinity=False)
VALUES = {
    "flag": st.booleans(),
    "count": st.integers(),
    "rate": finite,
    "label": st.text(),
    "limit": st.none() | st.integers(),
    "scale": st.none() | finite,
    "sizes": st.none() | st.lists(st.integers(), max_size=5),
    "where": st.none() | st.text(min_size=1).filter(lambda t: t.strip().lower() not in NONE_WORDS).map(Path),
}


def _text(name, value) -> str:
    if name == "sizes" and value is not None:
        return json.dumps(value)
    return format_option(value)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(VALUES)).flatmap(lambda n: st.tuples(st.just(n), VALUES[n])))
def test_every_value_round_trips_through_its_option_string(case):
    name, value = case
    got = convert_options(knobs, {name: _text(name, value)})[name]
    assert got == value and type(got) is type(value)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(TYPES)), st.text(max_size=12))
def test_any_string_is_converted_or_refused_in_one_line_naming_the_option(name, text):
    try:
        got = convert_options(knobs, {name: text}, "widget")[name]
    except MmadError as e:
        message = str(e)
        assert message.startswith(f"widget option {name}=") and "use " in message and "\n" not in message
        return
    # accepted: converting its own string again gives the same value (a fixed point)
    again = convert_options(knobs, {name: _text(name, got)})[name]
    assert again == got or (isinstance(got, float) and math.isnan(got) and math.isnan(again))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=10).filter(lambda t: t.strip().lower() not in TRUE_WORDS + FALSE_WORDS))
def test_a_bool_option_accepts_only_the_documented_words(junk):
    with pytest.raises(MmadError, match="use true or false"):
        parse_bool(junk, "--model-option trust_remote_code")


@pytest.mark.parametrize("word,value", [(w, True) for w in TRUE_WORDS] + [(w.upper(), False) for w in FALSE_WORDS] + [(" On ", True)])
def test_bool_words(word, value):
    assert convert_option(word, bool) is value


def test_forms_named_in_errors():
    with pytest.raises(MmadError, match=r"^w option count='3.5': use a whole number"):
        convert_options(knobs, {"count": "3.5"}, "w")
    with pytest.raises(MmadError, match=r"^w option limit='many': use a whole number or none$"):
        convert_options(knobs, {"limit": "many"}, "w")
    with pytest.raises(MmadError, match=r"rate='inf': use a finite number"):
        convert_options(knobs, {"rate": "inf"}, "w")
    with pytest.raises(MmadError, match=r"sizes='1,2': use a JSON list, e.g. \[1, 2\] \(or none\)"):
        convert_options(knobs, {"sizes": "1,2"}, "w")
    with pytest.raises(MmadError, match=r"^w option 'colour' is unknown; known: flag, count, rate"):
        convert_options(knobs, {"colour": "red"}, "w")


def test_untyped_and_handed_on_options_read_json_literals_else_text():
    def open_ended(size: int = 1, **rest):
        return rest

    assert convert_options(knobs, {"anything": "0.5"})["anything"] == 0.5
    assert convert_options(open_ended, {"ratio": "0.5", "name": "wide", "layers": '["a"]'}) == {"ratio": 0.5, "name": "wide", "layers": ["a"]}
    assert convert_options(knobs, {"count": 7, "label": 3}) == {"count": 7, "label": 3}  # typed Python values pass as given


def test_option_pairs():
    assert option_pairs(["a=1", "b==x", "c="]) == {"a": "1", "b": "=x", "c": ""}
    for bad in ("novalue", "=1"):
        with pytest.raises(MmadError, match=f"--model-option '{bad}': use KEY=VALUE"):
            option_pairs([bad], "--model-option")


def test_registry_lazy_entries_aliases_and_rest():
    reg = Registry("gadget")
    reg.register("missing", "no_such_module_for_mmad:thing")  # registering imports nothing
    reg.register("knobs", knobs)
    reg.register("pair", lambda rest, count=1: (rest, count), rest=True)
    reg.alias("tuned", "knobs", fixed={"flag": True}, count=9)
    assert reg.names() == ["missing", "knobs", "pair", "tuned"] and reg.names(aliases=False) == ["missing", "knobs", "pair"]
    assert reg.create("knobs", count="4")["count"] == 4
    tuned = reg.create("tuned", flag="false", rate="0.25")
    assert (tuned["count"], tuned["flag"], tuned["rate"]) == (9, True, 0.25)  # preset, fixed, the caller's
    assert reg.create("pair:a:b", count="2") == ("a:b", 2)
    with pytest.raises(MmadError, match="gadget 'missing' is not available"):
        reg.create("missing")
    with pytest.raises(MmadError, match=r"gadget 'pair' is unknown; use missing, knobs, pair:<...>, tuned"):
        reg.create("pair")  # a rest entry needs its rest
    with pytest.raises(MmadError, match="gadget tuned option count='x'"):
        reg.create("tuned", count="x")
    reg.register("lazy", "mmad_boost.registry:literal")  # imported on first use
    assert reg.create("lazy", value="[1]") == [1]


def test_models_convert_option_strings_by_their_class():
    from mmad_boost.models import create_model, model_kinds, register_model_kind

    model = create_model("openai:m", api_key_env="none", max_tokens="7", temperature="0.5", max_side="none", base_url=None)
    assert (model.max_tokens, model.temperature, model.max_side) == (7, 0.5, None)
    with pytest.raises(MmadError, match=r"^openai model option max_tokens='lots': use a whole number"):
        create_model("openai:m", api_key_env="none", max_tokens="lots")
    with pytest.raises(MmadError, match=r"openai model option 'colour' is unknown"):
        create_model("openai:m", api_key_env="none", colour="red")
    with pytest.raises(MmadError, match=r"^hf model option trust_remote_code='maybe': use true or false"):
        create_model("hf:/nowhere", trust_remote_code="maybe")
    with pytest.raises(MmadError, match="unknown model SPEC 'nope:x'"):
        create_model("nope:x")
    register_model_kind("echo-test", lambda rest, **o: (rest, o))
    try:
        assert create_model("echo-test:q", k="1") == ("q", {"k": "1"})  # the factory converts, not the registry
        assert "echo-test" in model_kinds()
    finally:
        from mmad_boost.models.registry import MODELS

        MODELS._entries.pop("echo-test")


def test_experts_by_name_with_option_strings():
    from mmad_boost.experts import EXPERTS, create_expert

    expert = create_expert("patchcore", knn="2", foreground="yes", topk="0.01", coreset_ratio="0.5")
    assert (expert.knn, expert.foreground, expert.topk, expert.coreset_ratio) == (2, True, 0.01, 0.5)
    few = create_expert("patchcore-few-shot", mode="full", size="96")
    assert (few.mode, few.size, few.knn, few.foreground) == ("few-shot", 96, 1, True)  # MMAD's set-up; mode stays few-shot
    with pytest.raises(MmadError, match=r"expert patchcore option reweight='sometimes': use true or false"):
        create_expert("patchcore", reweight="sometimes")
    with pytest.raises(MmadError, match=r"expert 'patchkore' is unknown; use patchcore, patchcore-fewshot, gt"):
        create_expert("patchkore")
    assert {"patchcore", "patchcore-fewshot", "gt", "anomalyclip", "anomalib"} <= set(EXPERTS.names())


def test_expert_fit_cli_refuses_a_bad_option_in_one_line(tmp_path, capsys):
    from mmad_boost.cli import main

    rc = main(["expert", "fit", "--data", str(tmp_path), "--category", "VisA/fryum", "--option", "knn=lots", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "expert patchcore option knn='lots': use a whole number" in err


def test_experts_package_imports_no_concrete_expert():
    """The registry's lazy entries broke the base <-> concrete experts import cycle."""
    code = "import sys, mmad_boost.experts as e; e.create_expert('gt');print(sorted(m for m in sys.modules if m.startswith('mmad_boost.experts.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = eval(out)
    assert "mmad_boost.experts.gt" in loaded
    assert not {"mmad_boost.experts.patchcore", "mmad_boost.experts.anomalyclip", "mmad_boost.experts.anomalib_adapter"} & set(loaded)


def test_encoder_names():
    from mmad_boost.retrieval.encoders import ENCODERS, create_encoder

    assert ENCODERS.names() == ["efficientnet-lite0", "minilm", "open_clip"]
    with pytest.raises(MmadError, match=r"encoder 'clip' is unknown; use efficientnet-lite0, minilm or open_clip"):
        create_encoder("clip")
    with pytest.raises(MmadError, match=r"write open_clip:<arch>:<weights file>"):
        create_encoder("open_clip:ViT-B-32")


def _explicit_index(faiss, kind: str, dim: int, data: np.ndarray):
    """The index as the store built it before index kinds became factory strings."""
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    else:
        nlist = max(1, min(int(np.sqrt(len(data))), len(data) // 39 or 1))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(data)
        index.nprobe = min(nlist, 8)
    index.add(data)
    return index


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_kinds_are_factory_strings_with_the_same_file_and_results(kind, tmp_path):
    import faiss

    from mmad_boost.retrieval.store import INDEX_KINDS, KINDS, VectorStore

    assert KINDS == ("flat", "ivf", "hnsw") and INDEX_KINDS.create("ivf", n=1600, nlist=None, hnsw_m=32) == "IVF40,Flat"
    rng = np.random.default_rng(1)
    data = rng.normal(size=(400, 16)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    store = VectorStore({"name": "t", "weights_sha256": "0", "dim": 16, "version": "1"}, kind)
    store.add(data, [{"i": i} for i in range(len(data))])
    store.save(tmp_path, "s")
    explicit = _explicit_index(faiss, kind, 16, data)
    assert (tmp_path / "s.faiss").read_bytes() == faiss.serialize_index(explicit).tobytes()  # the on-disk format is unchanged
    scores, ids = store.search(data[:20], 5)
    want_scores, want_ids = explicit.search(data[:20], 5)
    assert np.array_equal(ids, want_ids) and np.allclose(scores, want_scores)
    again = VectorStore.load(tmp_path, "s")
    assert np.array_equal(again.search(data[:20], 5)[1], ids)
