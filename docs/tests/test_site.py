"""The built site (``mkdocs build --strict`` into site/) opened in a real browser: headless Chromium
from Debian's packages, driven by Selenium, over a loopback server.

Run after the build: ``python -m pytest docs/tests`` (CI's docs step does both). Screenshots of the
pages go to ``$JAXGD_SITE_SHOTS`` (default ``site-shots/``, not committed).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(os.environ.get("JAXGD_SITE", ROOT / "site"))
SHOTS = Path(os.environ.get("JAXGD_SITE_SHOTS", ROOT / "site-shots"))
CHROMIUM, DRIVER = (
    shutil.which("chromium") or "/usr/bin/chromium",
    shutil.which("chromedriver") or "/usr/bin/chromedriver",
)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def list_directory(self, path):  # a folder without its index.html is a missing page, as on a real host
        self.send_error(404, "no index.html")

    def log_message(self, *args):
        pass

    def copyfile(self, source, outputfile):
        try:
            super().copyfile(source, outputfile)
        except (BrokenPipeError, ConnectionResetError):  # the browser stopped reading: a page left mid-load
            pass


def _serve(folder: Path):
    handler = functools.partial(_Handler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1600",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def site():
    assert (SITE / "index.html").is_file(), f"no built site at {SITE}: run mkdocs build --strict first"
    server, url = _serve(SITE)
    yield url
    server.shutdown()


def broken_images(driver) -> list[str]:
    """The images of the open page that did not load (after the page finished loading)."""
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")  # lazy images load too
    return driver.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
        ".map(i => i.getAttribute('src').slice(0, 120));"
    )


def broken_links(driver, base: str) -> list[str]:
    """The open page's links into the site (same host) that do not answer 200, anchors aside."""
    hrefs = driver.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href);")
    bad = []
    for href in sorted({h.split("#")[0] for h in hrefs if h.startswith(base)}):
        try:
            with urllib.request.urlopen(href, timeout=10) as r:
                ok = r.status == 200
        except urllib.error.URLError:
            ok = False
        if not ok:
            bad.append(href)
    return bad


def missing_resources(driver) -> list[str]:
    """What the browser failed to load for the open page (404s in its console), the site's own files only."""
    return [
        e["message"][:200]
        for e in driver.get_log("browser")
        if "Failed to load resource" in e["message"] and "127.0.0.1" in e["message"]
    ]


def _open(driver, url, shot):
    driver.get_log("browser")  # forget the previous page's messages
    driver.get(url)
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{shot}.png"))


def test_the_checks_catch_a_broken_image_and_a_broken_link(browser, tmp_path):
    """The checks below can fail: on a page with a missing image and a dead link they say so."""
    (tmp_path / "ok.html").write_text("<p>ok</p>")
    (tmp_path / "index.html").write_text(
        '<img src="missing.png"><a href="nowhere.html">x</a><a href="ok.html">y</a><a href="empty/">z</a>'
    )
    (tmp_path / "empty").mkdir()
    server, url = _serve(tmp_path)
    try:
        browser.get(url)
        assert broken_images(browser) == ["missing.png"]
        assert broken_links(browser, url) == [url + "empty/", url + "nowhere.html"]
    finally:
        server.shutdown()


def test_home_page(browser, site):
    _open(browser, site, "home")
    assert "jaxgd" in browser.title
    assert "Check your own backward" in browser.page_source
    assert broken_images(browser) == []
    assert broken_links(browser, site) == []


def test_a_tutorial_with_its_figures(browser, site):
    _open(browser, site + "tutorials/04_sgd_by_hand/", "tutorial_04")
    assert "SGD" in browser.title
    n = browser.execute_script("return document.images.length;")
    assert n >= 1 and broken_images(browser) == []  # the executed notebook's figures
    from selenium.webdriver.support.ui import WebDriverWait

    typeset = WebDriverWait(browser, 60).until(  # the formulas, by the site's own MathJax (no network)
        lambda d: (
            d.execute_script("return document.querySelectorAll('.MathJax, .MathJax_CHTML, .MathJax_SVG').length;")
            or False
        )
    )
    assert typeset >= 3
    import time

    time.sleep(2)  # the fonts MathJax asks for after typesetting
    assert missing_resources(browser) == []
    browser.save_screenshot(str(SHOTS / "tutorial_04_math.png"))


def test_the_api_page_of_check(browser, site):
    _open(browser, site + "api/checker/", "api_checker")
    anchor = browser.find_elements("id", "jaxgd.checker.check")
    assert anchor, "no API entry for jaxgd.checker.check"
    assert "in_shape" in browser.page_source


def test_search_finds_check(browser, site):
    """The search box, filled by the theme's deep link (?q=), lists the checker's pages."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(site + "?q=check")
    hits = WebDriverWait(browser, 60).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".md-search-result__item a") or False
    )
    assert browser.find_element(By.CSS_SELECTOR, "input.md-search__input").get_attribute("value") == "check"
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "search_check.png"))
    urls = [urllib.parse.urlparse(h.get_attribute("href")).path for h in hits]
    assert any("checker" in u for u in urls), urls


def test_the_results_page_with_its_figures(browser, site):
    _open(browser, site + "results/REPORT/", "results")
    assert browser.execute_script("return document.images.length;") >= 10
    assert broken_images(browser) == [] and missing_resources(browser) == []
