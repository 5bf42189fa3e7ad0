"""The HTML report fits a 1280 px screen with five runs (checked in headless Chromium): the summary's
Avg column and every run of a question card are visible without horizontal scrolling; the plots are
open at the top."""

from __future__ import annotations

import pytest

from mmad_boost.protocol.data import Benchmark
from mmad_boost.reporting.html_report import write_html_report
from mmad_boost.models.registry import create_model
from mmad_boost.running.runner import Runner
from test_html_report import ARGS, CHROMIUM, InspectorStub, make_visa_bench

WIDTH = 1280


@pytest.fixture(scope="module")
def five_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("layout")
    data = make_visa_bench(base / "data", per_split=2)
    bench = Benchmark(data)
    items = bench.select()
    dirs = []
    for i in range(4):  # long run names and model SPECs, as real ones are
        d = base / f"baseline-random-seed-{i}-with-a-rather-long-run-name"
        Runner(bench, create_model("baseline:random"), d, seed=i, progress=False, model_spec="baseline:random").run(items)
        dirs.append(d)
    d = base / "inspector-stub-boosted-with-rag-and-expert"
    Runner(bench, InspectorStub(), d, progress=False, model_spec="inspector-stub").run(items)
    dirs.append(d)
    return write_html_report(dirs, base / "report")


@pytest.fixture(scope="module")
def page(five_runs):
    if not CHROMIUM.exists():
        pytest.fail("the layout test needs Debian's chromium at /usr/bin/chromium (scripts/test.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        pg = browser.new_page(viewport={"width": WIDTH, "height": 900})
        errors = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(five_runs.resolve().as_uri())
        pg.wait_for_selector("body[data-ready='1']", timeout=20000)
        yield pg
        assert errors == []
        browser.close()


def _box(locator):
    b = locator.bounding_box()
    assert b is not None, "element not rendered"
    return b


@pytest.mark.browser
@pytest.mark.slow
def test_summary_avg_column_is_visible_at_1280(page):
    wrap = page.locator("#scores .tablewrap").first
    table = wrap.locator("table.summary")
    assert table.locator("tr").count() == 6  # header + five runs
    w, t = _box(wrap), _box(table)
    assert t["width"] <= w["width"] + 1, f"summary table {t['width']:.0f} px is wider than its {w['width']:.0f} px box: it scrolls"
    avg = table.locator("tr").first.locator("th").nth(1)
    assert avg.text_content().strip() == "Avg"
    a = _box(avg)
    assert a["x"] >= 0 and a["x"] + a["width"] <= WIDTH
    # the whole page does not scroll sideways either
    body = _box(page.locator("body"))
    assert body["width"] <= WIDTH


@pytest.mark.browser
@pytest.mark.slow
def test_every_run_of_a_question_card_is_on_screen(page):
    cards = page.locator("#rows .q")
    assert cards.count() > 0
    for k in range(min(3, cards.count())):
        card = cards.nth(k)
        c = _box(card)
        assert c["x"] >= 0 and c["x"] + c["width"] <= WIDTH
        answers = card.locator(".ans")
        assert answers.count() == 5
        for r in range(5):
            a = _box(answers.nth(r))
            assert a["x"] >= c["x"] - 1 and a["x"] + a["width"] <= c["x"] + c["width"] + 1, f"run {r + 1} of card {k} is off the card"
            assert a["width"] >= 150  # readable, not squeezed to nothing
        # nothing inside a card is wider than the card (no hidden overflow)
        for sel in ("pre.resp", "figure", ".trace"):
            items = card.locator(sel)
            for j in range(items.count()):
                b = items.nth(j).bounding_box()
                if b:
                    assert b["x"] + b["width"] <= c["x"] + c["width"] + 1, f"{sel} sticks out of card {k}"


@pytest.mark.browser
@pytest.mark.slow
def test_plots_are_open_at_the_top_and_the_radar_is_large(page):
    top = page.locator("#scores .top-plots")
    assert top.locator("figure.heat img").count() == 5
    for i in range(5):
        assert top.locator("figure.heat img").nth(i).is_visible()  # not inside a closed <details>
    radar = _box(top.locator("figure.radar img"))
    assert radar["height"] >= 400  # its labels are readable at this size (drawn with 14 pt labels)
