"""Write the ablation notebooks (01_rag, 02_experts, 03_settings) from the cell sources below.

    .venv/bin/python notebooks/make_notebooks.py

    .venv/bin/python notebooks/make_notebooks.py --execute   # also run them on the bundled sample, outputs kept

Edit this file, not the .ipynb files, and rerun it. The notebooks are committed executed (`--execute`,
in a temporary folder, so no run folders land in the repository); CI executes them again and checks
that they still run (tests/test_notebooks.py).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

CONFIG_NOTE = (
    "**The configuration cell below is the only one to edit.** As shipped, everything runs offline "
    "on the bundled VisA sample (fryum, capsules; CC BY 4.0, downscaled) with the offline baseline "
    "`baseline:features`, which is *not* a language model: it compares image features and matches option "
    "texts against the knowledge text, and reads the expert picture's marks. For the paper's set-up, set "
    "`DATA` to an MMAD data root and `MODEL` to a real model (`openai:gpt-4o`, `hf:/path/to/model`, ...). "
    "A model that cannot be built stops the notebook with its error; `ALLOW_FALLBACK = True` instead answers by "
    "chance (`baseline:random`), and then every result says so. Every value carries a 95 % bootstrap interval "
    "over images and every delta a paired one; a verdict whose interval spans zero says *within noise*."
)

# Builds the model or stops (or falls back, labelled, when asked); shared with make_routing_notebook.py.
BUILD_MODEL = """\
MODEL_ASKED = MODEL
try:  # first: a model that cannot be built stops here, before any work
    base = create_model(MODEL, **MODEL_OPTIONS)
    FALLBACK = None
except MmadError as e:
    if not ALLOW_FALLBACK:
        raise MmadError(f"MODEL = {MODEL!r} cannot be used: {e}. Fix MODEL / MODEL_OPTIONS in the configuration cell "
                        "(or set ALLOW_FALLBACK = True to answer by chance instead, labelled in every result).") from None
    FALLBACK = f"{MODEL} was unavailable ({e}); these are CHANCE answers (baseline:random)"
    MODEL, base = "baseline:random", create_model("baseline:random")
    print("FALLBACK: " + FALLBACK)
"""

SETUP = (
    """\
import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
os.environ.setdefault("TQDM_DISABLE", "1")  # no library progress bars in the notebook
import warnings
# libraries import tqdm.auto, which warns in a notebook without ipywidgets; with the bars off the warning is moot
warnings.filterwarnings("ignore", message="IProgress not found")
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from mmad_boost import BoostedModel, MmadError, create_model
from mmad_boost.reporting.compare import changed_answers, compare_runs
from mmad_boost.protocol.data import Benchmark
from mmad_boost.running.runner import Runner
from mmad_boost.reporting.trace_summary import summarize

