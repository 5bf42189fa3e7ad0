"""Bad input: every user mistake ends in ONE line `error: <file or field>: what; fix`, exit 2, no
traceback and no run folder left behind. Odd but valid images (CMYK, 16-bit, grayscale) must work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmad_boost.cli import main
from mmad_boost.protocol.data import Benchmark
from mmad_boost.errors import MmadError

GOOD = "MVTec-AD/widget/test/good/000.png"
BAD = "MVTec-AD/widget/test/scratch/004.png"
TEMPLATE = "MVTec-AD/widget/train/good/000.png"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def eval_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--data", str(root), "--model", "baseline:random", "--out", str(out), "--no-progress", *extra]


def assert_user_error(rc: int, err: str, *needles: str) -> str:
    """Exit 2, exactly one non-empty stderr line `error: ...` holding every needle, no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def edit_questions(root: Path, change) -> Path:
    qf = root / "mmad.json"
    data = json.loads(qf.read_text())
    result = change(data)  # edits in place, or returns a new dict
    qf.write_text(json.dumps(result if isinstance(result, dict) else data))
    return qf


def expect_eval_error(capsys, root: Path, tmp_path: Path, *needles: str, extra=()) -> str:
    out = tmp_path / "run"
    rc, _, err = run_cli(capsys, *eval_args(root, out, *extra))
    line = assert_user_error(rc, err, *needles)
    assert not out.exists(), "a failed start must leave no run folder behind"
    return line


# -- the question file -------------------------------------------------------------------------


def _first_q(data):
    return data[GOOD]["conversation"][0]


QUESTION_FILE_CASES = {
    "not-json": (lambda root: (root / "mmad.json").write_text('{"a": [1, 2'), ["mmad.json", "not valid JSON", "line 1"]),
    "not-utf8": (lambda root: (root / "mmad.json").write_bytes(b'{"\xff\xfe": 1}'), ["mmad.json", "UTF-8"]),
    "top-level-list": (lambda root: (root / "mmad.json").write_text("[]"), ["mmad.json", "JSON object keyed by image path"]),
    "empty-object": (lambda root: (root / "mmad.json").write_text("{}"), ["mmad.json", "no images"]),
    "value-not-object": (lambda root: edit_questions(root, lambda d: d.update({GOOD: "x"})), [GOOD, "must be an object"]),
    "missing-conversation": (lambda root: edit_questions(root, lambda d: d[GOOD].pop("conversation")), [GOOD, "'conversation'", "add it"]),
    "conversation-wrong-type": (lambda root: edit_questions(root, lambda d: d[GOOD].update(conversation="Is it ok?")), [GOOD, "'conversation' must be list"]),
    "question-not-object": (lambda root: edit_questions(root, lambda d: d[GOOD]["conversation"].append(3)), [GOOD, "question 2", "must be an object"]),
    "missing-answer": (lambda root: edit_questions(root, lambda d: _first_q(d).pop("Answer")), [GOOD, "question 0", "'Answer'"]),
    "answer-not-an-option": (
        lambda root: edit_questions(root, lambda d: _first_q(d).update(Answer="E")),
        [GOOD, "answer 'E' is not among the options", "fix 'Answer'"],
    ),
    "answer-lowercase": (lambda root: edit_questions(root, lambda d: _first_q(d).update(Answer="a")), [GOOD, "answer 'a'"]),
    "options-empty": (lambda root: edit_questions(root, lambda d: _first_q(d).update(Options={})), [GOOD, "'Options' must be a non-empty object"]),
    "option-letter-bad": (lambda root: edit_questions(root, lambda d: _first_q(d).update(Options={"A": "Yes", "F": "No"})), [GOOD, "option 'F'"]),
    "option-text-not-str": (lambda root: edit_questions(root, lambda d: _first_q(d).update(Options={"A": "Yes", "B": 2})), [GOOD, "option 'B'"]),
    "question-not-str": (lambda root: edit_questions(root, lambda d: _first_q(d).update(Question=["x"])), [GOOD, "'Question' must be a string"]),
    "type-missing": (lambda root: edit_questions(root, lambda d: _first_q(d).pop("type")), [GOOD, "'type' must be one of", "Anomaly Detection"]),
    "type-unknown": (
        lambda root: edit_questions(root, lambda d: _first_q(d).update(type="Anomaly detection")),
        [GOOD, "'Anomaly detection'", "Object Details"],
    ),
    "mask-path-wrong-type": (lambda root: edit_questions(root, lambda d: d[BAD].update(mask_path=7)), [BAD, "'mask_path' must be a string"]),
    "templates-wrong-type": (lambda root: edit_questions(root, lambda d: d[GOOD].update(random_templates=TEMPLATE)), [GOOD, "'random_templates' must be list"]),
}


