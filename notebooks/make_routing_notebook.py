"""The cells of notebooks/04_routing.ipynb (written by make_notebooks.py, kept here to keep that file short).

.venv/bin/python notebooks/make_notebooks.py            # writes every notebook, this one included
"""

from __future__ import annotations

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from make_notebooks import BUILD_MODEL

INTRO = (
    "# 4 · Routing: which boosts for which question, chosen on a dev part\n\n"
    "The paper applies every boost to every question; its experts lower anomaly discrimination and defect "
    "classification, and RAG lowers discrimination for two of four models. `mmad-boost tune` chooses per subtask "
    "from data: it splits the *images* (not the questions) by a seed into a dev part and an untouched test part, "
    "evaluates every combination of knowledge and expert on dev only, and turns that evidence into a routing by a "
    "rule. The default, `two-level`, first takes the combination with the best dev Average over all subtasks "
    "together (one choice, on every dev question), then deviates from it for a subtask only with evidence: a boost "
    "is dropped there when its paired bootstrap interval on that subtask is below zero, another added when its "
    "interval is above zero. Two other rules are shown beside it: `beyond-noise` keeps a boost for a subtask only "
    "when its interval there is above zero; `not-harmful` leaves one out only when dev shows it hurts (docs/routing.md "
    "says why the default is two-level). The test part then scores the tuned routing "
    "beside *all boosts on* and *none*, each with a 95 % interval over images, and the paired differences say "
    "whether they are within noise.\n\n"
    "**The configuration cell below is the only one to edit.** As shipped it runs offline on the bundled VisA "
    "sample (40 images, so a 0.3 dev part is 12 images: little evidence for any boost) with `baseline:features`, "
    "which is *not* a language model. A model that cannot be built stops the notebook with its error; "
    "`ALLOW_FALLBACK = True` answers by chance instead (`baseline:random`), and then every result says so. "
    "One split is one draw: the last cells repeat the tuning over several split seeds (cheap: responses are "
    "cached by prompt, so another split asks the model nothing new)."
)

CONFIG = (
    "# ==== configuration: the only cell to edit ====\n"
    "DATA = None             # None: the bundled VisA sample; or an MMAD data root\n"
    "QUESTIONS = None\n"
    'MODEL = "baseline:features"\n'
    "MODEL_OPTIONS = {}\n"
    "ALLOW_FALLBACK = False  # True: if MODEL cannot be built, answer by chance, labelled in every result\n"
    "DEV_FRACTION = 0.3      # share of each (category, normal/defective) group's images used for choosing\n"
    "SEEDS = [0, 1, 2, 3, 4] # split seeds; the first is shown in detail\n"
    'RULES = ["two-level", "beyond-noise", "not-harmful"]  # the first is the default of `mmad-boost tune`\n'
    'BOOSTS = dict(rag=True, expert="patchcore", calibrated=True)  # the boosts to choose among (BoostedModel keywords)\n'
    'OUT = "runs/routing"'
)

SETUP = (
    """\
import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
os.environ.setdefault("TQDM_DISABLE", "1")
import warnings
warnings.filterwarnings("ignore", message="IProgress not found")
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from mmad_boost import MmadError, create_model
from mmad_boost.protocol.data import Benchmark
from mmad_boost.boosts.tune import report_markdown, tune
from mmad_boost.reporting.uncertainty import format_interval

"""
    + BUILD_MODEL
    + """
out_dir = Path(OUT)
if DATA is None:
    from mmad_boost.demo import build_sample_bench

    if not (out_dir / "bench" / "mmad.json").is_file():
        build_sample_bench(out_dir / "bench")
    DATA = out_dir / "bench"
bench = Benchmark(DATA, QUESTIONS)
boosts = tuple(b for b, on in (("knowledge", BOOSTS.get("rag")), ("expert", BOOSTS.get("expert"))) if on)


def say(*parts):
    line = " ".join(str(p) for p in parts)
    print(line if FALLBACK is None else f"[FALLBACK - chance answers, not {MODEL_ASKED}] {line}")


def tuned(seed, rule):
    return tune(bench, base, out_dir / "work", boost_options=BOOSTS, boosts=boosts, dev_fraction=DEV_FRACTION, seed=seed,
                rule=rule, progress=False, model_spec=MODEL, log=say)
"""
)

