"""The website (issue 15) in a real browser: Debian's Chromium, headless, driven by Playwright
(which downloads no browser), over every page of ``make book``'s site served on localhost.

Every page loads with no console error and no failed request; its images are decoded, its
internal links (and their #anchors) resolve; its math is typeset by the site's own MathJax.
Clicking a framework's tab switches every tab set of the page to that framework, code and
outputs, and the choice holds on the next page. Two screenshots are written under the site
(``_screenshots/``) for a person to look at.  ``make test-book`` builds the site first.
"""
import functools
import http.server
import os
import re
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urldefrag, urlparse

import pytest

from d2lport import registry
from d2lport.notebook import TITLES, chapter_files

pytestmark = pytest.mark.book

ROOT = Path(__file__).resolve().parent.parent
SITE = Path(os.environ.get("D2LPORT_BOOK_HTML", ROOT / "build" / "book" / "html"))
CHAPTERS = [c.stem for c in chapter_files()]
PAGES = ["index.html", "search.html"] + [f"{c}.html" for c in CHAPTERS]
FRAMEWORKS = registry.FRAMEWORKS
# Chromium as root in a sandbox with a closed network: no sandbox, no background traffic
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def base_url():
    if not (SITE / "index.html").exists():
        pytest.fail(f"no site in {SITE}: run `make book` (make test-book does)")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(SITE)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = os.environ.get("D2LPORT_CHROMIUM") or shutil.which("chromium")
    if not chromium:
        pytest.fail("no chromium: run `make setup` (as root it installs Debian's chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        yield browser
        browser.close()


class Visit:
    """A page opened in a fresh browser context, with everything that went wrong loading it."""

    def __init__(self, browser, url, context=None):
        self.context = context or browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.problems = []
        origin = urlparse(url).netloc
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(
            f"console error: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(
            f"request failed: {r.url} ({r.failure})"))
        self.page.on("response", lambda r: r.status >= 400 and urlparse(r.url).netloc == origin
                     and self.problems.append(f"HTTP {r.status}: {r.url}"))
        self.page.goto(url, wait_until="load")
        # MathJax typesets after load: wait for it (a page without math has nothing to wait on)
        self.page.evaluate("() => window.MathJax && MathJax.startup ? "
                           "MathJax.startup.promise.then(() => true) : true")

    def close(self):
        self.context.close()


_fetched = {}


def _fetch(url):
    """(status, body) of a same-site URL, each fetched once per run."""
    if url not in _fetched:
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                _fetched[url] = (r.status, r.read().decode("utf-8", "replace")
                                 if url.endswith(".html") or url.endswith("/") else "")
        except urllib.error.HTTPError as err:
            _fetched[url] = (err.code, "")
    return _fetched[url]


@pytest.mark.parametrize("name", PAGES)
def test_page_loads_clean_with_images_links_and_math(browser, base_url, name):
    visit = Visit(browser, base_url + name)
    page = visit.page
    try:
        problems = list(visit.problems)
        broken = page.evaluate("() => Array.from(document.images).filter(i => !(i.complete && "
                               "i.naturalWidth > 0)).map(i => i.getAttribute('src'))")
        problems += [f"broken image: {src}" for src in broken]
        hrefs = page.evaluate("() => Array.from(document.querySelectorAll('a[href]'))"
                              ".map(a => a.href)")
        for href in sorted(set(hrefs)):
            if urlparse(href).netloc != urlparse(base_url).netloc:
                continue                                   # external: not checkable offline
            target, fragment = urldefrag(href)
            status, body = _fetch(target)
            if status != 200:
                problems.append(f"broken link: {href} (HTTP {status})")
            elif fragment and target.endswith(".html") and not re.search(
                    rf'id="{re.escape(fragment)}"', body):
                problems.append(f"broken anchor: {href}")
        math = page.evaluate("""() => { const m = Array.from(document.querySelectorAll(
                '.math')); return [m.length, m.filter(e => !e.querySelector('mjx-container')
                ).length, document.querySelectorAll('mjx-merror').length]; }""")
        n_math, untypeset, tex_errors = math
        if name in (f"{c}.html" for c in CHAPTERS[:3]):
            assert n_math > 0, f"{name}: the chapter's math is not marked as math"
        assert untypeset == 0, f"{name}: {untypeset} of {n_math} formulas not typeset"
        assert tex_errors == 0, f"{name}: {tex_errors} TeX errors"
        if name == "search.html":
            page.goto(base_url + "search.html?q=inception", wait_until="load")
            page.wait_for_selector("#search-results li", timeout=30000)
        assert problems == [], f"{name}:\n" + "\n".join(problems)
    finally:
        visit.close()