@pytest.mark.parametrize("case", sorted(QUESTION_FILE_CASES))
def test_malformed_question_file(case, fixture_root, tmp_path, capsys):
    make_bad, needles = QUESTION_FILE_CASES[case]
    make_bad(fixture_root)
    expect_eval_error(capsys, fixture_root, tmp_path, *needles)


def test_duplicate_image_keys(fixture_root, tmp_path, capsys):
    qf = fixture_root / "mmad.json"
    text = qf.read_text()
    entry = json.dumps(json.loads(text)[GOOD])
    qf.write_text(text.rstrip()[:-1] + f', "{GOOD}": {entry}}}')
    expect_eval_error(capsys, fixture_root, tmp_path, "mmad.json", f"duplicate key {GOOD!r}", "merge")


def test_missing_question_file_and_data_root(fixture_root, tmp_path, capsys):
    expect_eval_error(capsys, fixture_root, tmp_path, "nope.json", "not found", "--questions", extra=["--questions", str(tmp_path / "nope.json")])
    rc, _, err = run_cli(capsys, *eval_args(tmp_path / "no-such-root", tmp_path / "run"))
    assert_user_error(rc, err, "no-such-root", "--data")


# -- images ---------------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


IMAGE_CASES = {
    "missing": (lambda p: p.unlink(), ["000.png", "not found", "--data"]),
    "zero-byte": (lambda p: p.write_bytes(b""), ["000.png", "empty (0 bytes)", "replace"]),
    "not-an-image": (lambda p: p.write_text("<html>404 Not Found</html>"), ["000.png", "cannot be read", "replace"]),
    "truncated-png": (_truncate, ["000.png", "truncated", "replace"]),
    "a-folder": (lambda p: (p.unlink(), p.mkdir()), ["000.png", "not found"]),
}


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_bad_query_image(case, fixture_root, tmp_path, capsys):
    change, needles = IMAGE_CASES[case]
    change(fixture_root / GOOD)
    line = expect_eval_error(capsys, fixture_root, tmp_path, *needles)
    assert "test/good/000.png" in line


@pytest.mark.parametrize("case", ["missing", "zero-byte", "truncated-png"])
def test_bad_template_image(case, fixture_root, tmp_path, capsys):
    change, needles = IMAGE_CASES[case]
    change(fixture_root / TEMPLATE)
    line = expect_eval_error(capsys, fixture_root, tmp_path, *needles)
    assert "train/good/000.png" in line


def test_truncated_jpeg_is_refused(fixture_root, tmp_path, capsys):
    # JPEG decoders happily return half a picture; the run must not score a grey half-image
    def to_jpeg(data):
        new = {}
        for key, value in data.items():
            if key == GOOD:
                src = fixture_root / key
                Image.open(src).convert("RGB").save(src.with_suffix(".jpg"), quality=95)
                _truncate(src.with_suffix(".jpg"))
                key = key.replace(".png", ".jpg")
            new[key] = value
        return new

    edit_questions(fixture_root, to_jpeg)
    expect_eval_error(capsys, fixture_root, tmp_path, "000.jpg", "truncated")


def _save_odd(path: Path, kind: str) -> None:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    if kind == "cmyk":
        Image.fromarray(rgb).convert("CMYK").save(path.with_suffix(".jpg"), quality=95)
        path.unlink()
    elif kind == "gray16":
        a = rgb.mean(axis=2).astype(np.uint16) * 200  # 12-bit-like range in a 16-bit file
        Image.fromarray(a).save(path)
    elif kind == "gray8":
        Image.fromarray(rgb).convert("L").save(path)
    elif kind == "rgba":
        Image.fromarray(rgb).convert("RGBA").save(path)
    elif kind == "palette":
        Image.fromarray(rgb).convert("P").save(path)


@pytest.mark.parametrize("kind", ["cmyk", "gray16", "gray8", "rgba", "palette"])
def test_odd_image_encodings_work(kind, fixture_root, tmp_path, capsys):
    from reliability_support import SEEN_IMAGES

    targets = [GOOD, BAD, TEMPLATE]
    for key in targets:
        _save_odd(fixture_root / key, kind)
    edit_questions(fixture_root, lambda d: {k: d[k] for k in (GOOD, BAD)})
    if kind == "cmyk":

        def rename(data):
            text = json.dumps(data)
            for key in targets:
                text = text.replace(key, key.replace(".png", ".jpg"))
            return json.loads(text)

        edit_questions(fixture_root, rename)
    SEEN_IMAGES.clear()
    out = tmp_path / "run"
    rc, _, err = run_cli(capsys, "eval", "--data", str(fixture_root), "--model", "python:reliability_support:image_probe", "--out", str(out), "--no-progress")
    assert rc == 0, err
    records = [json.loads(ln) for ln in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(r["error"] is None for r in records)
    assert {m for m, _ in SEEN_IMAGES} == {"RGB"}
    assert {s for _, s in SEEN_IMAGES} == {(128, 128)}


def test_sixteen_bit_keeps_contrast(tmp_path):
    from mmad_boost.protocol.data import load_rgb

    a = np.zeros((8, 8), np.uint16)
    a[:, 4:] = 4000  # 12-bit data in a 16-bit container: must not become all black
    Image.fromarray(a).save(tmp_path / "x.png")
    rgb = np.asarray(load_rgb(tmp_path / "x.png"))
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 8, 3)
    assert rgb[:, :4].max() == 0 and rgb[:, 4:].min() == 255


# -- masks ------------------------------------------------------------------------------------------


def _mask_file(root: Path) -> Path:
    bench = Benchmark(root)
    return bench.mask_file(bench.by_key[BAD])


def test_mask_of_other_size_is_refused(fixture_root):
    path = _mask_file(fixture_root)
    Image.new("L", (64, 64), 255).save(path)
    bench = Benchmark(fixture_root)
    with pytest.raises(MmadError) as e:
        bench.load_mask(bench.by_key[BAD])
    msg = str(e.value)
    assert "\n" not in msg and path.name in msg and "64x64" in msg and "128x128" in msg and "resize" in msg


def test_mask_folder_merged_and_empty_folder_refused(fixture_root):
    path = _mask_file(fixture_root)
    folder = path.with_suffix("")
    folder.mkdir()
    for i, box in enumerate([(0, 0, 10, 10), (100, 100, 120, 120)]):
        m = np.zeros((128, 128), np.uint8)
        m[box[1] : box[3], box[0] : box[2]] = i + 1  # label-valued, as VisA
        Image.fromarray(m).save(folder / f"{i}.png")
    edit_questions(fixture_root, lambda d: d[BAD].update(mask_path=d[BAD]["mask_path"][: -len(".png")]))
    bench = Benchmark(fixture_root)
    merged = bench.load_mask(bench.by_key[BAD])
    assert merged.dtype == bool and merged.sum() == 100 + 400
    for f in folder.iterdir():
        f.unlink()
    with pytest.raises(MmadError, match="holds no mask images; add them or clear 'mask_path'"):
        bench.load_mask(bench.by_key[BAD])


def test_mask_missing_or_unreadable(fixture_root):
    path = _mask_file(fixture_root)
    bench = Benchmark(fixture_root)
    path.write_text("not a png")
    with pytest.raises(MmadError, match="cannot be read"):
        bench.load_mask(bench.by_key[BAD])
    path.unlink()
    with pytest.raises(MmadError, match="not found; check 'mask_path'"):
        bench.load_mask(bench.by_key[BAD])


# -- paths that leave the data root -------------------------------------------------------------


def _outside_image(tmp_path: Path) -> Path:
    p = tmp_path / "outside" / "x.png"
    p.parent.mkdir()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(p)
    return p


@pytest.mark.parametrize("how", ["dotdot-key", "absolute-key", "dotdot-template"])
def test_paths_cannot_escape_the_data_root(how, fixture_root, tmp_path, capsys):
    outside = _outside_image(tmp_path)
    rel = f"../outside/{outside.name}"

    def change(data):
        if how == "dotdot-template":
            data[GOOD]["random_templates"] = [rel]
            return data
        new_key = rel if how == "dotdot-key" else str(outside)
        return {new_key: data[GOOD]}

    edit_questions(fixture_root, change)
    expect_eval_error(capsys, fixture_root, tmp_path, "leaves the data root", "--allow-outside-paths")
    rc, _, err = run_cli(capsys, *eval_args(fixture_root, tmp_path / "run", "--allow-outside-paths"))
    assert rc == 0, err


def test_mask_path_cannot_escape(fixture_root):
    edit_questions(fixture_root, lambda d: d[BAD].update(mask_path="../../../../etc/passwd"))
    with pytest.raises(MmadError, match="mask path .* leaves the data root"):
        Benchmark(fixture_root).load_mask(Benchmark(fixture_root).by_key[BAD])


# -- model, setting and option mistakes ---------------------------------------------------------


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--model", "gpt4o"], ["unknown model SPEC 'gpt4o'", "baseline:random"]),
        (["--model", "claude:opus"], ["unknown model SPEC 'claude:opus'"]),
        (["--model", "baseline:nope"], ["unknown baseline 'nope'"]),
        (["--model", "python:no_such_module_xyz:f"], ["no_such_module_xyz", "PYTHONPATH"]),
        (["--model", "python:reliability_support:nothing"], ["has no attribute 'nothing'"]),
        (["--model-option", "seed"], ["--model-option 'seed'", "KEY=VALUE"]),
        (["--setting", "3-shots"], ["unknown setting '3-shots'"]),
        (["--setting", "k-shot:9"], ["random_templates", "needs 9"]),
        (["--shard", "3/2"], ["--shard '3/2'"]),
        (["--category", "nothing"], ["no questions match"]),
    ],
)
def test_bad_options(args, needles, fixture_root, tmp_path, capsys):
    argv = eval_args(fixture_root, tmp_path / "run")
    if "--model" in args:
        i = argv.index("--model")
        argv[i + 1] = args[args.index("--model") + 1]
        args = [a for j, a in enumerate(args) if j not in (args.index("--model"), args.index("--model") + 1)]
    rc, _, err = run_cli(capsys, *argv, *args)
    assert_user_error(rc, err, *needles)
    assert not (tmp_path / "run").exists()


def test_out_is_a_file(fixture_root, tmp_path, capsys):
    out = tmp_path / "run"
    out.write_text("mine")
    rc, _, err = run_cli(capsys, *eval_args(fixture_root, out))
    assert_user_error(rc, err, str(out), "not a folder")
    assert out.read_text() == "mine"


# -- run folders --------------------------------------------------------------------------------------


def test_run_folder_of_another_configuration(shared_fixture_root, tmp_path, capsys):
    out = tmp_path / "run"
    base = eval_args(shared_fixture_root, out, "--limit", "6")
    assert run_cli(capsys, *base)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".jsonl", ".json")}
    for change, field in [(["--seed", "1"], "seed"), (["--setting", "0-shot"], "setting"), (["--parser", "mmad"], "parser"), (["--no-shuffle"], "shuffle")]:
        rc, _, err = run_cli(capsys, *base, *change)
        assert_user_error(rc, err, str(out), f"({field}:", "new --out folder", "--force-mix")
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".jsonl", ".json")} == before
    other_model = [a if a != "baseline:random" else "python:reliability_support:image_probe" for a in base]
    assert_user_error(*run_cli(capsys, *other_model)[::2], "(model:")
    rc, _, err = run_cli(capsys, *base, "--seed", "1", "--force-mix", "--limit", "8")
    assert rc == 0, err
    assert len((out / "records.jsonl").read_text().splitlines()) == 8


def test_changed_question_file_is_another_configuration(fixture_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, *eval_args(fixture_root, out, "--limit", "2"))[0] == 0
    edit_questions(fixture_root, lambda d: _first_q(d).update(Question="Is the object perfect?"))
    rc, _, err = run_cli(capsys, *eval_args(fixture_root, out, "--limit", "2"))
    assert_user_error(rc, err, "questions_sha256")


def test_corrupt_run_files(shared_fixture_root, tmp_path, capsys):
    out = tmp_path / "run"
    base = eval_args(shared_fixture_root, out, "--limit", "4")
    assert run_cli(capsys, *base)[0] == 0
    rec = out / "records.jsonl"
    lines = rec.read_text().splitlines(keepends=True)
    rec.write_text(lines[0] + "{garbage\n" + "".join(lines[1:]))
    assert_user_error(*run_cli(capsys, *base)[::2], "records.jsonl: line 2 is not valid JSON", "remove that line")
    assert_user_error(*run_cli(capsys, "score", str(out))[::2], "records.jsonl: line 2")
    rec.write_text("".join(lines))
    (out / "run.json").write_text("{")
    assert_user_error(*run_cli(capsys, *base)[::2], "run.json is not valid JSON", "new --out folder")


def test_score_bad_folders(tmp_path, capsys):
    assert_user_error(*run_cli(capsys, "score", str(tmp_path / "none"))[::2], "none not found")
    (tmp_path / "empty").mkdir()
    assert_user_error(*run_cli(capsys, "score", str(tmp_path / "empty"))[::2], "no records*.jsonl")


def test_debug_flag_shows_the_traceback(fixture_root, tmp_path):
    (fixture_root / "mmad.json").write_text("{")
    with pytest.raises(MmadError):
        main(["--debug", *eval_args(fixture_root, tmp_path / "run")])
