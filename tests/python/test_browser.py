"""The report and the run views in a real browser: Debian's chromium, driven headless by
Selenium through Debian's chromedriver (both named by path, so Selenium Manager never runs
and nothing is downloaded).

One tiny study of the bundled model (2 core-small prompts, θ 0.1, isolated, a serial
replay, 4 steps) is run, analysed and reported once per module; its report.html and two
exported run views are opened in one browser: one study run's, written by ``attnvar
inspect RUN --html FILE`` (its repr, its set view as text and as a chart), and that of a
run whose set holds an EOS member, written by ``plots.export_run_view``. Checked: no
console errors (and that an error would be seen), every image decoded whole at the size of
the PNG the report wrote, nothing loaded from outside the page, internal links resolve,
and hovering a member of a parallel set shows its selection probability — the tooltip (a
``title``, which the browser draws outside the DOM, so the test reads the title of the
innermost hovered element, the one the browser shows) and the note under it, both compared
with the run's tree and received attention.

Skips without selenium, chromium or chromedriver (``scripts/setup.sh`` installs them). The
module's wall time, study and browser start included, must stay within
ATTNVAR_BUDGET_BROWSER_S (default 120 s).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import struct
import time
from pathlib import Path
from unittest import mock

os.environ.setdefault("MPLBACKEND", "Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import attnvar  # noqa: E402
from attnvar import cli, prompts  # noqa: E402
from attnvar.analysis import analyze_study  # noqa: E402
from attnvar.report import plots, write_report  # noqa: E402
from attnvar.study import Study  # noqa: E402

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.selenium_manager import SeleniumManager
except ImportError:  # pragma: no cover - depends on the machine
    webdriver = None

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = [name for name, absent in (("the Python package selenium", webdriver is None),
                                     ("chromium", CHROMIUM is None),
                                     ("chromedriver (Debian's chromium-driver)",
                                      CHROMEDRIVER is None)) if absent]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"the browser test needs {', '.join(MISSING)}; bash scripts/setup.sh "
                          "installs what is missing (selenium pinned in requirements-test.txt)")

DEFAULT_BUDGET_S = 120
PROMPTS = 2


def _budget() -> int:
    return int(os.environ.get("ATTNVAR_BUDGET_BROWSER_S", DEFAULT_BUDGET_S))


@pytest.fixture(scope="module", autouse=True)
def wall_time():
    """The module's wall time against its budget (set up first, torn down last: the study,
    the browser's start and its quit are all inside)."""
    start = time.monotonic()
    yield
    took = time.monotonic() - start
    print(f"\n== browser test: {took:.0f} s (budget {_budget()} s)", flush=True)
    assert took <= _budget(), (f"the browser test took {took:.0f} s, over its {_budget()} s "
                               "budget (ATTNVAR_BUDGET_BROWSER_S)")


# ---- the study, its report and a page of run views ---------------------------------------
@pytest.fixture(scope="module")
def study(bundled_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browser") / "study"
    Study(prompts=prompts.suite("core-small")[:PROMPTS], thresholds=[0.1], modes=["isolated"],
          replays=["serial"], max_steps=4, model_path=str(bundled_path)).run(out, progress=False)
    analyze_study(out, progress=False)
    return out


@pytest.fixture(scope="module")
def report_html(study) -> Path:
    return write_report(study, n_permutations=19)


@pytest.fixture(scope="module")
def run_dir(study) -> Path:
    """The generated run with the most parallel sets."""
    runs = pd.read_parquet(study / "tables" / "runs.parquet")
    gen = runs[runs["kind"] == "generate"].sort_values("parallel_steps", ascending=False)
    assert gen["parallel_steps"].iat[0] >= 2, "the fixture needs a run with two sets"
    return study / "runs" / gen["run_id"].iat[0]


@pytest.fixture(scope="module")
def run(run_dir):
    return attnvar.load_run(run_dir)


@pytest.fixture(scope="module")
def eos_run(bundled_path):
    """A generated run whose set holds an EOS member (a member with no slot)."""
    model = attnvar.load_model(bundled_path)
    run = model.generate("The end.", threshold=0.1, max_steps=3,
                         capture=attnvar.Capture(layers=[2]))
    eos = _eos_members(run, model.eos_ids)
    assert len(eos) == 1, f"the fixture needs one EOS member in a set: {run.bracketed!r}"
    return run, eos[0]


def _eos_members(run, eos_ids) -> list[tuple[int, int, float]]:
    return [(t, i, m.probability) for t, step in enumerate(run.tree.steps)
            if len(step.members) > 1 for i, m in enumerate(step.members)
            if m.token_id in eos_ids]


@pytest.fixture(scope="module")
def run_page(run_dir, tmp_path_factory) -> Path:
    """The run's views as a user exports them: ``attnvar inspect RUN --html FILE``."""
    path = tmp_path_factory.mktemp("views") / "run_view.html"
    assert cli.main(["inspect", str(run_dir), "--html", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def eos_page(eos_run, tmp_path_factory) -> Path:
    """The views of the run with an EOS member, exported from Python."""
    return plots.export_run_view(eos_run[0],
                                 tmp_path_factory.mktemp("views") / "eos_view.html")


# ---- the browser -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def driver():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1024"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Both paths are given, so Selenium Manager (which may download a driver or a browser)
    # must not run: it fails the test if it is called; offline mode stops it anyway.
    with mock.patch.dict(os.environ, {"SE_OFFLINE": "true"}), \
         mock.patch.object(SeleniumManager, "binary_paths",
                           side_effect=AssertionError("Selenium Manager was called")):
        drv = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield drv
    finally:
        drv.quit()


def _open(driver, path: Path) -> list[dict]:
    """Load the page; returns the console entries logged while it loaded."""
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(path.as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    return driver.get_log("browser")


def _severe(entries: list[dict]) -> list[str]:
    return [e["message"] for e in entries if e["level"] == "SEVERE"]


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


# Every image of the page once the browser has decoded it (img.decode() rejects an image it
# cannot decode), with the number of its pixels left transparent: matplotlib's figures are
# opaque, and a truncated PNG is drawn in part, the rows it lacks transparent.
IMAGES_JS = """const done = arguments[arguments.length - 1];
function transparent(img) {
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const px = ctx.getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let k = 3; k < px.length; k += 4) if (px[k] < 255) n++;
  return n;
}
Promise.all(Array.from(document.images).map(i => i.decode().then(() => true, () => false)
  .then(decoded => ({alt: i.alt, decoded: decoded, complete: i.complete,
    width: i.naturalWidth, height: i.naturalHeight, shown: i.getBoundingClientRect().width,
    transparent: decoded ? transparent(i) : null,
    caption: i.closest('figure')?.querySelector('figcaption')?.textContent ?? null}))))
  .then(done, e => done(String(e)));"""
# The innermost hovered element that has a title: the tooltip the browser shows.
TOOLTIP_JS = """const hovered = Array.from(document.querySelectorAll(':hover'));
const titled = hovered.filter(e => e.hasAttribute('title')).pop();
return {innermost: hovered[hovered.length - 1] === arguments[0],
        title: titled ? titled.getAttribute('title') : null};"""


def _hover(driver, element) -> dict:
    ActionChains(driver).move_to_element(element).perform()
    return driver.execute_script(TOOLTIP_JS, element)


def _no_outside_loads(driver) -> None:
    loaded = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded == [], f"the page loaded files besides itself: {loaded}"
    links = driver.execute_script(
        "return Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'))")
    for href in links:
        assert href.startswith("#"), f"a link leaves the page: {href}"
        assert driver.execute_script("return document.getElementById(arguments[0]) !== null",
                                     href[1:]), f"link {href} names no element"


# ---- report.html -------------------------------------------------------------------------
def test_the_console_log_is_captured(driver, report_html):
    """The console check below is not blind: an error logged by the page reaches it."""
    _open(driver, report_html)
    driver.execute_script("console.error('attnvar-probe')")
    assert any("attnvar-probe" in m for m in _severe(driver.get_log("browser")))


def test_report_loads_without_console_errors_or_outside_files(driver, report_html):
    entries = _open(driver, report_html)
    assert _severe(entries) == [], entries
    assert driver.title == f"attnvar report — {report_html.parent.parent.name}"
    assert driver.find_element(By.TAG_NAME, "h1").is_displayed()
    _no_outside_loads(driver)


def test_every_report_figure_is_decoded_at_the_size_written(driver, report_html):
    _open(driver, report_html)
    images = driver.execute_async_script(IMAGES_JS)
    # The Markdown names each figure file, in the order the HTML embeds them.
    refs = re.findall(r"!\[([^\]]*)\]\(figures/([^)]+\.png)\)",
                      report_html.with_suffix(".md").read_text())
    files = sorted(p.name for p in (report_html.parent / "figures").glob("*.png"))
    assert len(refs) >= 5 and sorted(name for _, name in refs) == files
    assert [i["alt"] for i in images] == [caption for caption, _ in refs]
    for img, (caption, name) in zip(images, refs, strict=True):
        assert img["decoded"] and img["complete"], f"figure {caption!r} did not load"
        assert img["transparent"] == 0, f"figure {caption!r} is drawn in part only"
        assert (img["width"], img["height"]) == _png_size(report_html.parent / "figures" / name)
        assert img["shown"] > 0 and img["caption"] == caption


# ---- the run views -----------------------------------------------------------------------
def test_run_views_load_without_console_errors(driver, run_page):
    entries = _open(driver, run_page)
    assert _severe(entries) == [], entries
    _no_outside_loads(driver)
    (img,) = driver.execute_async_script(IMAGES_JS)
    assert img["decoded"] and img["complete"] and img["width"] > 0 and img["shown"] > 0
    assert img["transparent"] == 0


def _shown(value: float, digits: int) -> str:
    """A number as the views print it: a dash where there is none (no later query)."""
    return f"{value:.{digits}f}" if math.isfinite(value) else "–"


def _parallel_members(run) -> list[tuple[int, int, float]]:
    return [(t, i, m.probability) for t, step in enumerate(run.tree.steps)
            if len(step.members) > 1 for i, m in enumerate(step.members)]


def test_hovering_a_set_view_member_shows_its_probability(driver, run_page, run):
    _open(driver, run_page)
    view = driver.find_element(By.ID, "set-view")
    sets = view.find_elements(By.CLASS_NAME, "attnvar-set")
    want = _parallel_members(run)
    assert [int(s.get_attribute("data-step")) for s in sets] == sorted({t for t, _, _ in want})
    table = plots.received_attention(run)
    received, queries = table["received"].to_numpy(), table["num_queries"].to_numpy()
    slot_of = {(r["step"], r["member"]): k for k, r in enumerate(run.slot_records)
               if r["member"] >= 0}
    shown = []
    for s in sets:
        t = int(s.get_attribute("data-step"))
        for i, member in enumerate(s.find_elements(By.CLASS_NAME, "attnvar-member")):
            p = run.tree.steps[t].members[i].probability
            token = member.find_element(By.CLASS_NAME, "attnvar-slot")
            tip = _hover(driver, token)
            assert tip["innermost"], f"step {t} member {i}: the pointer is not on the token"
            slot = slot_of[(t, i)]
            assert tip["title"] == (f"slot {slot} · ā {_shown(received[slot], 4)} from "
                                    f"{queries[slot]} later queries · p {p:.4f}"), tip
            # The note under the token, always on screen: ā and p.
            note = member.find_elements(By.XPATH, "./span")[-1]
            assert note.is_displayed()
            assert note.text.split("\n") == [f"ā {_shown(received[slot], 3)}", f"p {p:.2f}"]
            shown.append((t, i))
    assert shown == [(t, i) for t, i, _ in want]


def test_hovering_a_member_without_a_slot_shows_its_probability(driver, eos_page, eos_run):
    assert _severe(_open(driver, eos_page)) == []
    view = driver.find_element(By.ID, "set-view")
    (unfed,) = view.find_elements(By.CLASS_NAME, "attnvar-unfed")
    _, (t, i, p) = eos_run
    # It sits where the tree has it: member i of the set at step t.
    (box,) = view.find_elements(By.CSS_SELECTOR, f".attnvar-set[data-step='{t}']")
    members = box.find_elements(By.CLASS_NAME, "attnvar-member")
    assert members[i].find_elements(By.CLASS_NAME, "attnvar-unfed") == [unfed]
    tip = _hover(driver, unfed)
    assert tip["innermost"] and tip["title"] == f"no slot · p {p:.4f}", tip
    note = unfed.find_element(By.XPATH, "following-sibling::span")
    assert note.is_displayed() and note.text.split("\n") == [f"p {p:.2f}", "no slot"]


def test_hovering_a_member_of_the_run_repr_shows_its_probability(driver, run_page, run):
    _open(driver, run_page)
    spans = driver.find_element(By.ID, "run").find_elements(By.CSS_SELECTOR, "span[title]")
    want = _parallel_members(run)
    assert len(spans) == len(want)
    pieces = [run.pieces[run.tree.steps[t].members[i].token_id] for t, i, _ in want]
    for span, (t, i, p), piece in zip(spans, want, pieces, strict=True):
        assert span.get_attribute("textContent") == piece
        tip = _hover(driver, span)
        assert tip["innermost"] and tip["title"] == f"p={p:.3f}", (t, i, tip)
