"""Open the report in headless Chromium: it renders, every image loads, the console is clean.

Uses Selenium with the system chromedriver (Debian: ``apt-get install chromium
chromium-driver``; ``make test`` installs them when root). Without them the test is skipped
with the reason printed -- never silently. Screenshots (the report's top, and its LightGBM
tree) are kept under the pytest tmp dir and their paths printed.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]

IMAGES_JS = "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);"

#: per inline-SVG figure: what it shows, its text lines' rendered heights (CSS px), its drawn
#: width and the width its SVG declares (pt; 1 pt = 4/3 px at 100% zoom)
SVG_TEXT_JS = """
return Array.from(document.querySelectorAll('div.svg-plot')).map(div => {
  const svg = div.querySelector('svg');
  const heights = Array.from(svg.querySelectorAll('text')).map(t => t.getBoundingClientRect().height);
  return [div.dataset.what, heights, svg.getBoundingClientRect().width, parseFloat(svg.getAttribute('width'))];
});"""


def _skip(reason: str) -> None:
    print(f"SKIPPED browser test: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        _skip(
            "Chromium or chromedriver is not installed (Debian: apt-get install chromium chromium-driver; "
            "`make test` installs them when run as root)."
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _skip("selenium is not installed: pip install 'hierfit[test]' (or pip install selenium).")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="hierfit-chromium-", dir=tmp_path_factory.getbasetemp())
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--window-size=1400,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager must not try to download one.
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _inspect(driver, url: str) -> tuple[list, list]:
    """Load ``url``; return its images' load state and the console's errors."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop anything from an earlier page
    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
    images = driver.execute_script(IMAGES_JS)
    errors = [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]
    return images, errors


def test_report_renders_with_all_images_and_no_console_errors(browser, report_file, tmp_path_factory):
    images, errors = _inspect(browser, report_file.resolve().as_uri())
    assert len(images) >= 8, f"expected the report's plots, found {len(images)} images"
    broken = [alt for alt, complete, width, height in images if not (complete and width > 0 and height > 0)]
    assert not broken, f"images that did not load: {broken}"
    assert not errors, f"console errors: {errors}"
    assert browser.title.startswith("hierfit")
    headings = browser.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.textContent);")
    assert {"Engine comparison", "Hierarchy", "Diagnostics and warnings"} <= set(headings)
    # a tall window so the screenshot shows the top of the report at full width
    height = min(int(browser.execute_script("return document.body.scrollHeight")), 6000)
    browser.set_window_size(1400, height)
    shot = Path(tmp_path_factory.mktemp("screenshots")) / "report.png"
    assert browser.save_screenshot(str(shot))
    print(f"report screenshot: {shot}")
    assert shot.stat().st_size > 10_000


def test_boosted_tree_text_is_legible_at_100_percent_zoom(browser, report_file, report_comparison, tmp_path_factory):
    """The LightGBM tree's labels render at least 9 px high: its figures are drawn at natural
    size (top levels on the page, the whole tree in a box that scrolls), never shrunk to fit."""
    if "lightgbm" not in report_comparison.fits:
        _skip("lightgbm is not installed: pip install 'hierfit[lightgbm]'.")
    browser.set_window_size(1400, 1000)
    _, errors = _inspect(browser, report_file.resolve().as_uri())
    assert not errors, f"console errors: {errors}"
    assert browser.execute_script("return window.devicePixelRatio") == 1  # 100% zoom
    browser.execute_script("document.querySelectorAll('details').forEach(d => { d.open = true; });")
    trees = [f for f in browser.execute_script(SVG_TEXT_JS) if f[0].startswith("lightgbm tree 1")]
    assert [what for what, *_ in trees] == ["lightgbm tree 1, top levels", "lightgbm tree 1"]
    for what, heights, width, declared_pt in trees:
        print(f"{what}: {len(heights)} text lines, rendered height {min(heights):.1f}-{max(heights):.1f} px, "
              f"figure {width:.0f} px wide")
        assert len(heights) > 20 and min(heights) >= 9
        assert width == pytest.approx(declared_pt * 4 / 3, abs=1), "drawn at natural size, not scaled"
    browser.execute_script("document.querySelector('div.svg-plot').scrollIntoView();")
    shot = Path(tmp_path_factory.mktemp("screenshots")) / "report-tree.png"
    assert browser.save_screenshot(str(shot))
    print(f"tree screenshot: {shot}")


def test_the_check_catches_broken_images_and_console_errors(browser, tmp_path):
    """The same check fails on a page with a broken image and a script error."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"><title>t</title></head><body>'
        '<img alt="missing" src="does-not-exist.png"><img alt="ok" src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">'
        "<script>undefinedFunction();</script></body></html>"
    )
    images, errors = _inspect(browser, page.as_uri())
    state = {alt: complete and width > 0 for alt, complete, width, _ in images}
    assert state["missing"] is False
    assert errors, "a script error must show up as a SEVERE console entry"
