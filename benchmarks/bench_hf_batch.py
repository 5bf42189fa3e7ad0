"""Questions per second of the `hf:` adapter at batch sizes 1, 4 and 16, on a tiny random model on CPU.

The model is one of the tiny random models the tests build (tests/hf_tiny.py: 2 text layers of
width 32, 1 vision block), so the figures measure the adapter's batching (padding, one forward
pass for many questions, per-question stopping), not a real model's speed. Questions arrive as
they do in a run: `batch_size` threads (the runner's --workers) each call generate() for one
MMAD-style prompt (a template and a query image, instruction and options). Each batch size is
measured side by side in one process on the same prompts, and the answers must be identical to
batch size 1 (greedy).

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_hf_batch.py [--family qwen2_vl] [--questions 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hf_tiny import FAMILIES, build_tiny  # noqa: E402


def prompts(n: int):
    from PIL import Image

    from mmad_boost.protocol.prompt import Query, build_prompt

    out = []
    for i in range(n):
        q = Query(
            question=["Is there any defect in the object?", "What is the type of the defect?", "Where is the defect?"][i % 3],
            options={"A": "Yes", "B": "No"} if i % 3 == 0 else {"A": "Crack", "B": "Scratch", "C": "Hole", "D": "None"},
            image=Image.new("RGB", (112 + 28 * (i % 3), 112), (200, 30 + 5 * i % 200, 30)),
            templates=[Image.new("RGB", (112, 112), (30, 200, 30))],
        )
        out.append(build_prompt(q))
    return out


def measure(folder: Path, batch: int, items: list, max_new_tokens: int) -> tuple[float, list[str]]:
    from mmad_boost.models import create_model

    model = create_model(f"hf:{folder}", max_new_tokens=str(max_new_tokens), dtype="float32", batch_size=str(batch))
    model.generate(items[0])  # warm-up outside the clock
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=batch) as pool:  # as --workers batch_size
        answers = list(pool.map(model.generate, items))
    dt = time.perf_counter() - t0
    sizes = model._batcher.batch_sizes[1:]
    print(f"  batch_size={batch:>2}: {len(items) / dt:6.2f} questions/s  ({dt:.2f} s, mean batch {sum(sizes) / len(sizes):.1f})", flush=True)
    return len(items) / dt, answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="qwen2_vl", choices=sorted(FAMILIES), help="tiny model family (default qwen2_vl)")
    ap.add_argument("--questions", type=int, default=64, help="questions per batch size (default 64)")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="new tokens per answer (default 16; the random model never stops early)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny(args.family, Path(tmp) / args.family)
        items = prompts(args.questions)
        print(f"hf: tiny {args.family}, {args.questions} questions, {args.max_new_tokens} new tokens each, CPU, torch threads {torch.get_num_threads()}")
        qps, answers = {}, {}
        for b in (1, 4, 16):
            qps[b], answers[b] = measure(folder, b, items, args.max_new_tokens)
    same = all(answers[b] == answers[1] for b in answers)
    print(f"speed-up over batch_size=1: x{qps[4] / qps[1]:.2f} at 4, x{qps[16] / qps[1]:.2f} at 16; answers identical to batch_size=1: {same}")
    if args.json:
        Path(args.json).write_text(json.dumps({"family": args.family, "questions_per_s": qps, "identical": same}, indent=2))
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
