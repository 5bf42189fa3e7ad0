"""Records of seeded runs on the bundled sample are the same as those stored before a reshaping of
the code (tests/golden/seeded_runs.py writes them): every boost, drawing style, evidence mode,
route and setting, with a model whose answer depends on every byte of its prompt."""

from __future__ import annotations

import json

import pytest

from golden.seeded_runs import CONFIGS, STORED, run_all

pytestmark = pytest.mark.slow


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def test_seeded_run_records_are_unchanged(tmp_path, one_torch_thread):
    stored = json.loads(STORED.read_text())
    got = run_all(tmp_path)
    assert set(got) == set(stored) == set(CONFIGS)
    for name in CONFIGS:
        want, have = _rounded(stored[name]), _rounded(got[name])
        assert [r["qid"] for r in have] == [r["qid"] for r in want], name
        for a, b in zip(have, want):
            assert a == b, f"{name}: {a['qid']} differs"