_TAB_STATE = """fw => Array.from(document.querySelectorAll('.sd-tab-set')).map(set => {
    const labels = Array.from(set.querySelectorAll(':scope > label.sd-tab-label'));
    const has = labels.some(l => l.dataset.syncId === fw);
    const checked = set.querySelector(':scope > input:checked');
    const label = checked && checked.nextElementSibling;
    const shown = Array.from(set.querySelectorAll(':scope > .sd-tab-content'))
        .filter(c => getComputedStyle(c).display !== 'none');
    return {has, chosen: label ? label.dataset.syncId : null, shown: shown.length,
            shownFollows: shown.length === 1 && shown[0].previousElementSibling === label,
            text: shown.length ? shown[0].innerText : ''};
})"""


@pytest.mark.parametrize("name", CHAPTERS)
def test_a_tab_switches_every_block_to_that_framework(browser, base_url, name):
    visit = Visit(browser, base_url + f"{name}.html")
    page = visit.page
    try:
        downloads = page.evaluate("() => Array.from(document.querySelectorAll('a.download'))"
                                  ".map(a => a.href)")
        notebooks = {h for h in downloads if h.endswith(f"/{name}.ipynb")
                     and _fetch(h)[0] == 200}
        assert len(notebooks) == len(FRAMEWORKS), \
            f"{name}: the page does not offer its {len(FRAMEWORKS)} notebooks: {downloads}"
        for fw in FRAMEWORKS:
            page.locator(f"label.sd-tab-label[data-sync-id='{fw}']").first.click()
            sets = page.evaluate(_TAB_STATE, fw)
            ours = [s for s in sets if s["has"]]
            assert ours, f"{name}: no tab set has a {TITLES[fw]} tab"
            wrong = [i for i, s in enumerate(sets) if s["has"] and not (
                s["chosen"] == fw and s["shownFollows"])]
            assert wrong == [], (f"{name}: after clicking {TITLES[fw]}, tab sets {wrong} of "
                                 f"{len(sets)} show another framework")
            # the first tab set imports the framework's d2lport package: its code is shown
            assert f"from d2lport import {fw} as d2p" in ours[0]["text"], ours[0]["text"][:300]
        assert visit.problems == [], "\n".join(visit.problems)
    finally:
        visit.close()


def test_the_choice_holds_on_the_next_page_and_screenshots(browser, base_url):
    first, second = CHAPTERS[0], CHAPTERS[1]
    visit = Visit(browser, base_url + f"{first}.html")
    try:
        visit.page.locator("label.sd-tab-label[data-sync-id='jax']").first.click()
        nxt = Visit(browser, base_url + f"{second}.html", context=visit.context)
        chosen = {s["chosen"] for s in nxt.page.evaluate(_TAB_STATE, "jax") if s["has"]}
        assert chosen == {"jax"}, f"{second}.html opened with {chosen} after choosing JAX"
        shots = SITE / "_screenshots"
        shots.mkdir(exist_ok=True)
        nxt.page.screenshot(path=str(shots / f"{second}-jax.png"))
        visit.page.goto(base_url + "4_frameworks.html", wait_until="load")
        visit.page.evaluate("() => window.MathJax ? MathJax.startup.promise.then(() => 1) : 1")
        visit.page.screenshot(path=str(shots / "4_frameworks-jax.png"), full_page=False)
        for png in shots.glob("*.png"):
            assert png.stat().st_size > 20_000, f"{png} looks empty"
        assert visit.problems == [] and nxt.problems == [], visit.problems + nxt.problems
    finally:
        visit.close()