"""
    + BUILD_MODEL
    + '''
out_dir = Path(OUT)
if DATA is None:  # build the bundled sample's MMAD-format questions once
    from mmad_boost.demo import build_sample_bench

    if not (out_dir / "bench" / "mmad.json").is_file():
        build_sample_bench(out_dir / "bench")
    DATA = out_dir / "bench"
bench = Benchmark(DATA, QUESTIONS)
items = bench.select(subset=SUBSET, seed=0)
print(f"{len(items)} questions on {len({s.key for s, _ in items})} images from {bench.questions_file}; model {MODEL}")


def run(name, model, setting="1-shot"):
    """Ask every selected question; answers go to OUT/<name> (an existing folder is resumed)."""
    folder = out_dir / name
    Runner(bench, model, folder, setting=setting, seed=0, progress=False, model_spec=MODEL).run(items)
    return folder


def say(*parts):
    """Print a result line; after a fallback every line says that the answers are chance."""
    line = " ".join(str(p) for p in parts)
    print(line if FALLBACK is None else f"[FALLBACK - chance answers, not {MODEL_ASKED}] {line}")


def show(table, title):
    warn = "" if FALLBACK is None else f"**FALLBACK: {FALLBACK}.**\\n\\n"
    display(Markdown(warn + f"**{title}** (Average row, accuracy %, deltas against `{table.labels[0]}`)\\n\\n" + table.markdown()))
    table.plot(title=title + (" (FALLBACK: chance answers)" if FALLBACK else ""))
    plt.show()
'''
)


def notebook(cells: list) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def rag_notebook() -> nbformat.NotebookNode:
    return notebook(
        [
            new_markdown_cell(
                "# 1 · Domain knowledge (RAG) on and off\n\n"
                "MMAD's Table 4: the category's domain knowledge put into the prompt raised the average by "
                "+5.4 to +6.8 points, mostly through defect classification (+16.7 to +20.3). MMAD looked the "
                "knowledge up by the true category (**oracle**); here the query image may also find its "
                "category itself (**image** retrieval, reported separately).\n\n" + CONFIG_NOTE
            ),
            new_code_cell(
                "# ==== configuration: the only cell to edit ====\n"
                'DATA = None            # None: the bundled VisA sample; or an MMAD data root, e.g. "/data/MMAD"\n'
                "QUESTIONS = None       # question file; None: DATA/mmad.json\n"
                'MODEL = "baseline:features"  # or "openai:gpt-4o", "hf:/models/Qwen2-VL-7B-Instruct", ...\n'
                'MODEL_OPTIONS = {}     # e.g. {"base_url": "http://127.0.0.1:8000/v1"}\n'
                "ALLOW_FALLBACK = False # True: if MODEL cannot be built, answer by chance (baseline:random), labelled in every result\n"
                "SUBSET = None          # a seeded random subset of N questions; None: all\n"
                "KNOWLEDGE = None       # None: the shipped knowledge base; or a folder from\n"
                "                       # `mmad-boost kb build --data ROOT --mmad-knowledge domain_knowledge.json --out KB`\n"
                'OUT = "runs"           # run folders, shared by the three notebooks (the plain run is made once; rerunning resumes)'
            ),
            new_code_cell(SETUP),
            new_code_cell(
                "from mmad_boost.retrieval import KnowledgeRetriever\n\n"
                "kb = KnowledgeRetriever.default() if KNOWLEDGE is None else KnowledgeRetriever.load(KNOWLEDGE)\n"
                "runs = {\n"
                '    "plain": run("plain", base),\n'
                '    "+RAG oracle": run("rag-oracle", BoostedModel(base, rag=kb, retrieval="oracle")),\n'
                '    "+RAG image": run("rag-image", BoostedModel(base, rag=kb, retrieval="image")),\n'
                "}\n"
                "table = compare_runs(list(runs.values()), labels=list(runs))\n"
                'show(table, "RAG on/off")'
            ),
            new_markdown_cell("What the retrieval found (per image), and a piece of the knowledge text one prompt received:"),
            new_code_cell(
                "from mmad_boost.running.records import run_records\n\n"
                'for label in ("+RAG oracle", "+RAG image"):\n'
                '    r = summarize(run_records(runs[label]))["retrieval"]\n'
                "    say(f\"{label}: category right {r['right']}/{r['with_truth']}, unknown {r['unknown']}, \"\n"
                "          f\"{r['mean_knowledge_chars']:.0f} knowledge characters per prompt\")\n"
                "sample = next(s for s, _ in items if not s.is_normal)\n"
                'say("\\n" + kb.retrieve(mode="oracle", dataset=sample.dataset, category=sample.category).text[:700], "...")'
            ),
            new_markdown_cell("## Did the knowledge move the answers the way the paper reports?"),
            new_code_cell(
                'for label in ("+RAG oracle", "+RAG image"):\n'
                '    n, total = changed_answers(runs["plain"], runs[label])\n'
                '    say(f"{label}: {n} of {total} answers changed")\n'
                '    say("  " + table.verdict(label, "Defect Classification", +16.7, f"{label}, defect classification", "paper +16.7 to +20.3"))\n'
                '    say("  " + table.verdict(label, "Object Classification", +1, f"{label}, object classification", "paper: up"))\n'
                '    say("  " + table.verdict(label, "Average", +5.4, f"{label}, average", "paper +5.4 to +6.8"))\n'
                'say("\\n(paper: +16.7 to +20.3 on defect classification, +5.4 to +6.8 average, object classification up as well)")'
            ),
            new_markdown_cell(
                "The sentences above are computed from this run's numbers: where a boost did not move a subtask in "
                "the paper's direction they say so. With the offline baseline, knowledge can only help where the "
                "option texts match the knowledge entries (defect and object names); a real MLLM also reads the "
                "descriptions. Sample sizes are small (tens of questions per subtask), so one question is several points: "
                "the 95 % intervals show it, and a verdict whose paired interval spans zero says *within noise*."
            ),
        ]
    )


def experts_notebook() -> nbformat.NotebookNode:
    return notebook(
        [
            new_markdown_cell(
                "# 2 · Expert pictures: experts × viz (drawing), faithful and calibrated\n\n"
                "MMAD's agent table: an anomaly expert's map drawn on the query image. The ground-truth mask "
                "(upper bound) raised every subtask (bbox: +10.1 discrimination, +21.3 localisation), while "
                "PatchCore and AnomalyCLIP pictures *lowered* discrimination by 4 to 13 points, because a map "
                "normalised per image always marks something, normal images included (**faithful** mode). "
                "The **calibrated** mode draws only what the expert believes, nothing on images it judges normal.\n\n" + CONFIG_NOTE
            ),
            new_code_cell(
                "# ==== configuration: the only cell to edit ====\n"
                "DATA = None            # None: the bundled VisA sample; or an MMAD data root\n"
                "QUESTIONS = None\n"
                'MODEL = "baseline:features"\n'
                "MODEL_OPTIONS = {}\n"
                "ALLOW_FALLBACK = False # True: if MODEL cannot be built, answer by chance, labelled in every result\n"
                "SUBSET = None\n"
                'GT_VIZ = ["bbox"]          # ground-truth expert (faithful); add "contour", "highlight", "mask", "heatmap"\n'
                'MODEL_EXPERT = "patchcore"   # fitted per category on train/good, calibrated on a held-out part\n'
                'MODEL_EXPERT_OPTIONS = {}      # e.g. {"backbone": "/weights/wide_resnet50.pth"}\n'
                'MODEL_EXPERT_RUNS = [("bbox", False), ("bbox", True)]  # (viz, calibrated); add ("highlight", False), ...\n'
                'OUT = "runs"'
            ),
            new_code_cell(SETUP),
            new_code_cell(
                'runs = {"plain": run("plain", base)}\n'
                "for viz in GT_VIZ:\n"
                '    runs[f"GT {viz}"] = run(f"gt-{viz}", BoostedModel(base, expert="gt", viz=viz))\n'
                "experts = {}\n"
                "for viz, calibrated in MODEL_EXPERT_RUNS:  # one fit per category, shared by these runs\n"
                '    mode = "calibrated" if calibrated else "faithful"\n'
                "    experts[mode] = model = BoostedModel(base, expert=MODEL_EXPERT, viz=viz, calibrated=calibrated,\n"
                '                                         expert_options=MODEL_EXPERT_OPTIONS, cache_dir=out_dir / "expert-cache")\n'
                '    runs[f"{MODEL_EXPERT} {viz} {mode}"] = run(f"{MODEL_EXPERT}-{viz}-{mode}", model)\n'
                "table = compare_runs(list(runs.values()), labels=list(runs))\n"
                'show(table, "expert pictures")'
            ),
            new_markdown_cell(
                "## The five renderings\n\n"
                "A defective and a normal image of the sample, drawn in every viz by the ground truth and by the "
                "fitted expert in both modes (the runs above saved what each prompt received under `pictures/`)."
            ),
            new_code_cell(
                "from mmad_boost.experts.rendering import render\n\n"
                'VIZ = ["bbox", "contour", "highlight", "mask", "heatmap"]\n'
                "bad = next(s for s, _ in items if not s.is_normal)\n"
                "good = next((s for s, _ in items if s.is_normal and s.category == bad.category), None)\n"
                'gt_expert = BoostedModel(base, expert="gt").expert_for_category(bench.root, bad.dataset, bad.category)\n'
                'rows = [("ground truth", bad, gt_expert, "faithful")]\n'
                "for mode, model in experts.items():\n"
                "    e = model.expert_for_category(bench.root, bad.dataset, bad.category)\n"
                '    rows += [(f"{MODEL_EXPERT} {mode}", s, e, mode) for s in (bad, good) if s is not None]\n'
                "fig, axes = plt.subplots(len(rows), len(VIZ) + 1, figsize=(2.2 * (len(VIZ) + 1), 2.0 * len(rows)), squeeze=False)\n"
                "for i, (name, s, e, mode) in enumerate(rows):\n"
                "    image = bench.load_image(bench.resolve(s.key))\n"
                "    out = e.predict(image, mask=bench.load_mask(s)) if e.needs_mask else e.predict(image)\n"
                '    axes[i][0].imshow(image); axes[i][0].set_title(f"{s.label}\\n{name}", fontsize=7)\n'
                "    for j, viz in enumerate(VIZ, 1):\n"
                "        r = render(image, out.map, viz, mode=mode, is_gt=e.needs_mask, pixel_threshold=out.pixel_threshold,\n"
                '                   decision=out.decision, resample=getattr(e, "resample", None))\n'
                '        axes[i][j].imshow(r.image); axes[i][j].set_title(viz + ("" if r.marked else " (nothing marked)"), fontsize=7)\n'
                "for ax in axes.flat:\n"
                '    ax.axis("off")\n'
                "plt.tight_layout()\n"
                "import io\n"
                "from IPython.display import Image as Picture\n"
                "buf = io.BytesIO()\n"
                'fig.savefig(buf, format="jpeg", dpi=80, pil_kwargs={"quality": 85}); plt.close(fig)\n'
                "display(Picture(buf.getvalue()))  # JPEG: photographs stay small in the committed notebook"
            ),
            new_markdown_cell("## False marks on normal images, hits on defective ones"),
            new_code_cell(
                "from mmad_boost.running.records import run_records\n\n"
                "for label in list(runs)[1:]:\n"
                '    e = summarize(run_records(runs[label]))["expert"]\n'
                "    say(f\"{label:30s} marks on {e['false_marks']}/{e['normal_images']} normal images, \"\n"
                "          f\"{e['marks_on_defective']}/{e['defective_images']} defective images\")"
            ),
            new_markdown_cell("## Did each expert move the answers the way the paper reports?"),
            new_code_cell(
                "for label in list(runs)[1:]:\n"
                '    n, total = changed_answers(runs["plain"], runs[label])\n'
                '    say(f"{label}: {n} of {total} answers changed")\n'
                '    if label == "GT bbox":\n'
                '        say("  " + table.verdict(label, "Defect Localization", +21.29, "localisation"))\n'
                '        say("  " + table.verdict(label, "Anomaly Detection", +10.10, "discrimination"))\n'
                '    elif label.startswith("GT"):\n'
                '        say("  " + table.verdict(label, "Defect Localization", +1, "localisation", "paper: the ground truth helps"))\n'
                '    elif label.endswith("faithful"):\n'
                '        say("  " + table.verdict(label, "Anomaly Detection", -9.58, "discrimination", "paper, PatchCore bbox: -9.58"))\n'
                '    elif label.endswith("calibrated"):\n'
                '        d, (lo, hi) = table.delta(label, "Anomaly Detection"), table.delta_interval(label, "Anomaly Detection")\n'
                '        verdict = "met" if lo >= 0 else ("NOT met" if hi < 0 else "within noise: neither a loss nor a gain is shown")\n'
                '        say(f"  discrimination {d:+.2f} points vs plain, 95 % interval [{lo:+.2f}, {hi:+.2f}] "\n'
                '            f"(this project\'s mode; the aim is no loss: {verdict})")'
            ),
            new_markdown_cell(
                "These verdicts are computed from the numbers above and say plainly when a boost did not go the "
                "paper's way. The offline baseline reads a ground-truth or calibrated picture literally (marks = "
                "defect, their nine-grid cells = location) and ignores a faithful model picture for discrimination "
                "(it marks every image), so the faithful expert changes only its localisation answers."
            ),
        ]
    )


def settings_notebook() -> nbformat.NotebookNode:
    return notebook(
        [
            new_markdown_cell(
                "# 3 · Settings: 0-shot, 1-shot, 1-shot+, k-shot, in-context\n\n"
                "Which images come before the query image (protocol §3). MMAD (InternVL2-40B average): "
                "1-shot 69.67, 1-shot+ 71.66 (a *similar* normal template helps), 2-shot 69.66, in-context 69.32.\n\n" + CONFIG_NOTE
            ),
            new_code_cell(
                "# ==== configuration: the only cell to edit ====\n"
                "DATA = None            # None: the bundled VisA sample; or an MMAD data root\n"
                "QUESTIONS = None\n"
                'MODEL = "baseline:features"\n'
                "MODEL_OPTIONS = {}\n"
                "ALLOW_FALLBACK = False # True: if MODEL cannot be built, answer by chance, labelled in every result\n"
                "SUBSET = None\n"
                'SETTINGS = ["1-shot", "0-shot", "1-shot+", "k-shot:2", "in-context:1"]  # the first is the baseline; add "k-shot:4", ...\n'
                'OUT = "runs"'
            ),
            new_code_cell(SETUP),
            new_code_cell(
                "runs = {}\n"
                "for setting in SETTINGS:\n"
                "    try:\n"
                '        runs[setting] = run("plain" if setting == "1-shot" else setting.replace(":", "-"), base, setting=setting)\n'
                "    except MmadError as e:  # e.g. too few templates in the question file for k-shot\n"
                '        print(f"skipped {setting}: {e}")\n'
                "table = compare_runs(list(runs.values()), labels=list(runs))\n"
                'show(table, "settings")'
            ),
            new_markdown_cell("## Did the settings move the answers the way the paper reports?"),
            new_code_cell(
                'paper = {"1-shot+": +1.99, "k-shot:2": -0.01, "in-context:1": -0.35}  # InternVL2-40B, average vs 1-shot\n'
                "base_label = table.labels[0]\n"
                "for label in table.labels[1:]:\n"
                "    n, total = changed_answers(runs[base_label], runs[label])\n"
                '    line = f"{label}: {n} of {total} answers changed; "\n'
                "    if label in paper:\n"
                '        line += table.verdict(label, "Average", paper[label], f"average vs {base_label}")\n'
                "    else:\n"
                '        lo, hi = table.delta_interval(label, "Average")\n'
                "        line += (f\"average {table.delta(label, 'Average'):+.2f} points vs {base_label}, 95 % interval [{lo:+.2f}, {hi:+.2f}] \"\n"
                '                 + ("- within noise" if lo <= 0 <= hi else "- beyond noise") + " (no paper figure)")\n'
                "    say(line)\n"
                "say(\"\\nanomaly discrimination by setting:\", {l: round(v['Anomaly Detection'], 2) for l, v in zip(table.labels, table.values) if v['Anomaly Detection'] is not None})"
            ),
            new_markdown_cell(
                "The offline baseline uses the templates only for anomaly questions (it compares the query's image "
                "features with them), so settings move discrimination and localisation; its other answers do not "
                "depend on the templates. The paper's differences between settings are small (about 2 points) and "
                "need many questions to show."
            ),
        ]
    )


NOTEBOOKS = {"01_rag.ipynb": rag_notebook, "02_experts.ipynb": experts_notebook, "03_settings.ipynb": settings_notebook}


def routing_notebook() -> nbformat.NotebookNode:
    """04_routing: its cells live in make_routing_notebook.py (kept apart to keep this file short)."""
    import sys

    sys.path.insert(0, str(HERE))
    try:
        from make_routing_notebook import routing_notebook as make
    finally:
        sys.path.remove(str(HERE))
    return make()


NOTEBOOKS["04_routing.ipynb"] = routing_notebook


def execute(names, workdir: Path) -> None:
    """Run the written notebooks top to bottom in `workdir` (one folder for all: the plain run is shared) and keep the outputs."""
    from nbclient import NotebookClient

    for name in names:
        nb = nbformat.read(HERE / name, as_version=4)
        NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
        for cell in nb.cells:  # drop per-run noise so a re-execution changes only what the notebook computed
            cell.metadata.pop("execution", None)
        nbformat.write(nb, HERE / name)
        print(f"executed {HERE / name}")


def main(argv=None) -> None:
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--execute", action="store_true", help="also execute the notebooks on the bundled sample and keep their outputs (default off)")
    ap.add_argument("--workdir", help="folder the notebooks run in when executing (default: a new temporary folder)")
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"notebooks to write (and execute), from {', '.join(NOTEBOOKS)} (default: all)")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in NOTEBOOKS]
    if unknown:
        ap.error(f"unknown notebook {', '.join(unknown)}; choose from {', '.join(NOTEBOOKS)}")
    names = args.names or list(NOTEBOOKS)
    for name in names:  # only these are rewritten: the others keep their outputs
        nbformat.write(NOTEBOOKS[name](), HERE / name)
        print(f"wrote {HERE / name}")
    if args.execute:
        workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mmad-notebooks-"))
        workdir.mkdir(parents=True, exist_ok=True)
        execute(names, workdir)


if __name__ == "__main__":
    main()
