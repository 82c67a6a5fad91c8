"""report.html read as a reader would, in headless Chromium: the plot, the table, the side-by-side matrix.

Every test's page records each request it makes and lets none out but the report file itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from tests.conftest import run_cli

# line 3 is blank (skipped); line 4 tries to end the report's <script> early
PROMPTS = "I was walking through my old school\nSubject: meeting tomorrow\n\nx </script><b>bold</b> & more\n"
GRID = "temperature=0.7,1.5 top_k=0,20,50"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def swept(tiny_checkpoint, exports, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep-report")
    (folder / "prompts.txt").write_text(PROMPTS)
    out = folder / "run"
    result = run_cli("sweep", "--models", str(tiny_checkpoint), "--prompts", str(folder / "prompts.txt"),
                     "--grid", GRID, "--samples", "2", "--max-new-tokens", "6", "--out", str(out),
                     "--rank-by", "perplexity")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    executable = chromium()
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def open_report(browser, swept):
    """open_report(query) -> the page; afterwards, no request but the report's own file was made."""
    pages, requests, errors = [], [], []
    url = (swept / "report.html").resolve().as_uri()

    def route(r):
        requests.append(r.request.url)
        r.continue_() if r.request.url.split("?")[0] == url else r.abort()

    def open_(query: str = ""):
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.route("**/*", route)
        page.goto(url + query)
        pages.append(page)
        return page

    yield open_
    for page in pages:
        page.close()
    assert errors == []
    assert requests and {u.split("?")[0] for u in requests} == {url}


def results(out) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def ranked_cells(out) -> list[str]:
    import csv

    return [row["cell"] for row in csv.DictReader((out / "summary.csv").open())]


def texts(out, cell: str, line: int) -> list[str]:
    rows = sorted((r for r in results(out) if r["cell"] == cell and r["prompt_line"] == line), key=lambda r: r["sample"])
    return [r["response"] or "(empty)" for r in rows]


def column(page, key: str) -> list[float]:
    keys = page.eval_on_selector_all("table.summary thead th", "ths => ths.map(th => th.dataset.key || '')")
    index = keys.index(key)
    return page.eval_on_selector_all(
        "table.summary tbody tr", f"trs => trs.filter(tr => !tr.hidden).map(tr => parseFloat(tr.cells[{index}].dataset.value))")


def test_clicking_a_point_shows_its_outputs_and_marks_its_row(open_report, swept):
    page = open_report()
    cells = ranked_cells(swept)
    assert page.locator("g.point").count() == len(cells) == 6
    assert page.locator("tr.selected").get_attribute("data-cell") == cells[0]  # the best is shown first
    third = cells[2]
    page.locator(f'g.point[data-cell="{third}"]').click()
    assert page.locator("tr.selected").count() == 1
    assert page.locator("tr.selected").get_attribute("data-cell") == third
    assert page.locator(f'tr[data-cell="{third}"]').get_attribute("aria-selected") == "true"
    assert "selected" in page.locator(f'g.point[data-cell="{third}"]').get_attribute("class")
    outputs = page.locator("aside.detail .output")
    assert [t.split("\n", 1)[1] for t in outputs.all_inner_texts()] == texts(swept, third, 1)
    params = next(r["params"] for r in results(swept) if r["cell"] == third)
    title = page.locator("aside.detail h3").inner_text()
    assert title.startswith("#3") and f"temperature={params['temperature']}" in title
    batch = page.locator("aside.detail pre.batch").inner_text()
    assert f"--temperature {params['temperature']}" in batch and f"--top-k {params['top_k']}" in batch
    assert batch.endswith("--seed 0")
    # another prompt: the prompt shown literally (the markup in it is text), and its outputs
    page.locator("aside.detail select.prompt-select").select_option("4")
    assert page.locator("aside.detail .outputs .prompt").inner_text() == "x </script><b>bold</b> & more"
    assert [t.split("\n", 1)[1] for t in outputs.all_inner_texts()] == texts(swept, third, 4)
    # hovering another point previews it; leaving it goes back to the one clicked
    page.locator(f'g.point[data-cell="{cells[5]}"]').hover()
    assert page.locator("aside.detail h3").inner_text().startswith("#6")
    assert page.locator("tr.hover").get_attribute("data-cell") == cells[5]
    page.mouse.move(5, 5)
    assert page.locator("aside.detail h3").inner_text().startswith("#3")


def test_ticking_two_rows_builds_the_matrix_with_their_texts(open_report, swept):
    page = open_report()
    cells = ranked_cells(swept)
    assert page.locator("table.matrix").count() == 0
    for cell in (cells[4], cells[1]):
        page.locator(f'tr[data-cell="{cell}"] input.tick').check()
    matrix = page.locator("table.matrix")
    assert matrix.locator("thead th[data-cell]").evaluate_all("ths => ths.map(th => th.dataset.cell)") == [cells[4], cells[1]]
    lines = matrix.locator("tbody tr").evaluate_all("trs => trs.map(tr => +tr.dataset.line)")
    assert lines == [1, 2, 4]
    for line in lines:
        for cell in (cells[4], cells[1]):
            shown = matrix.locator(f'tr[data-line="{line}"] td[data-cell="{cell}"] .sample-text').all_inner_texts()
            assert shown == texts(swept, cell, line)
    # at most four: the other boxes are disabled until one is unticked
    for cell in (cells[0], cells[2]):
        page.locator(f'tr[data-cell="{cell}"] input.tick').check()
    assert matrix.locator("thead th[data-cell]").count() == 4
    assert page.locator("input.tick:disabled").count() == 2
    page.locator(f'tr[data-cell="{cells[4]}"] input.tick').uncheck()
    assert page.locator("input.tick:disabled").count() == 0
    assert page.locator("table.matrix thead th[data-cell]").count() == 3
    assert page.locator("tr.selected").get_attribute("data-cell") == cells[0]  # ticking is not selecting


def test_sorting_by_a_header_and_by_the_address(open_report, swept):
    page = open_report()
    perplexity = column(page, "perplexity")
    assert perplexity == sorted(perplexity)  # written ranked, best perplexity first
    assert "rank-by" in page.locator('th[data-key="perplexity"]').get_attribute("class")
    page.locator('th[data-key="distinct_1"]').click()
    assert column(page, "distinct_1") == sorted(column(page, "distinct_1"))
    assert page.locator('th[data-key="distinct_1"]').get_attribute("aria-sort") == "ascending"
    page.locator('th[data-key="distinct_1"]').click()
    assert column(page, "distinct_1") == sorted(column(page, "distinct_1"), reverse=True)
    page.locator('th[data-key="rank"]').click()
    assert column(page, "rank") == [1, 2, 3, 4, 5, 6]
    by_address = open_report("?sort=mean_logprob&dir=desc")
    assert column(by_address, "mean_logprob") == sorted(column(by_address, "mean_logprob"), reverse=True)
    clicked = open_report("?click=temperature,temperature")
    assert column(clicked, "temperature") == sorted(column(clicked, "temperature"), reverse=True)


def test_filters_hide_rows_and_dim_their_points(open_report, swept):
    page = open_report()
    perplexities = sorted(column(page, "perplexity"))
    limit = (perplexities[2] + perplexities[3]) / 2
    page.locator("input.filter-max-perplexity").fill(f"{limit}")
    assert column(page, "perplexity") == perplexities[:3]
    assert page.locator("g.point.dim").count() == 3
    assert page.locator(".filters .shown").inner_text() == "3 of 6 combinations shown"
    page.locator("input.filter-max-perplexity").fill("")
    page.locator("input.filter-no-repeats").check()
    repeats = {r["cell"]: [] for r in results(swept)}
    for r in results(swept):
        repeats[r["cell"]].append(r["repetition_4gram"])
    expected = sorted(c for c, v in repeats.items() if sum(v) == 0)
    shown = page.locator("table.summary tbody tr:not([hidden])").evaluate_all("trs => trs.map(tr => tr.dataset.cell)")
    assert sorted(shown) == expected


def test_the_page_is_one_file_that_loads_nothing(swept):
    page = (swept / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"<(link|img|iframe)\b|<script[^>]*\bsrc=|@import|url\(", page)
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) <= {"http://www.w3.org/2000/svg"}  # a namespace, not a load
    assert "x </script>" not in page  # the prompt is escaped inside the embedded JSON
