#!/usr/bin/env bash
# The package works wherever it is installed, and the tests need nothing outside the repo.
#  1. copy the files git knows to a folder with nothing beside it, build the wheel from that copy,
#     install it (not editable) into a fresh venv that reuses .venv's installed
#     dependencies (torch & co.) through a .pth line, and from a folder outside the checkout run
#     the README quickstart, KnowledgeRetriever.default(), `mmad-boost demo --quick` and the full
#     demo (every row present), and a RAG + calibrated PatchCore eval on the bundled sample;
#  2. run the quick tests (-m "not slow") on that copy.
# Usage: check_wheel.sh [WORKDIR]  (default: a new temporary folder, removed at the end)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$root/.venv/bin/python"
[ -x "$py" ] || { echo "error: $root/.venv is missing; run bash scripts/ensure_env.sh dev,ray first" >&2; exit 2; }
work="${1:-}"
if [ -z "$work" ]; then work="$(mktemp -d /tmp/mmad-wheel-check.XXXXXX)"; trap 'rm -rf "$work"' EXIT; fi
mkdir -p "$work"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
export MMAD_BOOST_CACHE_DIR="$work/cache"  # a fresh cache: nothing computed earlier hides work
step() { echo "[check_wheel $(date +%T) +${SECONDS}s] $*"; }
fail() { echo "[check_wheel] FAILED: $*" >&2; exit 1; }

# The files git knows (committed or not), copied with nothing beside them: the wheel is built from
# this copy (no stale build/ of the checkout can leak into it) and the quick tests run on it.
iso="$work/isolated/mmad-boost"
mkdir -p "$iso"
git -C "$root" ls-files -z --cached --others --exclude-standard | (cd "$root" && tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -xf - -C "$iso"
[ "$(ls -A "$work/isolated")" = "mmad-boost" ] || fail "the copy's parent folder holds more than the copy"
step "copied the checkout to $iso; building the wheel from it"
"$py" -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" "$iso" >/dev/null
rm -rf "$iso/build" "$iso"/*.egg-info  # what the build left in the copy
wheel="$(ls "$work"/dist/mmad_boost-*.whl)"
"$py" - "$wheel" <<'EOF' || fail "the wheel misses shipped files"
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = ["mmad_boost/knowledge_base/VisA/fryum.toml", "mmad_boost/sample/experts/visa-fryum/memory_bank.npy",
        "mmad_boost/sample/visa/split_csv/1cls_subset.csv", "mmad_boost/html_assets/report.js"]
missing = [n for n in need if n not in names]
sys.exit(f"missing from the wheel: {missing}" if missing else 0)
EOF
step "wheel $(basename "$wheel"): $(( $(stat -c %s "$wheel") / 1024 )) KiB, holds the knowledge base, sample, experts, HTML assets"

"$py" -m venv "$work/venv"
site="$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# .venv's dependencies, as a plain path entry: its .pth files (the editable install) are not run
"$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/zz_reuse_dependencies.pth"
"$work/venv/bin/python" -m pip install -q --no-deps --no-index "$wheel"
vpy="$work/venv/bin/python"
mkdir -p "$work/elsewhere" && cd "$work/elsewhere"
where="$("$vpy" -c 'import mmad_boost; print(mmad_boost.__file__)')"
case "$where" in "$site"/*) ;; *) fail "mmad_boost imports from $where, not from the installed wheel";; esac
step "installed into $work/venv (mmad_boost from $where); working folder $PWD"

step "README quickstart"
"$vpy" - "$root/README.md" > quickstart.out <<'EOF'
import re, sys
code = re.search(r"```python\n(.*?)```", open(sys.argv[1], encoding="utf-8").read(), re.S).group(1)
exec(compile(code, "README quickstart", "exec"), {})
EOF
cat quickstart.out
grep -q "^Answer: A fryum " quickstart.out || fail "the quickstart did not print 'Answer: A fryum <score>'"
"$vpy" -c 'from mmad_boost.retrieval import KnowledgeRetriever as K; r = K.default(); print("KnowledgeRetriever.default():", len(r.knowledge), "categories from", r.source)'

step "mmad-boost demo --quick"
"$work/venv/bin/mmad-boost" demo --quick --no-progress --out demo_out > demo_quick.out || fail "demo --quick exited $?"
for row in plain rag-image; do grep -q "^| $row |" demo_quick.out || fail "demo --quick printed no $row row"; done
step "mmad-boost demo (resumes the quick runs)"
"$work/venv/bin/mmad-boost" demo --no-progress --out demo_out > demo.out || fail "demo exited $?"
for row in plain rag-image patchcore-calibrated rag-image+patchcore-calibrated gt-expert; do
  grep -q "^| $row |" demo.out || fail "demo printed no $row row"
done
grep "^| " demo.out
"$vpy" - demo_out/runs <<'EOF' || fail "demo rows hold errored answers"
import sys
from pathlib import Path
from mmad_boost.running.records import run_records
bad = {d.name: sum(bool(r.get("error")) for r in run_records(d)) for d in sorted(Path(sys.argv[1]).iterdir())}
bad = {k: v for k, v in bad.items() if v}
sys.exit(f"errored records per run: {bad}" if bad else 0)
EOF
step "demo: all five rows present, no errored answers"

step "mmad-boost eval --rag --retrieval image --expert patchcore --calibrated on the bundled sample"
bench="$("$vpy" -m mmad_boost.sample benchmark)"
"$work/venv/bin/mmad-boost" eval --data "$bench" --model baseline:features --rag --retrieval image --expert patchcore \
  --calibrated --no-progress --out runs/rag-patchcore > eval.out || fail "eval exited $?"
"$vpy" - runs/rag-patchcore <<'EOF'
import sys
from mmad_boost.running.records import run_records
recs = run_records(sys.argv[1])
errors = [r for r in recs if r.get("error")]
found = sum(r["trace"]["retrieval"]["category"] == r["trace"]["retrieval"]["true_category"] for r in recs)
marked = sum(bool(r["trace"]["expert"]["marked"]) for r in recs)
print(f"eval: {len(recs)} records, {len(errors)} errors, retrieved category right on {found}, expert marked {marked}")
assert len(recs) == 139 and not errors, "expected 139 error-free records"
EOF
step "eval done"
cd "$root"

step "quick tests on the copy of the checkout, with nothing beside it"
# .venv's editable install points at this checkout: PYTHONPATH puts the copy's package first
(cd "$iso" && PYTHONPATH="$iso" OMP_NUM_THREADS=1 "$py" -m pytest -q -m "not slow" -p no:cacheprovider) \
  || fail "quick tests on the isolated copy"
step "all wheel and isolation checks passed"