FIRST = """\
results = {(SEEDS[0], rule): tuned(SEEDS[0], rule) for rule in RULES}
for rule in RULES:
    r = results[(SEEDS[0], rule)]
    warn = "" if FALLBACK is None else f"**FALLBACK: {FALLBACK}.**\\n\\n"
    display(Markdown(warn + f"### Split seed {SEEDS[0]}, rule `{rule}`\\n\\n" + report_markdown(r)))
"""

PLOT = """\
rows = results[(SEEDS[0], RULES[0])]["report"]["rows"]
names = ["none", "all-on"] + [f"tuned ({rule})" for rule in RULES]
values = [rows["none"]["Average"], rows["all-on"]["Average"]] + [results[(SEEDS[0], rule)]["report"]["rows"]["tuned"]["Average"] for rule in RULES]
fig, ax = plt.subplots(figsize=(7, 3.2))
for i, (point, iv) in enumerate(values):
    ax.bar(i, point, color="#8da0cb" if i < 2 else "#66c2a5")
    if iv:
        ax.errorbar(i, point, yerr=[[point - iv[0]], [iv[1] - point]], color="black", capsize=4)
ax.set_xticks(range(len(names)), names)
ax.set_ylabel("test Average, accuracy %")
ax.set_title(f"held-out part, split seed {SEEDS[0]}: 95 % intervals over images" + (" (FALLBACK: chance answers)" if FALLBACK else ""))
plt.tight_layout()
plt.show()
"""

SEEDS_CELL = """\
for seed in SEEDS[1:]:
    for rule in RULES:
        results[(seed, rule)] = tuned(seed, rule)
lines = ["| split seed | rule | none | all-on | tuned | tuned - better of the two | verdict |", "| ---: | --- | ---: | ---: | ---: | ---: | --- |"]
wins = {rule: 0 for rule in RULES}
for (seed, rule), r in sorted(results.items()):
    rep = r["report"]
    d = rep["deltas"][rep["better"]]
    ok = rep["tuned_at_least_better"]
    wins[rule] += ok
    lines.append(f"| {seed} | {rule} | {rep['rows']['none']['Average'][0]:.1f} | {rep['rows']['all-on']['Average'][0]:.1f} | "
                 f"{rep['rows']['tuned']['Average'][0]:.1f} | {d['delta']:+.1f} {format_interval(d['interval'], signed=True)} vs {rep['better']} | "
                 f"{'at least as well' if ok else 'below'}, {d['noise']} |")
display(Markdown(("" if FALLBACK is None else f"**FALLBACK: {FALLBACK}.**\\n\\n") + "\\n".join(lines)))
for rule in RULES:
    say(f"rule {rule}: the tuned routing scored at least as well as the better of all-on and none on {wins[rule]} of {len(SEEDS)} splits")
"""

CLOSING = (
    "**Reading the results.** Every number above comes from a test part that the choice never saw. With the "
    "bundled sample a dev part holds about a dozen images, so per subtask only a very large effect (knowledge for "
    "object classification) clears a 95 % interval: `beyond-noise` then leaves out boosts that do help, and loses to "
    "*all-on* wherever every boost helps. `two-level` chooses the boosts once on all dev questions (one choice among "
    "four, on several times the evidence of any one subtask) and changes that choice for a subtask only where the subtask's own interval "
    "excludes zero; `not-harmful` keeps every boost unless dev shows harm. On a real benchmark (hundreds of images "
    "per subtask) the intervals are "
    "narrow and the rules agree where the effects are real. The same tuning on your data: "
    "`mmad-boost tune --data ROOT --model SPEC --dev-fraction 0.3 --seed 0 --calibrated --out route.toml`, then "
    "`mmad-boost eval ... --rag --expert patchcore --calibrated --route route.toml`."
)


def routing_notebook() -> nbformat.NotebookNode:
    nb = new_notebook(
        cells=[
            new_markdown_cell(INTRO),
            new_code_cell(CONFIG),
            new_code_cell(SETUP),
            new_markdown_cell("## Tune on dev, score on the untouched test part (first split seed, each rule)"),
            new_code_cell(FIRST),
            new_code_cell(PLOT),
            new_markdown_cell("## One split is one draw: the same over several split seeds"),
            new_code_cell(SEEDS_CELL),
            new_markdown_cell(CLOSING),
        ]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb
